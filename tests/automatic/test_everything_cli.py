"""``samdeploy everything`` end to end, and bad input: one line, exit 2, no files left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from samdeploy import SamAutomaticMaskGenerator, load_model
from samdeploy.cli import main

LOW = (
    "--points-per-side",
    "4",
    "--pred-iou-thresh",
    "0",
    "--stability-score-thresh",
    "0",
    "--box-nms-thresh",
    "0.99",
)


@pytest.fixture(scope="module")
def photo(tmp_path_factory, scene) -> Path:
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(scene(60, 90, seed=2)).save(path)
    return path


def run(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_coco_json_and_overlay(capsys, tmp_path, photo, tiny_package) -> None:
    code, _, err = run(capsys, "everything", photo, "--output-dir", tmp_path, "--model", tiny_package, *LOW)
    assert code == 0, err
    document = json.loads((tmp_path / "photo.json").read_text())
    assert document["image"] == {"file_name": "photo.png", "height": 60, "width": 90}
    annotations = document["annotations"]
    assert annotations and [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
    for annotation in annotations:
        mask = mask_utils.decode(annotation["segmentation"])
        assert mask.shape == (60, 90) and int(mask.sum()) == annotation["area"]
    assert Image.open(tmp_path / "photo.overlay.png").size == (90, 60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.json", "photo.overlay.png"]


def test_png_label_map_and_uncompressed_json(capsys, tmp_path, photo, tiny_package) -> None:
    code, _, err = run(
        capsys, "everything", photo, "-o", tmp_path, "-m", tiny_package, "--format", "png", "--crop-n-layers", "1",
        "--min-mask-region-area", "20", "--profile", *LOW,
    )  # fmt: skip
    assert code == 0, err
    labels = np.asarray(Image.open(tmp_path / "photo.labels.png"))
    assert labels.shape == (60, 90) and labels.max() >= 1
    code, out, err = run(
        capsys, "everything", photo, "-o", tmp_path, "-m", tiny_package, "--format", "json", *LOW
    )
    assert code == 0, err
    annotation = json.loads((tmp_path / "photo.json").read_text())["annotations"][0]
    assert isinstance(annotation["segmentation"]["counts"], list)
    assert sum(annotation["segmentation"]["counts"][1::2]) == annotation["area"]


def test_bad_image_among_several_fails_alone(capsys, tmp_path, photo, tiny_package) -> None:
    broken = tmp_path / "broken.png"
    broken.write_text("not a png")
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run(capsys, "everything", photo, broken, "-o", out, "-m", tiny_package, *LOW)
    assert code == 2
    assert "broken.png" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["photo.json", "photo.overlay.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.png"], "image not found"),
        (["PHOTO", "--format", "tiff"], "--format"),
        (["PHOTO", "--points-per-side", "0"], "points_per_side"),
        (["PHOTO", "--box-nms-thresh", "2"], "box_nms_thresh"),
        (["PHOTO", "--crop-n-layers", "-1"], "crop_n_layers"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    capsys, tmp_path, photo, tiny_package, args, message
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = [str(photo) if a == "PHOTO" else a for a in args]
    code, _, err = run(capsys, "everything", *args, "-o", out, "-m", tiny_package)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


def test_output_folder_is_created_but_never_replaces_a_file(capsys, tmp_path, photo, tiny_package) -> None:
    out = tmp_path / "new" / "out"
    code, _, err = run(capsys, "everything", photo, "-o", out, "-m", tiny_package, "--points-per-side", "2")
    assert code == 0, err
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".png"]
    (tmp_path / "file").write_text("keep")
    code, _, err = run(capsys, "everything", photo, "-o", tmp_path / "file", "-m", tiny_package)
    assert code == 2 and "exists and is not a folder" in err
    assert (tmp_path / "file").read_text() == "keep"


def test_everything_matches_the_python_generator(capsys, tmp_path, photo, tiny_package) -> None:
    # Why: nothing else checks that the CLI's masks are SamAutomaticMaskGenerator's for the same
    # file and options. The image is read here with Pillow alone and the scene's colours make the
    # BGR twin give other masks (asserted below), so a reader that returned BGR fails; so does an
    # option dropped on the way (one crop layer, so crops are compared too).
    options = {
        "points_per_side": 4,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 0.99,
        "crop_n_layers": 1,
        "min_mask_region_area": 0,
    }
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "everything", photo, "-o", out, "-m", tiny_package, "--backend", "onnxruntime",
        "--threads", "1", *flags,
    )  # fmt: skip
    assert code == 0, err
    [written] = out.glob("*.json")
    annotations = json.loads(written.read_text())["annotations"]
    with Image.open(photo) as image:
        rgb = np.asarray(image.convert("RGB"))
    with load_model(tiny_package, threads=1, cache_mb=0) as model:
        generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **options)
        expected = generator.generate(rgb)
        twin = generator.generate(np.ascontiguousarray(rgb[..., ::-1]))
    assert len(annotations) == len(expected) > 0
    for ours, theirs in zip(annotations, expected, strict=True):
        assert ours["segmentation"] == theirs["segmentation"]
        assert ours["bbox"] == theirs["bbox"] and ours["area"] == theirs["area"]
        assert ours["crop_box"] == theirs["crop_box"] and ours["point_coords"] == theirs["point_coords"]
        assert ours["predicted_iou"] == pytest.approx(theirs["predicted_iou"], abs=1e-6)
        assert ours["stability_score"] == pytest.approx(theirs["stability_score"], abs=1e-6)
    assert [a["segmentation"] for a in twin] != [a["segmentation"] for a in expected]
