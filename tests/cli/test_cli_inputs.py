"""Folders as inputs, output folders created alike, and where each image's outputs go."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samdeploy.cli import main
from samdeploy.cli.inputs import expand_images
from samdeploy.errors import ImageError, SamDeployError


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def picture(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """photos/{a.png, b.JPG, sub/c.webp, sub/deeper/d.png, notes.txt, .hidden/e.png, .f.png}"""
    root = tmp_path / "photos"
    for index, name in enumerate(
        ("a.png", "b.JPG", "sub/c.webp", "sub/deeper/d.png", ".hidden/e.png", ".f.png")
    ):
        picture(root / name, index)
    (root / "notes.txt").write_text("not an image")
    return root


def test_a_folder_is_its_images_recursively_in_order(tree) -> None:
    images = expand_images([tree])
    assert [image.path.relative_to(tree).as_posix() for image in images] == [
        "a.png",
        "b.JPG",
        "sub/c.webp",
        "sub/deeper/d.png",
    ]
    assert [image.name.as_posix() for image in images] == ["a", "b", "sub/c", "sub/deeper/d"]


def test_files_and_folders_mix_and_collisions_are_refused(tree, tmp_path) -> None:
    single = picture(tmp_path / "other" / "x.png")
    images = expand_images([single, tree / "sub"])
    assert [image.name.as_posix() for image in images] == ["x", "c", "deeper/d"]
    with pytest.raises(SamDeployError, match="would write the same outputs"):
        expand_images([tree / "a.png", picture(tmp_path / "again" / "a.png")])


def test_a_folder_without_images_is_one_clear_error(tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    (empty / "deep").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ImageError, match="no images in folder"):
        expand_images([empty])
    code, _, err = run(capsys, "segment", empty, "-p", "1,1", "--output-dir", tmp_path / "out")
    assert code == 2 and "no images in folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_segment_a_folder_mirrors_its_tree(capsys, tree, tmp_path, tiny_package) -> None:
    out = tmp_path / "out" / "new"
    code, _, err = run(capsys, "segment", tree, "-p", "10,10", "-m", tiny_package, "--output-dir", out)
    assert code == 0, err
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    stems = ["a", "b", "sub/c", "sub/deeper/d"]
    assert written == sorted(
        f"{stem}.{kind}" for stem in stems for kind in ("json", "mask.png", "overlay.png")
    )
    record = json.loads((out / "sub" / "deeper" / "d.json").read_text())
    assert record["image"] == str(tree / "sub" / "deeper" / "d.png")


def test_a_folder_needs_output_dir(capsys, tree, tmp_path, tiny_package) -> None:
    code, _, err = run(capsys, "segment", tree, "-p", "10,10", "-m", tiny_package, "-o", tmp_path / "m.png")
    assert code == 2 and "--output-dir" in err


def test_segment_creates_the_folders_of_output_overlay_and_json(capsys, tree, tmp_path, tiny_package) -> None:
    mask, overlay, record = (
        tmp_path / "m" / "mask.png",
        tmp_path / "o" / "x" / "ov.png",
        tmp_path / "j" / "r.json",
    )
    code, _, err = run(
        capsys, "segment", tree / "a.png", "-p", "10,10", "-m", tiny_package,
        "-o", mask, "--overlay", overlay, "--json", record,
    )  # fmt: skip
    assert code == 0, err
    assert mask.is_file() and overlay.is_file() and record.is_file()


def test_no_folder_is_created_when_the_command_fails_early(capsys, tree, tmp_path, tiny_package) -> None:
    code, _, err = run(
        capsys,
        "segment",
        tree / "a.png",
        "-p",
        "10,10",
        "-m",
        tmp_path / "no-model",
        "-o",
        tmp_path / "m" / "x.png",
    )
    assert code == 2 and "model package not found" in err
    assert not (tmp_path / "m").exists()
    code, _, err = run(capsys, "everything", tree, "-m", tmp_path / "no-model", "-o", tmp_path / "e")
    assert code == 2 and not (tmp_path / "e").exists()


def test_everything_on_a_folder(capsys, tree, tmp_path, tiny_package) -> None:
    out = tmp_path / "everything"
    code, _, err = run(
        capsys, "everything", tree / "sub", "-m", tiny_package, "-o", out, "--points-per-side", "4",
        "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
    )  # fmt: skip
    assert code == 0, err
    assert (out / "c.json").is_file() and (out / "deeper" / "d.json").is_file()
    assert (out / "deeper" / "d.overlay.png").is_file()
    document = json.loads((out / "c.json").read_text())
    assert document["image"]["file_name"] == "c.webp"
    assert document["model"]["generator"]["points_per_side"] == 4
