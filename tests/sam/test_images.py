"""Image files and arrays -> HxWx3 uint8 RGB, and every bad file -> one ImageError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samdeploy.errors import ImageError
from samdeploy.sam.images import as_rgb_array, load_image


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tiff", ".webp"])
def test_lossless_formats_round_trip(tmp_path: Path, rgb: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"a{suffix}"
    Image.fromarray(rgb).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    np.testing.assert_array_equal(load_image(path), rgb)


def test_jpeg_reads_as_rgb(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    image = load_image(tmp_path / "a.jpg")
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path: Path, rgb: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(rgb).save(tmp_path / "a.png", exif=exif)
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), np.rot90(rgb, k=-1))


def test_sixteen_bit_grayscale_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535, 32768]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(image[..., 0], [[0, 1, 255, 128]])
    assert (image == image[..., :1]).all()


def test_palette_grayscale_and_alpha(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    palette = Image.open(tmp_path / "p.png").convert("RGB")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), np.asarray(palette))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_image(tmp_path / "l.png"), np.repeat(rgb[..., :1], 3, axis=2))
    rgba = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])  # fully transparent: colours kept
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)


def test_bad_files(tmp_path: Path, rgb: np.ndarray) -> None:
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "text.png")
    Image.fromarray(rgb).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.jpg")
    big = np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    data = (tmp_path / "big.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # header fine, pixels cut
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.png")


def test_pixel_limit(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with pytest.raises(ImageError, match="more than the limit of 500"):
        load_image(tmp_path / "a.png", max_pixels=500)
    assert load_image(tmp_path / "a.png", max_pixels=600).shape == (20, 30, 3)


def test_pillow_bomb_check_is_replaced_by_ours(tmp_path: Path) -> None:
    big = Image.new("L", (1, 1))
    big.save(tmp_path / "a.png")
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 0  # Pillow would refuse even 1 pixel
    try:
        assert load_image(tmp_path / "a.png").shape == (1, 1, 3)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def test_arrays(rgb: np.ndarray) -> None:
    np.testing.assert_array_equal(as_rgb_array(rgb[..., ::-1], "BGR"), rgb)
    np.testing.assert_array_equal(as_rgb_array(rgb[..., 0]), np.repeat(rgb[..., :1], 3, axis=2))
    np.testing.assert_array_equal(as_rgb_array(np.dstack([rgb, rgb[..., :1]])), rgb)
    for bad, message in [
        (rgb.astype(np.float32), "uint8"),
        (rgb[..., :2], "HxWx3"),
        (rgb[:0], "empty"),
        ([[1]], "numpy array"),
    ]:
        with pytest.raises(ImageError, match=message):
            as_rgb_array(bad)
    with pytest.raises(ImageError, match="image_format"):
        as_rgb_array(rgb, "RGBA")
