"""The boxes mode (a COCO detection file becomes an instance-mask file) and the prompts mode:
each mask equals SamPredictor's for its box or prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
from batch_helpers import keys

from samdeploy.batch import RunnerOptions, run_batch


@pytest.fixture(scope="module")
def predictor():
    from samdeploy import SamPredictor, load_model

    with load_model(threads=1, cache_mb=0) as model:
        yield SamPredictor(model)


def test_boxes_fill_the_coco_files_segmentations(dataset, predictor, tmp_path) -> None:
    from samdeploy.sam.images import load_image
    from samdeploy.sam.results import coco_rle

    names = keys(dataset)[:4]
    images = [{"id": 10 + i, "file_name": name, "license": 1} for i, name in enumerate(names)]
    images.append({"id": 99, "file_name": "img19.png"})
    boxes = {10: [[5, 4, 30, 20], [20, 10, 25.5, 30]], 11: [[0, 0, 40, 40]], 13: [[10, 12, 8, 8]]}
    annotations = [
        {
            "id": 100 * image_id + k,
            "image_id": image_id,
            "bbox": box,
            "category_id": 3,
            "iscrowd": 0,
            "area": 1.0,
        }
        for image_id, image_boxes in boxes.items()
        for k, box in enumerate(image_boxes)
    ]
    annotations.append({"id": 9901, "image_id": 99, "bbox": [1, 2, -3, 4], "category_id": 3})
    categories = [{"id": 3, "name": "thing"}]
    source = tmp_path / "instances.json"
    source.write_text(
        json.dumps(
            {"info": {"year": 2026}, "images": images, "annotations": annotations, "categories": categories}
        )
    )

    out = tmp_path / "out"
    summary = run_batch(source, out, mode="boxes", image_root=dataset, runner=RunnerOptions(threads=1))
    assert (summary.done, summary.failed) == (4, 1)
    failure = json.loads((out / "failures.jsonl").read_text())
    assert failure["image"] == "img19.png" and "annotation 9901: bbox must be" in failure["reason"]

    merged = json.loads((out / "instances.json").read_text())
    assert merged["info"] == {"year": 2026} and merged["categories"] == categories
    assert merged["images"] == images[:4]  # each finished image once, as the input had it
    assert [a["id"] for a in merged["annotations"]] == [a["id"] for a in annotations[:-1]]
    by_id = {a["id"]: a for a in merged["annotations"]}
    for image in images[:4]:
        image_boxes = boxes.get(image["id"], [])
        if not image_boxes:
            continue
        predictor.set_image(load_image(dataset / image["file_name"]))
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in image_boxes], dtype=np.float64)
        masks, scores, _ = predictor.predict_batch(boxes=xyxy, multimask_output=False)
        for k, box in enumerate(image_boxes):
            annotation = by_id[100 * image["id"] + k]
            assert annotation["bbox"] == box and annotation["category_id"] == 3  # the input's fields kept
            assert annotation["segmentation"] == coco_rle(masks[k, 0])
            assert annotation["area"] == int(masks[k, 0].sum()) and annotation["area"] > 0
            assert annotation["predicted_iou"] == float(scores[k, 0])


def test_prompts_give_the_predictors_masks_and_bad_lines_fail_alone(dataset, predictor, tmp_path) -> None:
    from samdeploy.sam.images import load_image
    from samdeploy.sam.results import coco_rle, mask_bbox

    names = keys(dataset)
    good = {
        names[0]: [{"points": [[20, 15]], "labels": [1]}],
        names[1]: [{"points": [[10, 10], [40, 30]], "labels": [1, 0]}, {"box": [5, 5, 40, 30]}],
        names[2]: [{"points": [[12, 20]], "labels": [1], "box": [2, 2, 30, 40]}],
    }
    lines = [json.dumps({"image": names[0], **good[names[0]][0]})]
    lines += [json.dumps({"image": name, "prompts": prompts}) for name, prompts in list(good.items())[1:]]
    lines += [
        "{not json",
        json.dumps({"image": "nowhere.png", "points": [[1, 1]], "labels": [1]}),
        json.dumps({"image": names[3], "points": [[1, 1]], "labels": [5]}),
        json.dumps({"image": names[0], "box": [1, 1, 5, 5]}),
        "",
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary = run_batch(
        dataset, out, mode="prompts", prompts=prompts, multimask=True, runner=RunnerOptions(threads=1)
    )
    assert (summary.total, summary.done, summary.failed) == (7, 3, 4)
    reasons = [json.loads(line)["reason"] for line in (out / "failures.jsonl").read_text().splitlines()]
    assert reasons == [
        "prompts.jsonl line 4: not JSON (Expecting property name enclosed in double quotes)",
        "prompts.jsonl line 5: image 'nowhere.png' is not among the inputs",
        "prompts.jsonl line 6: prompt 0: unknown point label 5: use 1 (foreground), 0 (background) or -1 (ignore)",
        f"prompts.jsonl line 7: image '{names[0]}' already has a prompts line",
    ]
    merged = json.loads((out / "instances.json").read_text())
    assert [image["file_name"] for image in merged["images"]] == list(good)
    annotations = iter(merged["annotations"])
    for name, image_prompts in good.items():
        predictor.set_image(load_image(dataset / name))
        for prompt in image_prompts:
            masks, scores, _ = predictor.predict(
                point_coords=np.array(prompt["points"], float) if "points" in prompt else None,
                point_labels=np.array(prompt["labels"]) if "labels" in prompt else None,
                box=np.array(prompt["box"], float) if "box" in prompt else None,
                multimask_output=True,
            )
            best = int(np.argmax(scores))
            annotation = next(annotations)
            assert annotation["prompt"] == prompt
            assert annotation["segmentation"] == coco_rle(masks[best])
            assert annotation["bbox"] == mask_bbox(masks[best])
            assert annotation["predicted_iou"] == float(scores[best])
    assert next(annotations, None) is None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["without_prompts"] == len(names) - 3
