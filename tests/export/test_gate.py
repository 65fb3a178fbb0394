"""The export gate: a package that computes something other than the checkpoint is never written.

Each test builds a package that really differs from its PyTorch model (a perturbed weight, a wrong
pre-processing constant, a decoder from another checkpoint, NaN weights) and checks the export
refuses it with nothing left behind, or checks one rule of :func:`failures` on its own.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import samdeploy.export.exporter as exporter
from samdeploy.errors import CheckpointError, ExportError
from samdeploy.export import export_model, load_sam, load_state_dict, random_sam
from samdeploy.export.validate import LOWER_BOUNDS, TOLERANCES, failures, validate_package


def _nothing_written(folder) -> bool:
    return list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ("damage", "value"),
    [("one_weight", float("nan")), ("one_weight", float("inf")), ("everything", float("nan"))],
)
def test_non_finite_weights_are_refused(tmp_path, tiny_checkpoint, damage, value):
    # Exists because every comparison with NaN is False: an all-NaN checkpoint exported with
    # "passed": true and NaN figures in the manifest.
    state = load_state_dict(tiny_checkpoint)
    if damage == "one_weight":
        state["image_encoder.blocks.1.mlp.lin2.weight"][3, 5] = value
    else:
        state = {k: torch.full_like(v, value) if v.is_floating_point() else v for k, v in state.items()}
    with pytest.raises(CheckpointError, match="NaN or infinite weights in image_encoder"):
        export_model(state, tmp_path / "out")
    assert _nothing_written(tmp_path)


def test_non_finite_outputs_fail_even_a_recorded_int8_export(tmp_path, tiny_checkpoint, monkeypatch):
    # int8 exports keep packages beyond the fp32 tolerances; NaN outputs must still fail, and the
    # manifest must never hold NaN.
    real = exporter.validate_package

    def nan_outputs(*args, **kwargs):
        report = real(*args, **kwargs)
        report["worst"]["mask_logits_rel"] = float("nan")
        return report

    monkeypatch.setattr(exporter, "validate_package", nan_outputs)
    with pytest.raises(ExportError, match="mask_logits_rel is nan"):
        export_model(tiny_checkpoint, tmp_path / "out", quantize="int8", simplify="none")
    assert _nothing_written(tmp_path)


def _passing_worst() -> dict[str, float]:
    """Every figure exactly at its limit (which passes)."""
    return dict(TOLERANCES)


@pytest.mark.parametrize("key", sorted(TOLERANCES))
def test_failures_holds_every_figure_to_its_tolerance(key):
    # Exists because a failures() that checked only the cosine let every other figure through
    # (mask agreement was recorded and never blocked an export).
    assert failures({"worst": _passing_worst()}) == []
    limit = TOLERANCES[key]
    beyond = limit * (0.999 if key in LOWER_BOUNDS else 1.001)
    worst = _passing_worst() | {key: beyond}
    problems = failures({"worst": worst})
    assert len(problems) == 1 and problems[0].startswith(f"{key} "), problems
    for bad in (float("nan"), float("inf"), -float("inf")):
        problems = failures({"worst": _passing_worst() | {key: bad}})
        assert len(problems) == 1 and problems[0].startswith(f"{key} is "), problems


def test_lower_bounds_are_the_agreements_and_the_cosine():
    # A figure in the wrong group would be checked in the wrong direction.
    assert set(LOWER_BOUNDS) == {"embeddings_cosine", "mask_agreement", "end_to_end_mask_agreement"}
    assert {"embeddings_rel", "mask_logits_rel", "low_res_logits_rel", "iou_predictions_abs"} == (
        set(TOLERANCES) - set(LOWER_BOUNDS)
    )


def test_mask_agreement_blocks_an_export(tmp_path, tiny_checkpoint, monkeypatch):
    # The agreement figures are part of the gate, not only recorded.
    monkeypatch.setitem(TOLERANCES, "mask_agreement", 1.5)
    monkeypatch.setitem(TOLERANCES, "end_to_end_mask_agreement", 1.5)
    with pytest.raises(
        ExportError,
        match=r"mask_agreement [\d.]+ \(limit 1\.5\); end_to_end_mask_agreement [\d.]+ \(limit 1\.5\)",
    ):
        export_model(tiny_checkpoint, tmp_path / "out", simplify="none")
    assert _nothing_written(tmp_path)


def test_a_perturbed_encoder_weight_is_refused(tmp_path, tiny_checkpoint, monkeypatch):
    # The encoder graph is traced from a copy with one layer 1% off: validation must see it.
    real = exporter.export_encoder

    def perturbed(sam, path, opset):
        other = copy.deepcopy(sam)
        with torch.no_grad():
            other.image_encoder.blocks[0].attn.proj.weight.mul_(1.01)
        real(other, path, opset)

    monkeypatch.setattr(exporter, "export_encoder", perturbed)
    with pytest.raises(ExportError, match="validation against PyTorch failed: embeddings_rel"):
        export_model(tiny_checkpoint, tmp_path / "out", simplify="none")
    assert _nothing_written(tmp_path)


def test_a_decoder_from_another_checkpoint_is_refused(
    tmp_path, tiny_checkpoint, tiny_sam_config, monkeypatch
):
    other = random_sam(tiny_sam_config, seed=99)
    for name in ("export_decoder", "export_low_res_decoder"):
        real = getattr(exporter, name)
        monkeypatch.setattr(
            exporter, name, lambda sam, config, path, opset, real=real: real(other, config, path, opset)
        )
    with pytest.raises(ExportError, match="mask_logits_rel .*iou_predictions_abs .*mask_agreement"):
        export_model(tiny_checkpoint, tmp_path / "out", simplify="none")
    assert _nothing_written(tmp_path)


def test_a_wrong_preprocessing_constant_is_refused(tmp_path, tiny_checkpoint, tiny_sam_config):
    # The model normalizes with BGR-ordered means; the config (and so the manifest the runtime
    # reads) says RGB. The ONNX encoder gets pictures normalized as the manifest says.
    sam = load_sam(load_state_dict(tiny_checkpoint), tiny_sam_config)
    sam.pixel_mean.copy_(sam.pixel_mean.flip(0))
    with pytest.raises(ExportError, match="validation against PyTorch failed: embeddings_rel"):
        export_model(sam, tmp_path / "out", config=tiny_sam_config, simplify="none")
    assert _nothing_written(tmp_path)


@pytest.fixture(scope="module")
def other_package(tmp_path_factory, tiny_sam_config):
    """A package of the tiny architecture with other random weights."""
    folder = tmp_path_factory.mktemp("other") / "pkg"
    export_model(random_sam(tiny_sam_config, seed=99), folder, simplify="none", validate=False)
    return folder


def test_validation_runs_the_onnx_files(tiny_sam, tiny_package, other_package):
    # Exists because a validation comparing PyTorch with PyTorch passed every package: the same
    # model's files pass, another model's files fail on every figure.
    def files(folder):
        return [folder / f for f in ("image_encoder.onnx", "mask_decoder.onnx", "mask_decoder_low_res.onnx")]

    assert failures(validate_package(tiny_sam, *files(tiny_package))) == []
    report = validate_package(tiny_sam, *files(other_package))
    worst = report["worst"]
    assert worst["embeddings_rel"] > 0.1 and worst["embeddings_cosine"] < 0.9
    assert worst["mask_logits_rel"] > 0.1 and worst["low_res_logits_rel"] > 0.1
    assert worst["iou_predictions_abs"] > 0.01 and worst["mask_agreement"] < 0.99
    assert all(math.isfinite(v) for v in worst.values())
    named = {problem.split()[0] for problem in failures(report)}
    assert named == set(TOLERANCES), named
