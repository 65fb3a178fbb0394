"""SAM2AutomaticMaskGenerator against the official sam2 SAM2AutomaticMaskGenerator, on the same weights.

Random weights give every point nearly the same faint mask, which the default filters drop and the
box NMS collapses. These tests use *structured* weights: the small model with the hypernetworks'
last layers scaled by 2000 (mask logits of a few hundred, so the stability score passes or fails
per mask) and the IoU head's last layer by 30 (predicted IoUs spread over [0, 1], so the IoU
filter and the NMS order matter). The bar: >= 95% of the records on each side match one on the
other at mask IoU >= 0.95, with the same counts.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sam2")

import samdeploy  # noqa: E402
from samdeploy.sam.automatic import GeneratorOptionError  # noqa: E402

SAM2_TEST_CONFIG = Path(__file__).with_name("sam2.1_hiera_test.yaml")
MATCH_IOU = 0.95
MATCHED = 0.95


@pytest.fixture(scope="session")
def structured(build_once, sam2_config):
    """(official SAM2Base, package path) of the structured-weight model."""
    import torch

    from samdeploy.export import export_model, load_state_dict
    from samdeploy.export.sam2 import load_sam2, random_sam2

    def build(folder: Path) -> None:
        model = random_sam2(sam2_config, seed=3)
        with torch.no_grad():
            for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].weight.mul_(2000.0)
            model.sam_mask_decoder.iou_prediction_head.layers[-1].weight.mul_(30.0)
        torch.save({"model": model.state_dict()}, folder / "checkpoint.pt")
        export_model(
            folder / "checkpoint.pt", folder / "package", config=SAM2_TEST_CONFIG, simplify="none", force=True
        )

    folder = build_once("sam2_structured", build)
    return load_sam2(load_state_dict(folder / "checkpoint.pt"), sam2_config), folder / "package"


def _image(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([(xx * 0.8) % 255, (yy * 1.3) % 255, ((xx + yy) * 0.5) % 255], axis=-1).astype(np.uint8)


def _mask(record: dict) -> np.ndarray:
    return np.asarray(record["segmentation"], dtype=bool)


def _matched(records: list[dict], others: list[dict]) -> float:
    """Fraction of ``records`` whose mask has IoU >= MATCH_IOU with some mask of ``others``."""
    ours = np.stack([_mask(r).ravel() for r in records]).astype(np.float32)
    theirs = np.stack([_mask(r).ravel() for r in others]).astype(np.float32)
    intersections = ours @ theirs.T
    unions = ours.sum(1)[:, None] + theirs.sum(1)[None, :] - intersections
    iou = intersections / np.maximum(unions, 1)
    return float(np.mean(iou.max(axis=1) >= MATCH_IOU))


CASES = {
    "defaults": dict(points_per_side=8),
    "no_nms": dict(points_per_side=8, box_nms_thresh=1.0),
    "single_mask": dict(points_per_side=8, box_nms_thresh=1.0, multimask_output=False),
    "crops": dict(points_per_side=4, crop_n_layers=1, box_nms_thresh=0.9, crop_nms_thresh=0.9),
    "m2m": dict(points_per_side=6, box_nms_thresh=1.0, use_m2m=True),
    "thresholds": dict(points_per_side=8, box_nms_thresh=1.0, pred_iou_thresh=0.9, mask_threshold=2.0),
}


@pytest.mark.parametrize("case", CASES)
def test_records_match_the_official_generator(structured, case):
    _assert_records_match(structured, CASES[case], _image(200, 300), case)


def test_records_match_the_official_generator_with_masks_resized_in_opencv(structured):
    """At 128x256 (the 64x64 low-res masks times 2 and 4) every mask is resized by OpenCV."""
    from samdeploy.sam.transforms import MaskResize

    assert MaskResize.direct((64, 64), (128, 256)).in_opencv
    _assert_records_match(structured, CASES["no_nms"], _image(128, 256), "no_nms at 128x256")


def _assert_records_match(structured, options: dict, image: np.ndarray, case: str) -> None:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Official

    from samdeploy.export.sam2 import official_predictor

    model, package = structured
    official = Official(model, **options)
    official.predictor = official_predictor(model)  # its feature sizes for a 256 px input
    theirs = official.generate(image)
    ours = samdeploy.SAM2AutomaticMaskGenerator(samdeploy.load_model(package), **options).generate(image)
    print(f"\n{case}: official {len(theirs)} records, samdeploy {len(ours)}")
    assert len(theirs) > 0 and len(ours) == len(theirs)
    assert _matched(ours, theirs) >= MATCHED and _matched(theirs, ours) >= MATCHED
    assert set(ours[0]) == set(theirs[0])
    by_point = {tuple(r["point_coords"][0]): r for r in theirs}
    for record in ours:
        other = by_point.get(tuple(record["point_coords"][0]))
        if other is not None and np.array_equal(_mask(record), _mask(other)):
            assert record["bbox"] == other["bbox"] and record["area"] == other["area"]
            assert record["predicted_iou"] == pytest.approx(other["predicted_iou"], abs=1e-3)
            assert record["stability_score"] == pytest.approx(other["stability_score"], abs=1e-3)
            assert record["crop_box"] == other["crop_box"]


@pytest.mark.parametrize("case", ["crops", "m2m"])
def test_the_decoder_cut_in_two_gives_the_records_of_the_whole_decoder(
    structured, without_prepared_pair, count_runs, case
):
    """Why: the generator's first pass takes the decoder cut in two where the package has it (the
    image side once per crop, 11% less per batch of 64 on Hiera tiny); the records must be those of
    the one decoder, which packages exported before the cut still run (and the m2m pass always)."""
    _, package = structured
    options = CASES[case]
    image = _image(200, 300)
    generator = samdeploy.SAM2AutomaticMaskGenerator(samdeploy.load_model(package), **options)
    before = samdeploy.SAM2AutomaticMaskGenerator(
        samdeploy.load_model(without_prepared_pair(package)), **options
    )
    assert "image_side" in generator.point_graph.nodes and "image_side" not in before.point_graph.nodes
    side = generator.point_graph.nodes["image_side"]
    runs = count_runs(side)
    ours, theirs = generator.generate(image), before.generate(image)
    crops = 1 + (4 if options.get("crop_n_layers") else 0)
    assert len(runs) == crops  # once per crop, not once per batch of points
    assert len(ours) == len(theirs) > 0
    assert _matched(ours, theirs) == 1.0 and _matched(theirs, ours) == 1.0
    for mine, other in zip(ours, theirs, strict=True):
        assert mine["point_coords"] == other["point_coords"] and mine["bbox"] == other["bbox"]
        assert mine["predicted_iou"] == pytest.approx(other["predicted_iou"], abs=1e-5)


def test_output_modes_and_options(structured):
    _, package = structured
    model = samdeploy.load_model(package)
    image = _image(120, 160)
    binary = samdeploy.SAM2AutomaticMaskGenerator(model, points_per_side=4, box_nms_thresh=1.0).generate(
        image
    )
    coco = samdeploy.SAM2AutomaticMaskGenerator(
        model, points_per_side=4, box_nms_thresh=1.0, output_mode="coco_rle"
    ).generate(image)
    assert len(binary) == len(coco) > 0
    assert isinstance(coco[0]["segmentation"]["counts"], str)
    assert binary[0]["segmentation"].shape == (120, 160)
    with pytest.raises(GeneratorOptionError):
        samdeploy.SAM2AutomaticMaskGenerator(model, points_per_side=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generator = samdeploy.SAM2AutomaticMaskGenerator(
            model, points_per_side=4, box_nms_thresh=1.0, min_mask_region_area=100
        )
    assert any("min_mask_region_area is not applied" in str(w.message) for w in caught)
    # As the official generator on CPU: the option changes nothing.
    assert [r["area"] for r in generator.generate(image)] == [r["area"] for r in binary]
