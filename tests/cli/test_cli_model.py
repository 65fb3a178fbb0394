"""Which model runs, where it runs, and what the CLI says about it: ``--model default``, the
embedded model's recommended generator settings, ``--device``, the demo note and low-confidence marks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pycocotools import mask as mask_utils

from samdeploy.cli import main, notices
from samdeploy.cli.options import parse_model, resolve_device
from samdeploy.errors import BackendError
from samdeploy.package import ModelPackage
from samdeploy.sam.automatic import SamAutomaticMaskGenerator, recommended_settings
from samdeploy.sam.model import DEFAULT_MODEL, load_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "shapes.png"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------- --model default


def test_model_default_names_the_embedded_model(tmp_path) -> None:
    assert parse_model("default") is None
    assert parse_model("./default") == Path("default")
    assert parse_model("models/sam_vit_b") == Path("models/sam_vit_b")


def test_inspect_defaults_to_the_embedded_model_and_shows_its_recommendation(capsys) -> None:
    for args in ([], ["default"]):
        code, out, err = run(capsys, "inspect", *args)
        assert code == 0, err
        assert "custom" in out and "every checksum matches" in out
        assert "recommends pred_iou_thresh 0.7, stability_score_thresh 0.7" in out


def test_inspect_says_official_defaults_for_a_package_without_recommendation(capsys, tiny_package) -> None:
    code, out, err = run(capsys, "inspect", tiny_package)
    assert code == 0, err
    assert "official defaults" in out


def test_the_manifest_checksums_cover_the_model_files_not_the_manifest() -> None:
    package = ModelPackage.load(DEFAULT_MODEL, verify=True)
    assert "model.json" not in package.manifest["files"]
    assert set(package.manifest["files"]) == {entry["file"] for entry in package.manifest["models"].values()}


def test_bench_defaults_to_the_embedded_model(capsys, monkeypatch) -> None:
    """The wiring only (tests/bench measures): the package and device bench_package is given."""
    from samdeploy.cli import bench as bench_cli
    from samdeploy.errors import SamDeployError

    given: dict = {}

    def fake_bench(package, **options):
        given.update(options, package=package)
        raise SamDeployError("measured nothing")

    monkeypatch.setattr(bench_cli, "bench_package", fake_bench)
    for args in ([], ["--model", "default"]):
        code, _, err = run(capsys, "bench", *args, "--device", "cpu")
        assert code == 2 and "measured nothing" in err
        assert Path(given["package"]).resolve() == DEFAULT_MODEL.resolve()
        assert given["backend"] == "onnxruntime" and given["providers"] == ["CPUExecutionProvider"]


# ----------------------------------------------------------------------------- generator settings


def test_generator_takes_the_package_recommendation_unless_told(tiny_package) -> None:
    embedded = load_model()
    try:
        generator = SamAutomaticMaskGenerator(embedded)
        assert generator.recommended == {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.7}
        assert generator.config.pred_iou_thresh == 0.7 and generator.config.stability_score_thresh == 0.7
        assert generator.config.box_nms_thresh == 0.7 and generator.config.points_per_side == 32
        told = SamAutomaticMaskGenerator(embedded, pred_iou_thresh=0.88, stability_score_thresh=0.95)
        assert told.recommended == {}
        assert (told.config.pred_iou_thresh, told.config.stability_score_thresh) == (0.88, 0.95)
    finally:
        embedded.close()
    official = SamAutomaticMaskGenerator(tiny_package)  # an export carries no recommendation
    assert official.recommended == {} and recommended_settings(official.model.package) == {}
    assert (official.config.pred_iou_thresh, official.config.stability_score_thresh) == (0.88, 0.95)
    official.model.close()


def test_readme_everything_finds_the_six_shapes_of_the_example(capsys, tmp_path) -> None:
    from samdeploy.training.evaluation import example_scene
    from samdeploy.training.scenes import mask_iou

    code, _, err = run(capsys, "everything", EXAMPLE, "--output-dir", tmp_path / "out")
    assert code == 0, err
    assert "recommends: pred_iou_thresh 0.7, stability_score_thresh 0.7" in err
    document = json.loads((tmp_path / "out" / "shapes.json").read_text())
    masks = [mask_utils.decode(a["segmentation"]).astype(bool) for a in document["annotations"]]
    scene = example_scene()
    assert scene.num_objects == 6
    found = [max((mask_iou(mask, scene.mask(i)) for mask in masks), default=0.0) for i in range(6)]
    assert min(found) >= 0.5, found
    assert document["model"]["generator"]["pred_iou_thresh"] == 0.7
    assert document["model"]["demo"] is True


def test_everything_options_override_the_recommendation(capsys, tmp_path) -> None:
    code, _, err = run(
        capsys, "everything", EXAMPLE, "-o", tmp_path, "--points-per-side", "8",
        "--pred-iou-thresh", "0.88", "--stability-score-thresh", "0.95",
    )  # fmt: skip
    assert code == 0, err
    assert "recommends" not in err
    generator = json.loads((tmp_path / "shapes.json").read_text())["model"]["generator"]
    assert (generator["pred_iou_thresh"], generator["stability_score_thresh"]) == (0.88, 0.95)
    assert generator["points_per_side"] == 8


# ----------------------------------------------------------------------------- --device


def test_cpu_device_is_onnxruntime_on_the_cpu() -> None:
    assert resolve_device(None, None) == (None, None)
    assert resolve_device("cpu", None) == ("onnxruntime", ["CPUExecutionProvider"])
    assert resolve_device("CPUExecutionProvider", None) == ("onnxruntime", ["CPUExecutionProvider"])
    assert resolve_device("cpu", "openvino") == ("openvino", None)


def test_unknown_and_contradictory_devices_are_refused() -> None:
    with pytest.raises(BackendError, match="unknown --device 'quantum'"):
        resolve_device("quantum", None)
    with pytest.raises(BackendError, match="not --backend onnxruntime"):
        resolve_device("openvino", "onnxruntime")
    with pytest.raises(BackendError, match="not --backend openvino"):
        resolve_device("cuda", "openvino")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_a_missing_gpu_is_one_line_that_lists_what_is_installed(capsys, tmp_path) -> None:
    with pytest.raises(BackendError, match=r"Installed here: cpu \(CPUExecutionProvider\)"):
        resolve_device("cuda", None)
    for command in (
        ["segment", EXAMPLE, "-p", "387,241", "-o", tmp_path / "m.png"],
        ["everything", EXAMPLE, "-o", tmp_path / "e"],
        ["graph"],
        ["bench"],
    ):
        code, _, err = run(capsys, *command, "--device", "cuda")
        assert code == 2, command
        assert err.startswith("error: --device cuda is not available") and len(err.strip().splitlines()) == 1
        assert "Installed here: cpu" in err
    assert not (tmp_path / "m.png").exists() and not (tmp_path / "e").exists()


def test_segment_runs_on_the_chosen_device(capsys, tmp_path, tiny_package) -> None:
    code, out, err = run(
        capsys,
        "segment",
        EXAMPLE,
        "-p",
        "387,241",
        "-m",
        tiny_package,
        "-o",
        tmp_path / "m.png",
        "--device",
        "cpu",
    )
    assert code == 0, err
    code, out, err = run(capsys, "graph", "-m", tiny_package, "--device", "cpu")
    assert code == 0, err
    assert "CPUExecutionProvider" in out


# ----------------------------------------------------------------------------- what the CLI says


def test_the_embedded_model_says_once_that_it_is_a_demo(capsys, tmp_path) -> None:
    code, _, err = run(
        capsys, "segment", EXAMPLE, EXAMPLE.with_name("shapes_mask.png"), "-p", "387,241",
        "--output-dir", tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert err.count("trained on synthetic shapes") == 1
    assert "samdeploy export" in err
    record = json.loads((tmp_path / "shapes.json").read_text())
    assert record["model"]["demo"] is True and "synthetic shapes" in record["model"]["note"]
    assert record["model"]["package"] == "default"
    assert record["low_confidence"] is False and record["model"]["low_confidence_below"] == 0.5


def test_another_package_gets_no_demo_note(capsys, tmp_path, tiny_package) -> None:
    code, _, err = run(
        capsys, "segment", EXAMPLE, "-p", "387,241", "-m", tiny_package, "-o", tmp_path / "m.png",
        "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    assert "synthetic shapes" not in err
    model = json.loads((tmp_path / "r.json").read_text())["model"]
    assert "demo" not in model and model["package"] == str(tiny_package)


@pytest.mark.parametrize(("threshold", "low"), [(2.0, True), (-1.0, False)])
def test_low_confidence_answers_are_marked(
    capsys, tmp_path, tiny_package, monkeypatch, threshold, low
) -> None:
    monkeypatch.setattr(notices, "LOW_CONFIDENCE_SCORE", threshold)
    code, _, err = run(
        capsys, "segment", EXAMPLE, "-p", "387,241", "--multimask", "-m", tiny_package,
        "-o", tmp_path / "m.png", "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    assert ("low confidence" in err) is low
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["low_confidence"] is low
    assert [mask["low_confidence"] for mask in record["masks"]] == [low] * 3


def test_low_confidence_threshold() -> None:
    assert notices.LOW_CONFIDENCE_SCORE == 0.5
    assert notices.is_low_confidence(0.49) and not notices.is_low_confidence(0.5)
    assert notices.is_low_confidence(np.float32(0.3))


def test_everything_counts_low_confidence_masks(capsys, tmp_path, tiny_package, monkeypatch) -> None:
    monkeypatch.setattr(notices, "LOW_CONFIDENCE_SCORE", 2.0)
    code, _, err = run(
        capsys, "everything", EXAMPLE, "-m", tiny_package, "-o", tmp_path, "--points-per-side", "4",
        "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
    )  # fmt: skip
    assert code == 0, err
    annotations = json.loads((tmp_path / "shapes.json").read_text())["annotations"]
    assert annotations and all(a["low_confidence"] for a in annotations)
    assert f"{len(annotations)} low confidence" in err
