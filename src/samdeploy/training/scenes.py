"""Procedurally generated scenes of shapes with exact instance masks (numpy and OpenCV only).

A scene is an RGB image of overlapping shapes (polygons, ellipses, stars, blobs, rings, shapes with
thin parts and holes) drawn in order over a flat, gradient or textured background, plus a label map
that says which object owns each pixel. Because later objects paint over earlier ones, an object's
mask is exactly its *visible* part. Everything is a pure function of a seed, so the training data,
the held-out evaluation set and the tests all draw the same scenes from the same numbers.

This module must stay importable without torch: the evaluation and the tests use it on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

# Sub-pixel precision of polygon vertices handed to OpenCV (coordinates are multiplied by 2**_SHIFT).
_SHIFT = 4
# An object counts as promptable (for training and evaluation) when its visible part covers at least
# this fraction of the image.
MIN_OBJECT_FRACTION = 0.01

Fill = Callable[[np.random.Generator, int, int], np.ndarray]


@dataclass(frozen=True)
class SceneConfig:
    """Ranges that the generator samples from; sizes are in pixels of the generated image."""

    long_side: tuple[int, int] = (192, 640)
    max_aspect: float = 2.0
    num_objects: tuple[int, int] = (2, 9)
    # Object radius as a fraction of sqrt(H * W).
    radius: tuple[float, float] = (0.07, 0.22)
    noise_sigma: tuple[float, float] = (0.0, 10.0)
    blur_probability: float = 0.3
    hole_probability: float = 0.25


@dataclass(frozen=True)
class Scene:
    """One generated image and its instance segmentation.

    ``image`` is HxWx3 uint8 RGB. ``labels`` is HxW int32: 0 for background, ``i + 1`` for pixels
    where object ``i`` is visible, so the objects' masks never overlap and each is the visible part
    of its shape after occlusion. Every object has at least one visible pixel.
    """

    image: np.ndarray
    labels: np.ndarray

    @property
    def num_objects(self) -> int:
        return int(self.labels.max())

    def mask(self, index: int) -> np.ndarray:
        """HxW bool mask of object ``index`` (0-based)."""
        return self.labels == index + 1

    def masks(self) -> np.ndarray:
        """NxHxW bool masks of all objects, in drawing order."""
        return self.labels[None] == np.arange(1, self.num_objects + 1)[:, None, None]

    def promptable_objects(self, min_fraction: float = MIN_OBJECT_FRACTION) -> list[int]:
        """Indexes of objects whose visible area is at least ``min_fraction`` of the image."""
        areas = np.bincount(self.labels.ravel(), minlength=self.num_objects + 1)[1:]
        return [int(i) for i in np.flatnonzero(areas >= min_fraction * self.labels.size)]


def generate_scene(
    seed: int | np.random.Generator, config: SceneConfig = SceneConfig(), shape: tuple[int, int] | None = None
) -> Scene:
    """Draw one scene; the same seed always gives the same scene.

    ``shape`` (height, width) fixes the image size instead of drawing it from the config's ranges.
    """
    rng = np.random.default_rng(seed)
    if shape is not None:
        height, width = shape
    else:
        long_side = int(rng.integers(config.long_side[0], config.long_side[1] + 1))
        aspect = float(np.exp(rng.uniform(-np.log(config.max_aspect), np.log(config.max_aspect))))
        if aspect >= 1.0:
            height, width = max(int(round(long_side / aspect)), 32), long_side
        else:
            height, width = long_side, max(int(round(long_side * aspect)), 32)

    background_color = _random_color(rng)
    image = _fill(rng, height, width, background_color, textured=rng.random() < 0.6)
    labels = np.zeros((height, width), np.int32)
    scale = float(np.sqrt(height * width))
    count = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
    for index in range(count):
        radius = scale * rng.uniform(*config.radius)
        center = rng.uniform((0.05 * width, 0.05 * height), (0.95 * width, 0.95 * height))
        shape = _draw_shape(rng, height, width, center, radius, scale, config.hole_probability)
        ys, xs = np.nonzero(shape)
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        color = _contrasting_color(rng, background_color)
        patch = _fill(rng, y1 - y0, x1 - x0, color, textured=rng.random() < 0.5)
        region = shape[y0:y1, x0:x1]
        image[y0:y1, x0:x1][region] = patch[region]
        labels[y0:y1, x0:x1][region] = index + 1

    if rng.random() < config.blur_probability:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=rng.uniform(0.5, 1.2))
    sigma = rng.uniform(*config.noise_sigma)
    noisy = image.astype(np.float32) + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    image = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return Scene(image=image, labels=_relabel(labels))


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber objects 1..N in drawing order, dropping those left with no visible pixel."""
    present = np.flatnonzero(np.bincount(labels.ravel()))
    present = present[present > 0]
    lookup = np.zeros(int(labels.max()) + 1, np.int32)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lookup[labels]


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _contrasting_color(
    rng: np.random.Generator, background: np.ndarray, min_distance: float = 80.0
) -> np.ndarray:
    """A random color at least ``min_distance`` (RGB Euclidean) from ``background`` when one is found."""
    color = _random_color(rng)
    for _ in range(20):
        if np.linalg.norm(color - background) >= min_distance:
            break
        color = _random_color(rng)
    return color


