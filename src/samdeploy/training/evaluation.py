"""Quality of a SAM predictor on the held-out generated scenes (numpy only).

Works with any object that has the ``SamPredictor`` interface (``set_image`` / ``predict``): the
samdeploy runtime on an exported package, or the official ``segment_anything.SamPredictor`` on a torch
model. The held-out scenes come from a seed family that training never draws from.

Measured per promptable object (visible area >= 1% of the image), as mean IoU against the exact
mask at the original image size:

* ``point_best_of_3``: one positive click at a uniformly random pixel inside the object,
  ``multimask_output=True``, the mask with the highest predicted score;
* ``point_single``: the same click, ``multimask_output=False``;
* ``box_single`` / ``box_best_of_3``: the object's tight box, single-mask / best of three;
* ``points_single``: three positive clicks inside the object, ``multimask_output=False``.

``prompt_dependence`` is the share of scenes (with two or more objects) where clicks at the centres
of the two farthest-apart objects give masks that overlap with IoU < 0.5: a model that ignores the
prompt returns the same mask for both and scores 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from samdeploy.training.scenes import (
    Scene,
    SceneConfig,
    generate_scene,
    mask_iou,
    mask_to_box,
    random_interior_points,
)

# The bundled example (examples/shapes.png): scene EXAMPLE_SEED at 640x480 with six shapes, clicked at
# EXAMPLE_POINT (x, y), inside the green ellipse (partly covered by a star with a hole).
EXAMPLE_SEED = 2024
EXAMPLE_SIZE = (480, 640)
EXAMPLE_POINT = (387, 241)

# Entropy of the held-out scenes: scene ``i`` is drawn from ``default_rng([HELD_OUT_SEED, i])``.
# Training draws from ``SeedSequence([seed, 1])`` children, a different family.
HELD_OUT_SEED = 5_000_011


class Predictor(Protocol):
    """The part of the ``SamPredictor`` interface that the evaluation uses."""

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None: ...

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class QualityReport:
    """Mean IoUs over all evaluated objects, and the prompt-dependence share over scenes."""

    scenes: int
    objects: int
    point_best_of_3: float
    point_single: float
    box_single: float
    box_best_of_3: float
    points_single: float
    prompt_dependence: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def held_out_scene(index: int) -> Scene:
    """Scene ``index`` of the held-out set."""
    return generate_scene(np.random.default_rng([HELD_OUT_SEED, index]))


def example_scene() -> Scene:
    """The scene of the bundled example image."""
    return generate_scene(EXAMPLE_SEED, SceneConfig(num_objects=(6, 6)), shape=EXAMPLE_SIZE)


def example_iou(predictor: Predictor, image: np.ndarray, truth: np.ndarray) -> float:
    """IoU against ``truth`` of the best-scored mask for the example click on ``image``."""
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(
        point_coords=np.array([EXAMPLE_POINT], np.float64), point_labels=np.ones(1, np.int64)
    )
    return mask_iou(masks[int(np.argmax(scores))], truth)


def center_point(mask: np.ndarray) -> np.ndarray:
    """1x2 (x, y) of the mask pixel farthest from the mask's boundary."""
    padded = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    return np.array([[x, y]], np.float64)


def _best(predictor: Predictor, **prompt: Any) -> np.ndarray:
    masks, scores, _ = predictor.predict(multimask_output=True, **prompt)
    return masks[int(np.argmax(scores))]


def _single(predictor: Predictor, **prompt: Any) -> np.ndarray:
    masks, _, _ = predictor.predict(multimask_output=False, **prompt)
    return masks[0]


def evaluate(
    predictor: Predictor,
    scenes: int = 200,
    start: int = 0,
    on_scene: Callable[[int], None] | None = None,
) -> QualityReport:
    """Measure ``predictor`` on held-out scenes ``start .. start + scenes - 1`` (``on_scene`` after each).

    The quality numbers use ``start=0``; training-time probes use scenes far beyond, so that the
    reported set is never looked at while tuning.
    """
    ious: dict[str, list[float]] = {
        name: []
        for name in ("point_best_of_3", "point_single", "box_single", "box_best_of_3", "points_single")
    }
    dependent: list[bool] = []
    for index in range(start, start + scenes):
        scene = held_out_scene(index)
        rng = np.random.default_rng([HELD_OUT_SEED, index, 1])
        predictor.set_image(scene.image)
        objects = scene.promptable_objects()
        for obj in objects:
            truth = scene.mask(obj)
            click = random_interior_points(truth, 1, rng)
            one = np.ones(1, np.int64)
            box = mask_to_box(truth)
            several = random_interior_points(truth, 3, rng)
            ious["point_best_of_3"].append(
                mask_iou(_best(predictor, point_coords=click, point_labels=one), truth)
            )
            ious["point_single"].append(
                mask_iou(_single(predictor, point_coords=click, point_labels=one), truth)
            )
            ious["box_single"].append(mask_iou(_single(predictor, box=box), truth))
            ious["box_best_of_3"].append(mask_iou(_best(predictor, box=box), truth))
            ious["points_single"].append(
                mask_iou(_single(predictor, point_coords=several, point_labels=np.ones(3, np.int64)), truth)
            )
        if len(objects) >= 2:
            centers = {obj: center_point(scene.mask(obj)) for obj in objects}
            pairs = [(a, b) for i, a in enumerate(objects) for b in objects[i + 1 :]]
            a, b = max(pairs, key=lambda pair: float(np.linalg.norm(centers[pair[0]] - centers[pair[1]])))
            mask_a = _best(predictor, point_coords=centers[a], point_labels=np.ones(1, np.int64))
            mask_b = _best(predictor, point_coords=centers[b], point_labels=np.ones(1, np.int64))
            dependent.append(mask_iou(mask_a, mask_b) < 0.5)
        if on_scene is not None:
            on_scene(index)
    return QualityReport(
        scenes=scenes,
        objects=len(ious["point_best_of_3"]),
        prompt_dependence=float(np.mean(dependent)) if dependent else 0.0,
        **{name: float(np.mean(values)) if values else 0.0 for name, values in ious.items()},
    )


def grid_ceiling(image_size: int, low_res_size: int, scenes: int = 200, start: int = 0) -> float:
    """Mean IoU of *perfect* low-res logits on the held-out objects: the bound the mask grid sets.

    Each object's exact mask is area-averaged onto the ``low_res_size`` grid over the padded
    ``image_size`` input, turned into logits, and upscaled back by the runtime's own post-processing;
    no model can beat the mean IoU of those masks with the truth, whatever its training.
    """
    from samdeploy.sam.transforms import MaskGeometry, postprocess_masks, preprocess_shape

    ious = []
    for index in range(start, start + scenes):
        scene = held_out_scene(index)
        height, width = scene.labels.shape
        new_h, new_w = preprocess_shape(height, width, image_size)
        geometry = MaskGeometry.for_image((height, width), image_size, (low_res_size, low_res_size))
        for obj in scene.promptable_objects():
            truth = scene.mask(obj)
            padded = np.zeros((image_size, image_size), np.float32)
            padded[:new_h, :new_w] = cv2.resize(
                truth.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_AREA
            )
            coverage = cv2.resize(padded, (low_res_size, low_res_size), interpolation=cv2.INTER_AREA)
            coverage = np.clip(coverage, 1e-4, 1 - 1e-4)
            logits = np.log(coverage / (1 - coverage))
            ious.append(mask_iou(postprocess_masks(logits, geometry) > 0, truth))
    return float(np.mean(ious))
