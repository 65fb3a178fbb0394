"""The numpy transforms against the official torch code, on many image sizes."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from segment_anything.modeling.sam import Sam  # noqa: E402
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

from samdeploy.errors import ImageError  # noqa: E402
from samdeploy.sam.transforms import (  # noqa: E402
    BandedMatrix,
    MaskGeometry,
    MaskResize,
    apply_boxes,
    apply_coords,
    bilinear_matrix,
    normalize_and_pad,
    opencv_matches_torch,
    postprocess_masks,
    preprocess_shape,
    resize_longest_side,
)

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
SIZES = [
    (480, 640),
    (640, 480),
    (1, 7),
    (7, 1),
    (1, 1000),
    (333, 333),
    (1023, 1025),
    (4100, 3001),
    (17, 2000),
]


def _official_sam(image_size: int) -> SimpleNamespace:
    """Enough of a ``Sam`` for its ``preprocess`` and ``postprocess_masks`` methods."""
    return SimpleNamespace(
        image_encoder=SimpleNamespace(img_size=image_size),
        pixel_mean=torch.tensor(MEAN).view(-1, 1, 1),
        pixel_std=torch.tensor(STD).view(-1, 1, 1),
    )


@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize("image_size", [1024, 256])
def test_preprocess_is_bit_identical(height: int, width: int, image_size: int) -> None:
    rng = np.random.default_rng(height * 7 + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if min(preprocess_shape(height, width, image_size)) == 0:
        with pytest.raises(ImageError, match="too thin"):
            resize_longest_side(image, image_size)
        return
    official_resized = ResizeLongestSide(image_size).apply_image(image)
    resized = resize_longest_side(image, image_size)
    np.testing.assert_array_equal(resized, official_resized)
    official = Sam.preprocess(
        _official_sam(image_size), torch.as_tensor(official_resized).permute(2, 0, 1).contiguous()[None]
    )
    ours = normalize_and_pad(resized, MEAN, STD, image_size)
    assert ours.dtype == np.float32 and ours.shape == (1, 3, image_size, image_size)
    np.testing.assert_array_equal(ours, official.numpy())


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_coords_and_boxes_match(height: int, width: int) -> None:
    transform = ResizeLongestSide(1024)
    rng = np.random.default_rng(0)
    points = rng.uniform(0, [width, height], (5, 2))
    np.testing.assert_array_equal(
        apply_coords(points, (height, width), 1024), transform.apply_coords(points, (height, width))
    )
    boxes = rng.uniform(0, [width, height, width, height], (3, 4))
    np.testing.assert_array_equal(
        apply_boxes(boxes, (height, width), 1024), transform.apply_boxes(boxes, (height, width))
    )


@pytest.mark.parametrize(
    ("in_size", "out_size"), [(256, 1024), (1024, 480), (5, 1), (1, 9), (700, 4100), (256, 256)]
)
def test_bilinear_matrix_matches_torch(in_size: int, out_size: int) -> None:
    x = np.random.default_rng(in_size).standard_normal((in_size, 3)).astype(np.float32)
    # Resizing only the rows of an in x 3 image: the column pass (3 -> 3) is the identity.
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None, None], size=(out_size, 3), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    # Source positions are float32 in PyTorch: at 4000 px one ulp of a position is 6e-5, so the
    # weights agree to that, not to the last bit.
    np.testing.assert_allclose(bilinear_matrix(in_size, out_size) @ x, expected, atol=1e-4)
    np.testing.assert_allclose(bilinear_matrix(in_size, out_size).sum(axis=1), 1.0, atol=1e-6)


def _postprocessed(
    height: int, width: int, seed: int
) -> tuple[np.ndarray, MaskGeometry, np.ndarray, np.ndarray]:
    """Random 2x3 low-res logits, their geometry for an HxW picture at S = 1024, and the logits
    at the picture's size by ``Sam.postprocess_masks`` and by ours (shape and dtype checked)."""
    low_res = (np.random.default_rng(seed).standard_normal((2, 3, 256, 256)) * 4).astype(np.float32)
    geometry = MaskGeometry.for_image((height, width), 1024, (256, 256))
    official = Sam.postprocess_masks(
        _official_sam(1024), torch.from_numpy(low_res), geometry.input_size, (height, width)
    ).numpy()
    ours = postprocess_masks(low_res, geometry)
    assert ours.shape == (2, 3, height, width) and ours.dtype == np.float32
    return low_res, geometry, official, ours