def _fill(rng: np.random.Generator, height: int, width: int, color: np.ndarray, textured: bool) -> np.ndarray:
    """HxWx3 uint8: a flat color, a gradient, or (``textured``) stripes, a checkerboard or smooth noise."""
    second = np.clip(color + rng.normal(0.0, 45.0, 3), 0, 255)
    if not textured:
        weight = np.zeros((height, width), np.float32) if rng.random() < 0.5 else _ramp(rng, height, width)
    else:
        kind = int(rng.integers(3))
        if kind == 0:
            period = rng.uniform(4.0, 24.0)
            weight = 0.5 + 0.5 * np.sin(2 * np.pi * _ramp(rng, height, width, normalize=False) / period)
        elif kind == 1:
            cell = int(rng.integers(3, 16))
            yy, xx = np.mgrid[0:height, 0:width]
            weight = ((yy // cell + xx // cell) % 2).astype(np.float32)
        else:
            cells = int(rng.integers(3, 12))
            coarse = rng.random((cells, cells)).astype(np.float32)
            weight = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    weight = weight.astype(np.float32)[..., None]
    pixels = (1.0 - weight) * color.astype(np.float32) + weight * second.astype(np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _ramp(rng: np.random.Generator, height: int, width: int, normalize: bool = True) -> np.ndarray:
    """Coordinate along a random direction, in pixels, or rescaled to [0, 1] when ``normalize``."""
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    if not normalize:
        return ramp
    span = ramp.max() - ramp.min()
    return (ramp - ramp.min()) / span if span > 0 else np.zeros_like(ramp)


def _draw_shape(
    rng: np.random.Generator,
    height: int,
    width: int,
    center: np.ndarray,
    radius: float,
    scale: float,
    hole_probability: float,
) -> np.ndarray:
    """HxW bool mask of one random shape centred at ``center`` (x, y) with size ``radius``."""
    mask = np.zeros((height, width), np.uint8)
    kind = int(rng.integers(6))
    angle = rng.uniform(0, 2 * np.pi)
    if kind == 0:  # polygon, possibly concave
        vertices = int(rng.integers(3, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
        radii = radius * rng.uniform(0.5, 1.0, vertices)
        _fill_polygon(mask, center, angles, radii)
    elif kind == 1:  # ellipse
        axes = np.array([radius, radius * rng.uniform(0.3, 1.0)])
        _fill_polygon(mask, center, *_ellipse(axes, angle))
    elif kind == 2:  # star
        tips = int(rng.integers(4, 9))
        angles = angle + np.arange(2 * tips) * np.pi / tips
        radii = np.where(np.arange(2 * tips) % 2 == 0, radius, radius * rng.uniform(0.35, 0.65))
        _fill_polygon(mask, center, angles, radii)
    elif kind == 3:  # smooth blob
        angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        radii = np.ones_like(angles)
        for harmonic in range(1, 5):
            radii += rng.uniform(0, 0.25 / harmonic) * np.cos(harmonic * angles + rng.uniform(0, 2 * np.pi))
        _fill_polygon(mask, center, angles, radius * radii / radii.max())
    elif kind == 4:  # thin parts: a dumbbell or a cross of bars
        thickness = max(int(round(scale * rng.uniform(0.025, 0.06))), 2)
        direction = np.array([np.cos(angle), np.sin(angle)])
        ends = [center - radius * direction, center + radius * direction]
        if rng.random() < 0.5:
            for end in ends:
                knob = np.full(2, radius * rng.uniform(0.3, 0.5))
                _fill_polygon(mask, end, *_ellipse(knob, 0.0))
            _draw_bar(mask, ends[0], ends[1], thickness)
        else:
            normal = np.array([-direction[1], direction[0]]) * radius * rng.uniform(0.5, 1.0)
            _draw_bar(mask, ends[0], ends[1], thickness)
            _draw_bar(mask, center - normal, center + normal, thickness)
        hole_probability = 0.0
    else:  # ring
        axes = np.array([radius, radius * rng.uniform(0.6, 1.0)])
        _fill_polygon(mask, center, *_ellipse(axes, angle))
        inner = axes * rng.uniform(0.45, 0.7)
        _fill_polygon(mask, center, *_ellipse(inner, angle), value=0)
        hole_probability = 0.0
    if rng.random() < hole_probability:
        hole = np.full(2, radius) * rng.uniform(0.15, 0.35, 2)
        offset = rng.uniform(-0.2, 0.2, 2) * radius
        _fill_polygon(mask, center + offset, *_ellipse(hole, rng.uniform(0, np.pi)), value=0)
    return mask.astype(bool)


def _ellipse(axes: np.ndarray, rotation: float, points: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Polar (angles, radii) of a rotated ellipse with semi-axes ``axes``."""
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    radii = axes[0] * axes[1] / np.hypot(axes[1] * np.cos(angles), axes[0] * np.sin(angles))
    return angles + rotation, radii


def _fill_polygon(
    mask: np.ndarray, center: np.ndarray, angles: np.ndarray, radii: np.ndarray, value: int = 1
) -> None:
    points = center + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    fixed = np.round(points * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [fixed], color=value, lineType=cv2.LINE_8, shift=_SHIFT)


def _draw_bar(mask: np.ndarray, start: np.ndarray, end: np.ndarray, thickness: int) -> None:
    a = tuple(int(v) for v in np.round(start * (1 << _SHIFT)))
    b = tuple(int(v) for v in np.round(end * (1 << _SHIFT)))
    cv2.line(mask, a, b, color=1, thickness=thickness, lineType=cv2.LINE_8, shift=_SHIFT)


def random_interior_points(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` x 2 float64 (x, y) pixel centres drawn uniformly from the True pixels of ``mask``."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("cannot sample a point inside an empty mask")
    picks = rng.integers(len(ys), size=count)
    return np.stack([xs[picks], ys[picks]], axis=1).astype(np.float64)


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight XYXY box (inclusive pixel indexes, like SAM's ``batched_mask_to_box``) of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("cannot box an empty mask")
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)


def mask_iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(prediction, target).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(prediction, target).sum() / union)
