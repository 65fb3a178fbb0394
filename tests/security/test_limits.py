"""Bounded memory and time: every quantity whose cost grows without bound has a limit
(samdeploy.limits) and a one-line error; images decode in bounded memory."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import samdeploy.sam.images as images
from samdeploy import limits, load_model
from samdeploy.errors import ImageError, ImageLimitError, OptionError, PromptError, PromptLimitError
from samdeploy.sam.automatic import GeneratorOptionError, SamAutomaticMaskGenerator
from samdeploy.sam.images import as_rgb_array, decode_image, load_image
from samdeploy.sam.model import DEFAULT_MODEL, ImageEmbedding
from samdeploy.sam.prompts import validate_prompt


def png_header(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds one empty data chunk: a bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


# -- images --------------------------------------------------------------------------------


@pytest.mark.parametrize("max_pixels", [None, 0])
def test_no_pixel_limit_means_the_ceiling(tmp_path, max_pixels) -> None:
    side = 100_000  # 10 gigapixels: 21.7 GB before the ceiling existed
    (tmp_path / "bomb.png").write_bytes(png_header(side, side))
    with pytest.raises(ImageLimitError, match="more than the limit of 500,000,000; the hard ceiling"):
        load_image(tmp_path / "bomb.png", max_pixels=max_pixels)
    with pytest.raises(ImageLimitError, match="the hard ceiling"):
        decode_image(png_header(side, side), max_pixels=max_pixels)


def test_images_in_memory_decode_like_files(tmp_path) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(decode_image((tmp_path / "a.png").read_bytes()), rgb)
    with pytest.raises(ImageError, match="upload is empty"):
        decode_image(b"", name="upload")
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"hello", name="upload")


def test_pixel_limit_values(tmp_path) -> None:
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    with pytest.raises(OptionError, match="max_pixels must be a positive integer"):
        load_image(tmp_path / "a.png", max_pixels=-1)
    with pytest.raises(OptionError, match="over the ceiling of 500,000,000"):
        load_image(tmp_path / "a.png", max_pixels=10**12)
    with pytest.raises(ImageLimitError, match="raise the limit"):
        load_image(tmp_path / "a.png", max_pixels=599)
    assert load_image(tmp_path / "a.png", max_pixels=600).shape == (20, 30, 3)


def test_arrays_over_the_ceiling_are_refused() -> None:
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (30_000, 20_000, 3))  # a view: no memory
    with pytest.raises(ImageLimitError, match="image array: 600,000,000 pixels is over the limit"):
        as_rgb_array(huge)


def test_one_bit_image_decodes_in_bounded_memory(tmp_path) -> None:
    """A 1-bit PNG compresses to almost nothing; decoding it must not pass through full-size
    temporaries (a full RGB Pillow copy, its bytes, a numpy copy): numpy and Python memory stay
    within the 3-byte-per-pixel output plus one conversion strip."""
    width, height = 4000, 1250  # 5 MP
    bits = Image.new("1", (width, height))
    bits.paste(1, (0, 0, width // 2, height))
    bits.save(tmp_path / "bits.png")
    tracemalloc.start()
    try:
        image = load_image(tmp_path / "bits.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.shape == (height, width, 3) and image[0, 0, 0] == 255 and image[0, -1, 0] == 0
    strip = images.STRIP_PIXELS * 3 * 2 + 2**20  # a strip as RGB and its numpy copy; 1 MB slack
    assert peak <= width * height * 3 + strip, peak / (width * height)


def reference_rgb(path: Path) -> np.ndarray:
    """What a whole-image Pillow conversion gives (the conversions of samdeploy.sam.images)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16") or image.mode == "I":
            gray = np.rint(np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257.0).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        if image.mode == "F":
            gray = np.rint(np.clip(np.asarray(image, dtype=np.float64), 0, 255)).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PT", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_strip_conversion_matches_whole_image_conversion(tmp_path, monkeypatch, mode) -> None:
    monkeypatch.setattr(images, "STRIP_PIXELS", 37 * 5)  # several strips, the last one short
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8))
    if mode == "PT":
        image = rgb.convert("P")
        image.info["transparency"] = 3
        suffix = ".png"
    elif mode in ("I;16", "I", "F"):
        values = rng.integers(0, 65536, (23, 37)).astype(np.float64)
        image = (
            Image.fromarray(values.astype(np.uint16))
            if mode == "I;16"
            else Image.fromarray(values).convert(mode)
        )
        suffix = ".tiff"
    else:
        image = rgb.convert(mode)
        suffix = ".tiff" if mode == "CMYK" else ".png"
    path = tmp_path / f"a{suffix}"
    image.save(path, **({"transparency": 3} if mode == "PT" else {}))
    np.testing.assert_array_equal(load_image(path), reference_rgb(path))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_match_pillow(tmp_path, orientation) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    rgb = np.random.default_rng(orientation).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png", exif=exif)
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), reference_rgb(tmp_path / "a.png"))


