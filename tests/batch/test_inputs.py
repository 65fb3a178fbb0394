"""What a batch run reads: folders, globs, lists, COCO files, prompts; bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from batch_helpers import N_IMAGES, environment, keys

from samdeploy.batch import BatchInputError, read_input
from samdeploy.cli import main


def test_folder_is_recursive_and_takes_image_files_only(dataset) -> None:
    batch = read_input(dataset)
    assert [item.key for item in batch.items] == keys(dataset)
    assert len(batch.items) == N_IMAGES and batch.kind == "folder"
    assert all(item.task == {} and item.error is None for item in batch.items)


def test_glob_and_list_keys_are_relative_to_their_base(dataset, tmp_path) -> None:
    batch = read_input(f"{dataset}/**/img1*.png")
    assert [item.key for item in batch.items] == [k for k in keys(dataset) if "img1" in k]
    listing = dataset / "picked.txt"
    listing.write_text("# picked\nsub/img02.png\n\nimg00.png\nimg00.png\n/elsewhere/x.png\n")
    batch = read_input(listing)
    assert [(item.key, item.path) for item in batch.items] == [
        ("sub/img02.png", str(dataset / "sub/img02.png")),
        ("img00.png", str(dataset / "img00.png")),
        ("elsewhere/x.png", "/elsewhere/x.png"),
    ]


def test_coco_images_and_boxes(tmp_path) -> None:
    coco = {
        "images": [{"id": 7, "file_name": "a/b.jpg"}, {"id": 8, "file_name": "c.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 7, "bbox": [1, 2, 3, 4]},
            {"id": 2, "image_id": 7, "bbox": [0, 0, 10.5, 1]},
            {"id": 3, "image_id": 8, "bbox": [0, 0, "x", 1]},
        ],
    }
    source = tmp_path / "instances.json"
    source.write_text(json.dumps(coco))
    plain = read_input(source)
    assert [(i.key, i.image_id, i.task) for i in plain.items] == [("a/b.jpg", 7, {}), ("c.jpg", 8, {})]
    boxes = read_input(source, "boxes", image_root=tmp_path / "images")
    first, second = boxes.items
    assert first.path == str(tmp_path / "images/a/b.jpg")
    assert first.task == {"boxes": [[1, 2, 4, 6], [0, 0, 10.5, 1]], "ids": [1, 2]} and first.error is None
    assert second.error == "annotation 3: bbox must be [x, y, width, height], got [0, 0, 'x', 1]"


@pytest.mark.parametrize(
    ("make", "mode", "message"),
    [
        (lambda d, t: t / "missing", "everything", "input not found"),
        (lambda d, t: d, "boxes", "--mode boxes needs a COCO instances JSON"),
        (lambda d, t: d, "segment", "unknown --mode 'segment'"),
        (lambda d, t: t, "everything", "no images in"),
        (
            lambda d, t: (t / "x.json").write_text("[1]") and t / "x.json",
            "everything",
            "not a COCO instances file",
        ),
    ],
)
def test_bad_input_is_one_error(dataset, tmp_path, make, mode, message) -> None:
    with pytest.raises(BatchInputError, match=message):
        read_input(make(dataset, tmp_path), mode)


def test_command_line_usage_errors_exit_2_with_one_line(dataset, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    cases = [
        (["--mode", "boxes"], "--mode boxes needs a COCO instances JSON"),
        (["--mode", "prompts"], "--mode prompts needs --prompts FILE"),
        (["--points-per-side", "0"], "points_per_side must be an integer >= 1"),
        (["--workers", "0"], "--workers must be at least 1"),
    ]
    for args, message in cases:
        assert main(["batch", str(dataset), "-o", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not out.exists()  # nothing written for a refused run


def test_ray_is_imported_only_on_the_ray_path() -> None:
    code = (
        "import sys, samdeploy.batch, samdeploy.cli; samdeploy.cli._register(); print('ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=environment(), capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
