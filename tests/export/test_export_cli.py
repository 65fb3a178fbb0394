"""The command line: exit codes, one-line errors, the export summary and ``inspect``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from samdeploy.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_export_then_inspect(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "pkg"
    code, stdout, stderr = _run(
        capsys, "export", str(tiny_checkpoint), "--output", str(out), "--simplify", "none"
    )
    assert code == 0, stderr
    assert "image_encoder.onnx" in stdout and "mask_decoder.onnx" in stdout
    assert "embeddings_cosine" in stdout
    for step in ("loading checkpoint", "tracing the image encoder", "tracing the mask decoder", "validating"):
        assert step in stderr
    code, stdout, _ = _run(capsys, "inspect", str(out))
    assert code == 0
    assert "custom, fp32, opset 17" in stdout
    for name in ("point_coords", "orig_im_size", "low_res_masks", "every checksum matches"):
        assert name in stdout


def test_inspect_tampered_package(tmp_path, tiny_package, capsys):
    out = tmp_path / "pkg"
    shutil.copytree(tiny_package, out)
    with open(out / "mask_decoder.onnx", "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    code, stdout, stderr = _run(capsys, "inspect", str(out))
    assert code == 2
    assert stderr.strip().count("\n") == 0
    assert "checksum mismatch" in stderr and "mask_decoder.onnx" in stderr


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("delete-model", "is missing image_encoder.onnx"),
        ("manifest", "corrupt"),
        ("nothing", "no model.json"),
    ],
)
def test_inspect_broken_packages(tmp_path, tiny_package, capsys, damage, message):
    out = tmp_path / "pkg"
    if damage == "nothing":
        out.mkdir()
    else:
        shutil.copytree(tiny_package, out)
        if damage == "delete-model":
            (out / "image_encoder.onnx").unlink()
        else:
            (out / "model.json").write_text("{not json")
    code, _, stderr = _run(capsys, "inspect", str(out))
    assert code == 2
    assert message in stderr and stderr.strip().count("\n") == 0


def test_export_errors_are_one_line_exit_2(tmp_path, tiny_checkpoint, capsys):
    cases = [
        (["export", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "a")], "checkpoint not found"),
        (["export", str(tiny_checkpoint), "-o", str(tmp_path / "b"), "--model-type", "vit_h"], "not vit_h"),
        (
            ["export", str(tiny_checkpoint), "-o", str(tmp_path / "c"), "--simplify", "zip"],
            "unknown simplifier",
        ),
        (
            ["export", str(tiny_checkpoint), "-o", str(tmp_path / "d"), "--quantize", "fp8"],
            "unknown quantization",
        ),
        (
            ["export", str(tiny_checkpoint), "-o", str(tmp_path / "e"), "--attention-rows", "-2"],
            "attention_rows must be positive",
        ),
    ]
    for argv, message in cases:
        code, _, stderr = _run(capsys, *argv)
        assert code == 2, argv
        assert message in stderr
        assert stderr.strip().startswith("error:") and stderr.strip().count("\n") == 0
        assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


# Run in a fresh interpreter: reports whether PyTorch (or the official packages) got imported.
_REFUSE_THEN_REPORT_IMPORTS = """
import sys
from samdeploy.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "segment_anything", "sam2", "torchvision") if m in sys.modules)
print("imported:", ",".join(heavy) or "none")
sys.exit(code)
"""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--simplify", "zip"], "unknown simplifier 'zip'"),
        (["--model-type", "vit_x"], "unknown model type 'vit_x'"),
        (["--quantize", "fp8"], "unknown quantization 'fp8'"),
        (["--precision", "fp16"], "unknown precision 'fp16'"),
        (["--precision", "int8", "--quantize", "int8"], "both quantize: pass one"),
        (["--attention-rows", "-2"], "attention_rows must be positive"),
        (["--encoder-norm-eps", "0"], "encoder_norm_eps must be a positive number"),
        (["--opset", "9"], "opset 9 is not supported"),
        (["--opset", "999"], "opset 999 is not supported"),
        (["CHECKPOINT=missing"], "checkpoint not found"),
        (["CHECKPOINT=folder"], "checkpoint is not a file"),
        (["OUTPUT=package"], "already holds a model package: pass --force"),
        (["OUTPUT=checkpoint's folder"], "holds the input checkpoint"),
    ],
)
def test_export_refuses_bad_input_before_importing_pytorch(
    tmp_path, tiny_checkpoint, tiny_package, options, message
):
    """What can be refused without reading the checkpoint is refused in a fraction of a second, not
    after the seconds PyTorch and the official packages take to import."""
    checkpoint, output = str(tiny_checkpoint), str(tmp_path / "out")
    if options == ["CHECKPOINT=missing"]:
        checkpoint, options = str(tmp_path / "missing.pth"), []
    elif options == ["CHECKPOINT=folder"]:
        checkpoint, options = str(tmp_path), []
    elif options == ["OUTPUT=package"]:
        output, options = str(tiny_package), []
    elif options == ["OUTPUT=checkpoint's folder"]:  # a package shipping its checkpoint, as the default does
        shutil.copytree(tiny_package, tmp_path / "shipped")
        checkpoint = str(shutil.copy(tiny_checkpoint, tmp_path / "shipped" / "checkpoint.pth"))
        output, options = str(tmp_path / "shipped"), ["--force"]
    result = subprocess.run(
        [sys.executable, "-c", _REFUSE_THEN_REPORT_IMPORTS, "export", checkpoint, "-o", output, *options],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.strip().count("\n") == 0
    assert result.stdout.strip() == "imported: none"
    assert not (tmp_path / "out").exists()


def test_console_script_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "samdeploy", "inspect", str(tmp_path / "no-such-package")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: model package not found: {tmp_path / 'no-such-package'}"


def test_int8_export_records_differences(tmp_path, tiny_checkpoint, tiny_package, tiny_sam, capsys):
    import numpy as np
    import onnxruntime as ort
    import torch

    from samdeploy.export.validate import (
        _encoder_input,
        cosine,
        encoder_images,
        failures,
        manifest_encoder_input,
    )

    out = tmp_path / "int8"
    code, stdout, stderr = _run(capsys, "export", str(tiny_checkpoint), "-o", str(out), "--quantize", "int8")
    assert code == 0, stderr
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["precision"] == "int8"
    validation = manifest["export"]["validation"]
    # The recorded figures are the int8 graph's own: recomputed here from the written file.
    picture = encoder_images()["synthetic"]
    session = ort.InferenceSession(str(out / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    feed = manifest_encoder_input(picture, 256, manifest["pixel_mean"], manifest["pixel_std"])
    got = session.run(None, {"image": feed})[0]
    with torch.no_grad():
        want = tiny_sam.image_encoder(_encoder_input(tiny_sam, picture)).numpy()
    recorded = validation["encoder_inputs"]["synthetic"]
    assert recorded["cosine"] == pytest.approx(cosine(got, want), abs=1e-9)
    assert recorded["max_abs"] == pytest.approx(float(np.abs(got - want).max()), rel=1e-6)
    # int8 really changed the numbers, well beyond the fp32 package's float rounding.
    fp32 = json.loads((tiny_package / "model.json").read_text())["export"]["validation"]
    assert validation["worst"]["embeddings_rel"] > 100 * fp32["worst"]["embeddings_rel"]
    # "passed" says whether every figure is within the fp32 tolerances, no more, no less.
    assert validation["passed"] is (failures(validation) == [])
    assert fp32["passed"] is True
    assert manifest["export"]["nodes"]["image_encoder"]["quantized"] > 0
    # The decoders stay float32, as optimize_package(precision="int8") leaves them.
    assert "quantized" not in manifest["export"]["nodes"]["mask_decoder"]
    assert "quantized" not in manifest["export"]["nodes"]["mask_decoder_low_res"]
    fp32_bytes = (tiny_package / "image_encoder.onnx").stat().st_size
    assert manifest["files"]["image_encoder.onnx"]["bytes"] < fp32_bytes


@pytest.mark.parametrize(("simplify", "opset"), [("onnxslim", 17), ("onnxsim", 16)])
def test_other_simplifier_and_opset(tmp_path, tiny_checkpoint, capsys, simplify, opset):
    # The non-default simplifier and an opset other than 17: written as asked and still faithful.
    import onnx

    out = tmp_path / "pkg"
    code, _, stderr = _run(
        capsys, "export", str(tiny_checkpoint), "-o", str(out), "--simplify", simplify, "--opset", str(opset)
    )
    assert code == 0, stderr
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["opset"] == opset and manifest["export"]["simplify"] == simplify
    for role in ("image_encoder", "mask_decoder", "mask_decoder_low_res"):
        model = onnx.load(str(out / f"{role}.onnx"))
        assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {opset}
        nodes = manifest["export"]["nodes"][role]
        assert nodes["simplified"] < nodes["traced"]
    # Opset 16 has no LayerNormalization: the tracer decomposes it, and must still match.
    validation = manifest["export"]["validation"]
    assert validation["passed"] is True
    assert validation["worst"]["embeddings_rel"] < 1e-5
    assert validation["worst"]["mask_agreement"] > 0.9999


def test_a_graph_onnx_runtime_cannot_run_fails_in_one_line(tmp_path, tiny_checkpoint, capsys):
    # onnxslim 0.1.98 at opset 16 writes a decoder that fails on a batch of 4 prompts: validation
    # must turn that into a one-line error and write nothing, not a traceback.
    out = tmp_path / "pkg"
    code, _, stderr = _run(
        capsys, "export", str(tiny_checkpoint), "-o", str(out), "--simplify", "onnxslim", "--opset", "16"
    )
    assert code == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: validation could not run the exported graphs")
    assert "retry without --simplify onnxslim" in last and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_sigterm_removes_the_partial_package(tmp_path, tiny_checkpoint):
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "samdeploy", "export", str(tiny_checkpoint), "-o", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not any(".partial-" in p.name for p in tmp_path.iterdir()) and process.poll() is None:
            assert time.monotonic() < deadline, "export never started writing"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=240)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert list(tmp_path.iterdir()) == []
