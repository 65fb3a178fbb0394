"""Fidelity of the exported encoder on images with large uniform areas, against float64 PyTorch.

On a uniform area (the zero padding below or beside a non-square image, a flat colour) a LayerNorm
row of the image encoder has a variance close to its eps, so the embedding there depends on the
eps and on how the normalization is computed. Trained checkpoints show it most (a 256 px model
with a 4-block ViT moves by 4e-3 of its maximum between eps 1e-6 and 1e-5, and the shipped
default model by 1.5e-2), random weights less. These tests hold the export to 1e-5 of the float64
result on such inputs, and check that the eps, which no checkpoint records, is the one exported.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import samdeploy.export.exporter as exporter
from samdeploy.errors import ExportError
from samdeploy.export import export_model, load_sam, load_state_dict, resolve_config
from samdeploy.export.validate import _encoder_input, encoder_images, synthetic_image

# A trained 256 px SAM (4-block ViT) whose embeddings are eps-sensitive on uniform areas. It is not
# in the repository (22 MB) but in the shared folder beside it; SAMDEPLOY_DRIFT_CHECKPOINT points
# elsewhere, and the cases skip visibly without it.
_SHARED_DRIFT = Path(__file__).resolve().parents[3] / "shared" / "models" / "drift_sam256.pth"
DRIFT_CHECKPOINT = Path(os.environ.get("SAMDEPLOY_DRIFT_CHECKPOINT", _SHARED_DRIFT))
# The shipped default model's checkpoint: trained, in the repository, even more eps-sensitive.
DEFAULT_CHECKPOINT = Path(__file__).parents[2] / "src" / "samdeploy" / "models" / "default" / "checkpoint.pth"

FIDELITY = 1e-5  # max |onnx - float64| / max |float64|


def _checkpoints() -> list:
    drift = pytest.param(
        DRIFT_CHECKPOINT,
        id="drift_sam256",
        marks=pytest.mark.skipif(not DRIFT_CHECKPOINT.is_file(), reason=f"{DRIFT_CHECKPOINT} not present"),
    )
    return [drift, pytest.param(DEFAULT_CHECKPOINT, id="default_model")]


def _uniform_inputs(sam) -> dict[str, torch.Tensor]:
    """Encoder inputs with large uniform areas: what the runtime feeds for such pictures."""
    size = sam.image_encoder.img_size
    inputs = {name: _encoder_input(sam, picture) for name, picture in encoder_images().items()}
    inputs["black_wide"] = _encoder_input(sam, np.zeros((size * 2 // 5, size, 3), np.uint8))
    inputs["strip_beside"] = _encoder_input(sam, synthetic_image(size, size // 3, seed=2))
    # An image equal to the pixel mean everywhere: zero after normalizing, one flat input.
    inputs["zero_tensor"] = torch.zeros(1, 3, size, size)
    return inputs


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _encoder_errors(sam, package: Path, float64_sam) -> dict[str, float]:
    session = ort.InferenceSession(str(package / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    errors = {}
    for name, x in _uniform_inputs(sam).items():
        with torch.no_grad():
            want = float64_sam.image_encoder(x.double()).numpy()
        errors[name] = _relative(session.run(None, {"image": x.numpy()})[0], want)
    return errors


@pytest.fixture(scope="module", params=_checkpoints())
def trained(request, tmp_path_factory):
    """(float32 torch model, its float64 copy, the exported package) for one trained checkpoint."""
    state = load_state_dict(request.param)
    sam = load_sam(state, resolve_config(state, "auto"))
    package = tmp_path_factory.mktemp("uniform") / "pkg"
    export_model(request.param, package, validate=False)
    return sam, copy.deepcopy(sam).double(), package


def test_exported_encoder_matches_float64_on_uniform_areas(trained):
    # Exists because a graph that normalizes differently from PyTorch (another eps, E[x^2]-E[x]^2)
    # agrees on textured pictures and drifts by 1e-3 on padding and flat areas.
    sam, float64_sam, package = trained
    errors = _encoder_errors(sam, package, float64_sam)
    assert max(errors.values()) < FIDELITY, errors


def test_the_other_eps_is_what_drifts(trained):
    # The reported 4e-3 drift is this checkpoint read with nn.LayerNorm's default eps (1e-5) against
    # the official 1e-6: checks that the inputs above are sensitive enough to see an eps change, so
    # the previous test would fail on an export that normalized with another eps.
    sam, _, package = trained
    other = copy.deepcopy(sam).double()
    for module in other.image_encoder.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-5
    errors = _encoder_errors(sam, package, other)
    assert max(errors.values()) > 100 * FIDELITY, errors


@pytest.mark.skipif(not DRIFT_CHECKPOINT.is_file(), reason=f"{DRIFT_CHECKPOINT} not present")
def test_encoder_norm_eps_is_exported_and_recorded(tmp_path):
    # A model built with a bare ImageEncoderViT (eps 1e-5) exports faithfully when the eps is given,
    # and from the module itself without being told; the manifest records it.
    state = load_state_dict(DRIFT_CHECKPOINT)
    config = resolve_config(state, "auto")
    report = export_model(DRIFT_CHECKPOINT, tmp_path / "given", encoder_norm_eps=1e-5, validate=False)
    assert report.config.encoder_norm_eps == 1e-5
    assert report.manifest["architecture"]["encoder_norm_eps"] == 1e-5
    sam = load_sam(state, report.config)
    assert sam.image_encoder.blocks[0].norm1.eps == 1e-5
    errors = _encoder_errors(sam, tmp_path / "given", copy.deepcopy(sam).double())
    assert max(errors.values()) < FIDELITY, errors

    from_module = export_model(sam, tmp_path / "module", validate=False)
    assert from_module.config.encoder_norm_eps == 1e-5
    assert config.encoder_norm_eps == 1e-6  # what detection alone assumes
    with pytest.raises(ExportError, match="use eps 1e-05, not the 1e-06 asked for"):
        export_model(sam, tmp_path / "contradiction", encoder_norm_eps=1e-6)
    with pytest.raises(ExportError, match="encoder_norm_eps must be a positive number"):
        export_model(DRIFT_CHECKPOINT, tmp_path / "bad", encoder_norm_eps=0.0)


def test_validation_refuses_a_graph_that_drifts_on_uniform_areas(tmp_path, monkeypatch):
    # Export validation must catch drift confined to uniform areas: the encoder graph is traced here
    # from a copy whose LayerNorms use eps 1e-5, and validated against the true model (eps 1e-6).
    real_export_encoder = exporter.export_encoder

    def drifting_encoder(sam, path, opset):
        other = copy.deepcopy(sam)
        for module in other.image_encoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = 1e-5
        real_export_encoder(other, path, opset)

    monkeypatch.setattr(exporter, "export_encoder", drifting_encoder)
    with pytest.raises(ExportError, match=r"validation against PyTorch failed: embeddings_rel"):
        export_model(DEFAULT_CHECKPOINT, tmp_path / "pkg", simplify="none")
    assert list(tmp_path.iterdir()) == []


def test_validation_records_every_encoder_picture(tmp_path):
    report = export_model(DEFAULT_CHECKPOINT, tmp_path / "pkg", simplify="none")
    validation = report.validation
    assert set(validation["encoder_inputs"]) == {"synthetic", "black_strip", "flat_portrait"}
    worst = max(case["max_rel"] for case in validation["encoder_inputs"].values())
    assert validation["worst"]["embeddings_rel"] == worst < FIDELITY
    sensitivity = validation["encoder_norm_eps_sensitivity"]
    assert sensitivity["eps"] == 1e-6 and sensitivity["other_eps"] == 1e-5
    # The default model moves by over 1e-3 on the black strip between the two eps values.
    assert sensitivity["max_rel"] > 1e-3