@pytest.mark.parametrize(("height", "width"), SIZES[:-2] + [(4032, 3024)])
def test_postprocess_matches_official(height: int, width: int) -> None:
    _, _, official, ours = _postprocessed(height, width, seed=1)
    np.testing.assert_allclose(ours, official, atol=2e-4, rtol=0)
    assert np.mean((ours > 0) != (official > 0)) < 1e-4


@pytest.mark.parametrize(
    ("in_size", "out_size", "same"),
    [
        (256, 1024, True),
        (64, 256, True),
        (192, 768, True),
        (1024, 2048, True),
        (1024, 512, True),
        (768, 768, True),
        (1, 4, True),
        (256, 768, False),
        (1024, 4032, False),
        (768, 3000, False),
        (1024, 640, False),
    ],
)
def test_opencv_matches_torch_only_where_its_positions_are_pytorchs(
    in_size: int, out_size: int, same: bool
) -> None:
    """OpenCV's source positions are PyTorch's (to the bit) for power-of-two ratios and equal
    sizes; where they are not, they differ in the last float32 bits and the products are used."""
    assert opencv_matches_torch(in_size, out_size) == same
    if same:
        x = np.random.default_rng(in_size).standard_normal((in_size, 3)).astype(np.float32)
        opencv = cv2.resize(x, (3, out_size), interpolation=cv2.INTER_LINEAR)
        official = torch.nn.functional.interpolate(
            torch.from_numpy(x)[None, None], size=(out_size, 3), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        np.testing.assert_allclose(opencv, official, atol=1e-6, rtol=0)


# Long side S * 2^k (and so the short side too) for S = 1024: every step in OpenCV.
OPENCV_SIZES = [(768, 1024), (1536, 2048), (512, 384), (2048, 2048), (1024, 1), (96, 128)]


@pytest.mark.parametrize(("height", "width"), OPENCV_SIZES)
def test_postprocess_in_opencv_matches_official(height: int, width: int) -> None:
    low_res, geometry, official, ours = _postprocessed(height, width, seed=height + width)
    assert geometry.resize().in_opencv
    # The same weights in another order of summation: float32 rounding only.
    np.testing.assert_allclose(ours, official, atol=1e-5, rtol=0)
    masks = postprocess_masks(low_res, geometry, 0.0)
    np.testing.assert_array_equal(masks, ours > 0)
    assert np.mean(masks != (official > 0)) < 1e-5


def test_sam2_upscale_in_opencv_matches_official() -> None:
    from samdeploy.sam2.transforms import upscale_masks

    low_res = (np.random.default_rng(4).standard_normal((1, 3, 256, 256)) * 4).astype(np.float32)
    assert MaskResize.direct((256, 256), (1024, 512)).in_opencv
    logits = upscale_masks(low_res, (1024, 512))
    official = torch.nn.functional.interpolate(
        torch.from_numpy(low_res), (1024, 512), mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(logits, official, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(upscale_masks(low_res, (1024, 512), 0.0), logits > 0)


@pytest.mark.parametrize(("height", "width"), [(480, 640), (1, 7), (1023, 1025), (4032, 3024)])
@pytest.mark.parametrize("above", [0.0, -1.5])
def test_postprocess_to_bool_masks_equals_thresholding_the_logits(
    height: int, width: int, above: float
) -> None:
    """With ``above`` the masks come a block of rows at a time, never as full-size logits: the same
    products, so the same bits as thresholding the float logits (several blocks at 4032 rows)."""
    rng = np.random.default_rng(2)
    low_res = (rng.standard_normal((2, 3, 256, 256)) * 4).astype(np.float32)
    low_res[0, 0] = 1.0  # one mask all inside, one all outside
    low_res[0, 1] = -1.0
    geometry = MaskGeometry.for_image((height, width), 1024, (256, 256))
    masks = postprocess_masks(low_res, geometry, above)
    assert masks.dtype == np.bool_ and masks.shape == (2, 3, height, width)
    np.testing.assert_array_equal(masks, postprocess_masks(low_res, geometry) > np.float32(above))
    assert masks[0, 0].all() == (above < 1.0) and masks[0, 1].any() == (above < -1.0)


@pytest.mark.parametrize("seed", range(6))
def test_tiles_threshold_and_count_as_the_full_logits(seed: int) -> None:
    """``threshold`` and ``count_above`` fill or count the tiles whose low-res bounds are past every
    level and make the rest by the products: the masks and counts of the full-size logits, bit for
    bit, on blobs (mostly known tiles), noise (mostly made), constant, NaN and leading axes, SAM's
    and SAM 2's geometries."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    blobs = [
        (rng.uniform(5, 90) - np.hypot(yy - rng.uniform(0, 256), xx - rng.uniform(0, 256))) for _ in range(3)
    ]
    low_res = np.stack([*blobs, rng.standard_normal((256, 256)) * 3, np.full((256, 256), -20.0)])
    low_res = low_res.astype(np.float32).reshape(1, 5, 256, 256)
    low_res[0, 1, 40:50, 60:70] = np.nan
    size = (int(rng.integers(50, 3000)), int(rng.integers(50, 3000)))
    resize = (
        MaskResize.direct((256, 256), size)
        if seed % 2
        else MaskGeometry.for_image(size, 1024, (256, 256)).resize()
    )
    logits = resize(low_res, products=True)
    np.testing.assert_array_equal(resize.threshold(low_res, 0.0), logits > 0)
    cuts = (np.float32(1.0), np.float32(-1.0), np.float32(0.25))
    counts = resize.count_above(low_res, cuts)
    np.testing.assert_array_equal(counts, np.stack([(logits > cut).sum((-2, -1)) for cut in cuts], -1))
    assert resize.threshold(low_res[:, :0], 0.0).shape == (1, 0, *size)
    out = np.ones((1, 5, *size), dtype=bool)
    assert resize.threshold(low_res, 0.0, out=out) is out
    np.testing.assert_array_equal(out, logits > 0)
    with pytest.raises(ValueError, match="the masks are C-contiguous bool"):
        resize.threshold(low_res, 0.0, out=np.ones((1, 5, size[0], size[1] + 1), dtype=bool)[..., 1:])
    assert resize.count_above(low_res[:, :0], cuts).shape == (1, 0, 3)
    # Counted first, then some masks made as tiles, none written whole (the generator's way): the
    # masks, boxes and RLEs of the full masks, counts for the cuts asked again, in a crop too.
    from samdeploy.sam.amg import batched_mask_to_box, mask_to_rle

    tiling = resize.tiling(low_res)
    np.testing.assert_array_equal(tiling.count_above(cuts), counts[0])
    chosen = np.array([4, 0, 3, 1])  # the empty mask, a blob, the noise, the blob with NaN
    tiled, chosen_counts = tiling.make_tiled(0.0, cuts[:2], masks=chosen)
    expected = logits[0, chosen] > 0
    np.testing.assert_array_equal(chosen_counts, counts[0, chosen, :2])
    np.testing.assert_array_equal(tiled.to_masks(), expected)
    np.testing.assert_array_equal(tiled.boxes, batched_mask_to_box(expected))
    assert tiled.to_rle() == mask_to_rle(expected)
    assert len(tiled.select([2, 0])) == 2
    assert tiled.select([2, 0]).to_rle() == mask_to_rle(expected[[2, 0]])
    for crop in ([0, 0], [3, 0], [0, 5], [7, 2]):  # the frame at the picture's top, left, inside
        height, width = size[0] + crop[1] + (crop[1] % 2), size[1] + crop[0]
        picture = np.zeros((len(chosen), height, width), dtype=bool)
        picture[:, crop[1] : crop[1] + size[0], crop[0] : crop[0] + size[1]] = expected
        moved = tiled.uncrop([*crop, crop[0] + size[1], crop[1] + size[0]], height, width)
        assert moved.to_rle() == mask_to_rle(picture)
        np.testing.assert_array_equal(moved.to_masks(), picture)
    empty, none_counted = tiling.make_tiled(0.0, cuts, masks=chosen[:0])
    assert len(empty) == 0 and empty.to_rle() == [] and none_counted.shape == (0, 3)


def test_sam2_upscale_to_bool_masks_equals_thresholding_the_logits() -> None:
    from samdeploy.sam2.transforms import upscale_masks

    low_res = (np.random.default_rng(3).standard_normal((1, 3, 256, 256)) * 4).astype(np.float32)
    logits = upscale_masks(low_res, (3000, 2000))
    official = torch.nn.functional.interpolate(
        torch.from_numpy(low_res), (3000, 2000), mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(logits, official, atol=2e-4, rtol=0)
    masks = upscale_masks(low_res, (3000, 2000), 0.5)
    assert masks.dtype == np.bool_
    np.testing.assert_array_equal(masks, logits > np.float32(0.5))


def test_upscaling_runs_blas_on_one_thread_and_restores_it(monkeypatch) -> None:
    """The banded products run with numpy's BLAS on one thread (its spinning threads slowed the next
    decoder call); the process's own setting is back afterwards, also after nested blocks."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from samdeploy.sam import blas
    from samdeploy.sam.blas import single_threaded_blas

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    seen: list[list[int]] = []
    original = BandedMatrix.apply

    def spy(self, x, *args):
        seen.append(blas_threads())
        return original(self, x, *args)

    monkeypatch.setattr(BandedMatrix, "apply", spy)
    geometry = MaskGeometry.for_image((300, 500), 1024, (256, 256))
    low_res = np.random.default_rng(0).standard_normal((1, 3, 256, 256)).astype(np.float32)
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        if not before or min(before) < 2:
            pytest.skip("numpy's BLAS runs on one thread here already")
        with single_threaded_blas():
            postprocess_masks(low_res, geometry)
            assert blas_threads() == [1] * len(before)  # the inner block left the outer limit alone
        assert seen == [[1] * len(before)] * 2
        assert blas_threads() == before and blas._depth == 0
        postprocess_masks(low_res, geometry)
        assert seen[-1] == [1] * len(before) and blas_threads() == before
        # Bool masks: the height pass runs block by block (BandedMatrix.products), or tile by tile
        # on large pictures (BandedMatrix.block_product), also on one thread.
        original_products, original_block = BandedMatrix.products, BandedMatrix.block_product

        def products_spy(self, x):
            for block in original_products(self, x):
                seen.append(blas_threads())
                yield block

        def block_spy(self, block, x):
            seen.append(blas_threads())
            return original_block(self, block, x)

        monkeypatch.setattr(BandedMatrix, "products", products_spy)
        monkeypatch.setattr(BandedMatrix, "block_product", block_spy)
        for size in ((300, 500), (1500, 2000)):
            count = len(seen)
            geometry = MaskGeometry.for_image(size, 1024, (256, 256))
            assert geometry.resize().tiles_pay(3) == (size == (1500, 2000))
            postprocess_masks(low_res, geometry, 0.0)
            assert len(seen) > count + 2 and all(threads == [1] * len(before) for threads in seen[count:])
            assert blas_threads() == before and blas._depth == 0
