"""``samdeploy segment`` and ``samdeploy graph`` end to end, and every bad input: one line, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from samdeploy.cli import main
from samdeploy.engine import Graph


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    yy, xx = np.mgrid[0:120, 0:200]
    image = np.stack([xx, yy * 2, (xx + yy) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(image).save(folder / "photo.png")
    return folder / "photo.png"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_segment_writes_mask_overlay_and_json(capsys, tmp_path, photo, tiny_package) -> None:
    code, _, err = run(
        capsys, "segment", photo, "--point", "50,40", "--point", "150,80,0", "--model", tiny_package,
        "--output", tmp_path / "mask.png", "--overlay", tmp_path / "overlay.png", "--json", tmp_path / "r.json",
        "--profile",
    )  # fmt: skip
    assert code == 0, err
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (120, 200) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(tmp_path / "overlay.png").size == (200, 120)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["size"] == [120, 200] and len(record["masks"]) == 1
    entry = record["masks"][0]
    decoded = mask_utils.decode(
        {"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"]}
    )
    np.testing.assert_array_equal(decoded.astype(bool), mask > 0)
    assert entry["area"] == int((mask > 0).sum())
    assert record["prompt"]["labels"] == [1, 0]
    assert list(tmp_path.glob(".*tmp")) == []


def test_outputs_get_the_usual_file_mode(capsys, tmp_path, photo, tiny_package) -> None:
    """Atomic writes go through a private temporary file; the result must not stay owner-only."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    code, _, err = run(capsys, "segment", photo, "-p", "50,40", "-m", tiny_package, "-o", tmp_path / "m.png")
    assert code == 0, err
    assert (tmp_path / "m.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_several_images_stream_to_a_folder(capsys, tmp_path, photo, tiny_package) -> None:
    other = tmp_path / "other.jpg"
    Image.open(photo).convert("RGB").save(other)
    (tmp_path / "broken.png").write_text("not a png")
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = run(
        capsys, "segment", photo, other, tmp_path / "broken.png", "--box", "10,10,150,100", "--multimask",
        "--model", tiny_package, "--output-dir", out, "--mode", "pipeline", "--profile",
    )  # fmt: skip
    assert code == 2  # one image failed; the others are written
    assert err.count("error:") == 1 and "broken.png" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{suffix}" for stem in ("photo", "other") for suffix in (".mask.png", ".overlay.png", ".json")
    )
    assert len(json.loads((out / "photo.json").read_text())["masks"]) == 3
    assert "sam/decode/mask_decoder" in stdout


@pytest.mark.parametrize("mode", ["sequential", "task"])
def test_modes_give_the_same_mask(capsys, tmp_path, photo, tiny_package, mode) -> None:
    code, _, err = run(capsys, "segment", photo, "-p", "60,60", "-m", tiny_package, "-o", tmp_path / "a.png")
    assert code == 0, err
    code, _, err = run(
        capsys, "segment", photo, "-p", "60,60", "-m", tiny_package, "-o", tmp_path / "b.png", "--mode", mode
    )
    assert code == 0, err
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    data = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(data).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:3000])
    return {
        "missing": tmp_path / "nope.jpg",
        "empty": tmp_path / "empty.jpg",
        "text": tmp_path / "text.jpg",
        "truncated": tmp_path / "cut.png",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--point", "500,40"], "outside the 200x120 image"),
        (["--point", "-1,40"], "outside"),
        (["--box", "100,10,20,50"], "inverted"),
        (["--box", "0,0,300,50"], "reaches outside"),
        (["--box", "1,2,3"], "malformed --box"),
        (["--point", "nan,3"], "not a finite position"),
        (["--point", "1;2"], "malformed --point"),
        (["--point", "1,2,5"], "unknown label '5'"),
        ([], "no prompt"),
        (["--point", "5,5", "--max-pixels", "100"], "more than the limit of 100"),
        (["--point", "5,5", "--mode", "fast"], "unknown --mode"),
    ],
)
def test_bad_prompts_and_options(capsys, tmp_path, photo, tiny_package, args, message) -> None:
    code, _, err = run(
        capsys, "segment", photo, *args, "--model", tiny_package, "--output", tmp_path / "m.png"
    )
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated"])
def test_bad_images(capsys, tmp_path, tiny_package, kind) -> None:
    image = _bad_files(tmp_path)[kind]
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run(
        capsys, "segment", image, "--point", "5,5", "--model", tiny_package, "--output", out / "m.png"
    )
    assert code == 2 and err.startswith("error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


def test_missing_output_folder(capsys, tmp_path, photo, tiny_package) -> None:
    code, _, err = run(
        capsys, "segment", photo, "-p", "5,5", "-m", tiny_package, "-o", tmp_path / "no" / "m.png"
    )
    assert code == 2 and "output folder does not exist" in err
    code, _, err = run(
        capsys, "segment", photo, "-p", "5,5", "-m", tiny_package, "--output-dir", tmp_path / "new" / "dir"
    )
    assert code == 0, err  # --output-dir is created
    assert len(list((tmp_path / "new" / "dir").iterdir())) == 3


def test_bad_model_packages(capsys, tmp_path, photo, tiny_package) -> None:
    args = ["segment", photo, "-p", "5,5", "-o", tmp_path / "m.png", "--model"]
    code, _, err = run(capsys, *args, tmp_path / "none")
    assert code == 2 and "model package not found" in err
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_package, corrupt)
    (corrupt / "model.json").write_text("{not json")
    code, _, err = run(capsys, *args, corrupt)
    assert code == 2 and "corrupt" in err
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_package, truncated)
    onnx = truncated / "mask_decoder.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])
    code, _, err = run(capsys, *args, truncated)
    assert code == 2 and "mask_decoder.onnx" in err and "Traceback" not in err
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_package, mismatched)
    manifest = json.loads((mismatched / "model.json").read_text())
    manifest["image_size"] = 1024
    (mismatched / "model.json").write_text(json.dumps(manifest))
    code, _, err = run(capsys, *args, mismatched)
    assert code == 2 and "image_size 1024" in err
    assert not (tmp_path / "m.png").exists()


def test_graph_command_prints_and_saves(capsys, tmp_path, tiny_package) -> None:
    code, out, err = run(capsys, "graph", "--model", tiny_package, "--save", tmp_path / "graph.json")
    assert code == 0, err
    for name in ("preprocess", "image_encoder", "prompt_build", "mask_decoder", "postprocess", "onnxruntime"):
        assert name in out
    assert "input 256px" in out
    import samdeploy.sam.nodes  # noqa: F401  (registers the node types JSON names)

    graph = Graph.load(tmp_path / "graph.json")
    assert set(graph.nodes) == {"encode", "decode"}
