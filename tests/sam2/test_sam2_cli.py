"""The command line takes SAM 2.1 packages unchanged: segment, everything, graph and bench."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sam2")

from samdeploy.cli import main  # noqa: E402


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:200]
    image = np.stack([(xx * 1.2) % 255, (yy * 0.9) % 255, (xx + yy) % 255], -1) + rng.normal(
        0, 10, (150, 200, 3)
    )
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return str(path)


def test_segment_with_a_sam2_package_matches_the_predictor(capsys, tmp_path, photo, sam2_package):
    import samdeploy

    mask_path, json_path = tmp_path / "mask.png", tmp_path / "result.json"
    code, _, err = _run(
        capsys,
        "segment",
        photo,
        "--model",
        sam2_package,
        "--point",
        "80,60",
        "--box",
        "20,20,150,120",
        "--output",
        mask_path,
        "--json",
        json_path,
    )
    assert code == 0, err
    mask = np.asarray(Image.open(mask_path)) > 0
    predictor = samdeploy.SAM2ImagePredictor(samdeploy.load_model(sam2_package))
    predictor.set_image(np.asarray(Image.open(photo).convert("RGB")))
    masks, scores, _ = predictor.predict(
        point_coords=[[80, 60]], point_labels=[1], box=[20, 20, 150, 120], multimask_output=False
    )
    assert mask.shape == (150, 200) and np.array_equal(mask, masks[np.argmax(scores)] > 0)
    record = json.loads(json_path.read_text())
    assert [m["score"] for m in record["masks"]] == pytest.approx(scores.tolist(), abs=1e-5)
    assert record["size"] == [150, 200]


def test_segment_refuses_points_outside_the_image(capsys, tmp_path, photo, sam2_package):
    code, _, err = _run(
        capsys, "segment", photo, "--model", sam2_package, "--point", "500,60", "--output", tmp_path / "m.png"
    )
    assert code == 2 and "outside" in err and "Traceback" not in err


def test_everything_with_a_sam2_package(capsys, tmp_path, photo, sam2_package):
    code, _, err = _run(
        capsys,
        "everything",
        photo,
        "--model",
        sam2_package,
        "--points-per-side",
        "4",
        "--pred-iou-thresh",
        "0",
        "--stability-score-thresh",
        "0",
        "--output-dir",
        tmp_path,
    )
    assert code == 0, err
    document = json.loads((tmp_path / "photo.json").read_text())
    assert len(document["annotations"]) >= 1
    assert (tmp_path / "photo.overlay.png").is_file()


def test_graph_and_bench_with_a_sam2_package(capsys, tmp_path, sam2_package):
    code, out, err = _run(capsys, "graph", "--model", sam2_package)
    assert code == 0, err
    assert "sam2.Preprocess" in out and "high_res_feats_0" in out and "sam2.Postprocess" in out
    report_path = tmp_path / "bench.json"
    code, out, err = _run(
        capsys,
        "bench",
        "--model",
        sam2_package,
        "--threads",
        "1",
        "--repeat",
        "1",
        "--stream-images",
        "1",
        "--everything-points",
        "4",
        "--json",
        report_path,
    )
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["latency"]["predict: 1 point"]["median_ms"] > 0 and report["everything"]["masks"] >= 0
    assert report["encoder"]["gflop"] is None and "no FLOP count" in out
