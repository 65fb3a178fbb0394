"""Every bad input gets a one-line error, and no half-written package is left behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import samdeploy.export.exporter as exporter
from samdeploy.errors import CheckpointError, ExportError
from samdeploy.export import export_model, load_state_dict
from samdeploy.export.validate import TOLERANCES
from samdeploy.package import ModelPackage


class _RunsCode:
    """Unpickling this would run a shell command that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found") as info:
        export_model(tmp_path / "nope.pth", tmp_path / "out")
    _one_line(info)
    assert not (tmp_path / "out").exists()


def test_checkpoint_is_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint is not a file"):
        load_state_dict(tmp_path)


def test_empty_checkpoint(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="checkpoint is empty"):
        load_state_dict(tmp_path / "empty.pth")


@pytest.mark.parametrize("kind", ["random-bytes-0", "random-bytes-1", "random-bytes-2", "truncated-zip"])
def test_corrupt_checkpoint(tmp_path, tiny_checkpoint, kind):
    path = tmp_path / "bad.pth"
    if kind.startswith("random-bytes"):
        # Garbage trips the unpickler in different ways (bad opcode, empty stack, ...).
        path.write_bytes(np.random.default_rng(int(kind[-1])).bytes(4096))
    else:
        data = tiny_checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt checkpoint") as info:
        export_model(path, tmp_path / "out")
    _one_line(info)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("format", ["torch-zip", "plain-pickle"])
def test_malicious_pickle_is_refused_and_never_run(tmp_path, format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"image_encoder.patch_embed.proj.weight": _RunsCode(marker)}
    if format == "torch-zip":
        torch.save(payload, path)
    else:
        import pickle

        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="refusing to load .* would run code") as info:
        export_model(path, tmp_path / "out")
    assert "system" in _one_line(info)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"fc.weight": torch.zeros(2, 2)}, "no image_encoder/prompt_encoder/mask_decoder weights"),
        ({"image_encoder.x": 3}, "non-tensor entries"),
        ([torch.zeros(1)], "does not hold a state dict"),
    ],
    ids=["classifier", "non-tensor", "list"],
)
def test_not_a_sam_state_dict(tmp_path, payload, message):
    torch.save(payload, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=message) as info:
        export_model(tmp_path / "other.pth", tmp_path / "out")
    assert _one_line(info).startswith("not a SAM checkpoint")


def test_sam_with_missing_weights(tmp_path, tiny_checkpoint):
    state = load_state_dict(tiny_checkpoint)
    del state["mask_decoder.output_upscaling.0.weight"]
    with pytest.raises(
        CheckpointError, match="does not match the SAM architecture.*output_upscaling"
    ) as info:
        export_model(state, tmp_path / "out")
    _one_line(info)


def test_wrapped_and_prefixed_state_dicts_load(tmp_path, tiny_checkpoint):
    state = load_state_dict(tiny_checkpoint)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "wrapped.pth")
    loaded = load_state_dict(tmp_path / "wrapped.pth")
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_wrong_model_type(tmp_path, tiny_checkpoint):
    with pytest.raises(
        CheckpointError, match="checkpoint is a custom SAM .* not vit_b .*fix --model-type"
    ) as info:
        export_model(tiny_checkpoint, tmp_path / "out", "vit_b")
    _one_line(info)


def test_existing_folder_that_is_not_a_package(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ExportError, match="exists and is not a samdeploy model package"):
        export_model(tiny_checkpoint, out)
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]
    with pytest.raises(ExportError, match="exists and is not a folder"):
        export_model(tiny_checkpoint, out / "holiday.jpg")


def test_too_little_disk(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(exporter, "free_disk_bytes", lambda path: 10 * 2**20)
    with pytest.raises(
        ExportError, match=r"not enough disk space .* needs about 0\.\d GiB, 0\.0 GiB free"
    ) as info:
        export_model(tiny_checkpoint, tmp_path / "out")
    _one_line(info)
    assert list(tmp_path.iterdir()) == []


def test_bad_options(tmp_path, tiny_checkpoint):
    with pytest.raises(ExportError, match="unknown simplifier 'magic'"):
        export_model(tiny_checkpoint, tmp_path / "out", simplify="magic")
    with pytest.raises(ExportError, match="unknown quantization 'int4'"):
        export_model(tiny_checkpoint, tmp_path / "out", quantize="int4")
    with pytest.raises(ExportError, match="opset 9 is not supported"):
        export_model(tiny_checkpoint, tmp_path / "out", opset=9)
    assert list(tmp_path.iterdir()) == []


def test_validation_failure_leaves_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setitem(TOLERANCES, "embeddings_cosine", 1.1)
    with pytest.raises(
        ExportError, match=r"validation against PyTorch failed: embeddings_cosine .*limit 1\.1"
    ) as info:
        export_model(tiny_checkpoint, tmp_path / "out", simplify="none")
    _one_line(info)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "export_decoder", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny_checkpoint, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_package_needs_force(tmp_path, tiny_checkpoint, tiny_package):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(tiny_package, out)
    (out / "model.json").write_text((out / "model.json").read_text().replace('"opset": 17', '"opset": 16'))
    with pytest.raises(ExportError, match="already holds a model package: pass --force"):
        export_model(tiny_checkpoint, out, validate=False)
    assert ModelPackage.load(out).manifest["opset"] == 16
    export_model(tiny_checkpoint, out, validate=False, force=True, simplify="none")
    package = ModelPackage.load(out, verify=True)
    assert package.manifest["opset"] == 17
    assert package.export_report["validation"] is None
    assert _leftovers(tmp_path) == []


def test_output_under_a_file(tmp_path, tiny_checkpoint):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ExportError, match="cannot create .*notes.txt/out") as info:
        export_model(tiny_checkpoint, tmp_path / "notes.txt" / "out")
    _one_line(info)


def test_the_light_option_checks_know_every_preset():
    """``samdeploy.export.checks`` names the presets without importing them (it loads without
    PyTorch): the two lists stay in step."""
    from samdeploy.export import MODEL_TYPES, PRESETS

    assert ("auto", *PRESETS) == MODEL_TYPES