def test_special_files_are_not_read_as_images(tmp_path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path / "fifo.png")


# -- prompts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"point_coords": np.zeros((257, 2)), "point_labels": np.ones(257)},
            PromptLimitError,
            "points per prompt: 257 points is over the limit of 256",
        ),
        (
            {"box": np.tile([0, 0, 5, 5], (257, 1))},
            PromptLimitError,
            "boxes: 257 prompts is over the limit of 256",
        ),
        (
            {"point_coords": np.zeros((100, 41, 2)), "point_labels": np.ones((100, 41))},
            PromptLimitError,
            "points per call: 4,100 points is over the limit of 4,096",
        ),
        (
            {
                "point_coords": np.zeros((20, 2)),
                "point_labels": np.ones(20),
                "box": np.tile([0, 0, 5, 5], (210, 1)),
            },
            PromptLimitError,
            "points per call",
        ),
        (
            {"point_coords": [[1e39, 5]], "point_labels": [1]},
            PromptError,
            "beyond the limit of \\+-16,777,216",
        ),
        ({"box": [0, 0, 1e39, 1e39]}, PromptError, "box has a value of 1e\\+39"),
        ({"mask_input": np.full((1, 256, 256), 1e30)}, PromptError, "mask_input has a value of 1e\\+30"),
        (
            {"mask_input": np.array([[None] * 256] * 256, dtype=object)[None]},
            PromptError,
            "mask_input holds None",
        ),
        ({"mask_input": [None]}, PromptError, "mask_input holds None"),
        ({"point_coords": [[1 + 1j, 2]], "point_labels": [1]}, PromptError, "must be numeric"),
        ({"point_coords": [[1, 2], [3]], "point_labels": [1, 1]}, PromptError, "rectangular"),
    ],
)
def test_prompt_limits(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        validate_prompt(**kwargs)


def test_limits_admit_what_they_name() -> None:
    n = limits.MAX_POINTS.value
    prompt = validate_prompt(np.zeros((n, 2)), np.ones(n))
    assert prompt.point_coords.shape == (1, n, 2)
    batch = limits.MAX_CALL_POINTS.value // n
    assert validate_prompt(np.zeros((batch, n, 2)), np.ones((batch, n))).batch == batch
    bound = limits.MAX_COORDINATE.value
    assert validate_prompt(box=[-bound, -bound, bound, bound]).boxes is not None


def test_mask_output_limit_is_checked_before_decoding() -> None:
    with load_model(DEFAULT_MODEL) as model:
        size = model.image_size // 16 * 2  # any embedding: the check comes first
        embedding = ImageEmbedding(np.zeros((1, 128, size, size), np.float32), (50_000, 50_000), (256, 256))
        with pytest.raises(
            PromptLimitError,
            match=r"mask pixels per call \(1 prompt\(s\) x 1 mask\(s\) of 50000x50000\): 2,500,000,000 pixels is over",
        ):
            model.decode(embedding, validate_prompt([[5, 5]], [1]), multimask_output=False)


# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cache_mb": -1}, "cache_mb must be 0 \\(no cache\\) or a positive number of MiB, got -1"),
        ({"cache_mb": float("nan")}, "cache_mb must be 0"),
        ({"cache_mb": "64"}, "cache_mb must be a number of MiB"),
        ({"cache_mb": 1e12}, "cache_mb: .* is over the limit"),
        ({"threads": 1000}, "threads is 1000, more than the .* CPUs this process may use"),
        ({"threads": 0}, "threads must be a positive integer"),
        ({"threads": -2}, "threads must be a positive integer"),
        ({"threads": True}, "threads must be a positive integer"),
        ({"threads": 1.5}, "threads must be a positive integer"),
    ],
)
def test_bad_options_are_refused_before_loading(kwargs, message) -> None:
    with pytest.raises(OptionError, match=message):
        load_model(DEFAULT_MODEL, **kwargs)


def test_threads_up_to_the_cpus_are_accepted() -> None:
    load_model(DEFAULT_MODEL, threads=limits.max_threads()).close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points_per_side": 100_000}, "points_per_side: 100,000 is over the limit of 256"),
        ({"crop_n_layers": 10}, "crop_n_layers: 10 is over the limit of 3"),
        ({"points_per_batch": 100_000}, "points_per_batch: 100,000 is over the limit of 256"),
        (
            {"points_per_side": 256, "crop_n_layers": 3},
            "points per image: 5,570,560 points is over the limit of 1,048,576",
        ),
        ({"point_grids": [np.zeros((2**21, 2))], "points_per_side": None}, "points per image"),
        ({"pred_iou_thresh": float("nan")}, "pred_iou_thresh must be a finite number"),
        ({"stability_score_offset": float("inf")}, "stability_score_offset must be a finite number"),
    ],
)
def test_generator_limits(kwargs, message) -> None:
    with pytest.raises(GeneratorOptionError, match=message):
        SamAutomaticMaskGenerator(DEFAULT_MODEL, **kwargs)
