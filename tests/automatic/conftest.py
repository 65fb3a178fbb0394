"""Fixtures of the segment-everything tests: loaded models and synthetic scenes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from samdeploy.sam.model import DEFAULT_MODEL


def make_scene(height: int, width: int, seed: int = 0, shapes: int = 12) -> np.ndarray:
    """HxWx3 uint8: flat-coloured discs and rectangles on a gradient, so a trained model finds objects."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.stack(
        [xx * 200 // max(width, 1), yy * 200 // max(height, 1), np.full_like(xx, 60)], axis=-1
    ).astype(np.uint8)
    for k in range(shapes):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        r = rng.integers(max(3, min(height, width) // 20), max(4, min(height, width) // 4))
        region = (
            (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            if k % 2
            else (abs(yy - cy) < r) & (abs(xx - cx) < r // 2 + 2)
        )
        image[region] = rng.integers(0, 256, 3)
    return image


@pytest.fixture(scope="module")
def tiny_model(tiny_package):
    from samdeploy import load_model

    with load_model(tiny_package, cache_mb=0) as model:
        yield model


@pytest.fixture(scope="module")
def default_package() -> Path:
    if not (DEFAULT_MODEL / "model.json").is_file():
        pytest.skip("the embedded default model is not in this checkout yet")
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def scene() -> Callable[..., np.ndarray]:
    """``scene(height, width, seed=0)``: a synthetic HxWx3 uint8 picture of flat shapes."""
    return make_scene
