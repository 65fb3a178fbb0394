"""COCO RLE of a mask, as the server, the CLI and the batch jobs write it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from samdeploy.sam.results import coco_rle


def _reference(mask: np.ndarray) -> dict:
    """pycocotools' own encoding of a column-major copy."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    density=st.sampled_from([0.0, 0.02, 0.5, 0.98, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_coco_rle_is_pycocotools_encoding(height: int, width: int, density: float, seed: int) -> None:
    """The runs found in the row-major mask give pycocotools' string exactly, and decode back to
    the mask: empty and full masks, single rows and columns, runs across column ends."""
    mask = np.random.default_rng(seed).random((height, width)) < density
    rle = coco_rle(mask)
    assert rle == _reference(mask)
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    np.testing.assert_array_equal(decoded.astype(bool), mask)


@pytest.mark.parametrize("shape", [(768, 1024), (1, 5000), (5000, 1)])
def test_coco_rle_of_a_shape_on_a_large_picture(shape: tuple[int, int]) -> None:
    """A disc with scattered single pixels (many short runs), the size of a click's answer."""
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    mask = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2) < (max(shape) / 3) ** 2
    mask ^= np.random.default_rng(0).random(shape) < 0.001
    assert coco_rle(mask) == _reference(mask)
    assert coco_rle(mask.astype(np.uint8)) == _reference(mask)  # 0/1 integers too
