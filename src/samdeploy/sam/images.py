"""Turning image files and arrays into the HxWx3 uint8 RGB arrays SAM takes.

Files are read with Pillow: JPEG, PNG, WebP, TIFF and BMP are tested (other formats Pillow reads
work too; multi-frame files give their first frame). Conversions:

- EXIF orientation is applied, so the mask lines up with the image as viewers show it.
- Grayscale (``L``, ``1``) is repeated to three channels; palette images are expanded.
- 16-bit images (``I;16``, ``I``) are scaled to 8 bits by ``round(v / 257)`` (65535 -> 255);
  32-bit float images (``F``) are clipped to [0, 255].
- Alpha is **dropped**, not composited: the colour channels are kept as stored. This is what
  ``cv2.imread`` and ``Image.convert("RGB")`` do, so a mask matches the one a segment_anything
  script would compute from the same file.

Every problem raises :class:`~samdeploy.errors.ImageError` with a one-line message.
"""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from samdeploy import limits
from samdeploy.errors import ImageError, ImageLimitError

#: Default limit on width x height of an image file (a decompression-bomb guard): 100 megapixels.
#: Raise it with ``load_image(..., max_pixels=...)`` or ``--max-pixels``; ``None`` or ``0`` mean
#: the hard ceiling :data:`samdeploy.limits.PIXELS_CEILING` (500 megapixels), never "unbounded".
DEFAULT_MAX_PIXELS = limits.MAX_PIXELS.value

#: Pixels converted at once: a strip of rows this large is the only temporary besides the
#: decoded image and the output, so conversions add a bounded amount (~6 MB) whatever the size.
STRIP_PIXELS = 1 << 20

# Pillow has its own process-wide bomb check; samdeploy replaces it with ``max_pixels``, which
# means switching Pillow's off while a header is parsed. The lock keeps that switch local.
_PILLOW_LIMIT_LOCK = threading.Lock()

# EXIF orientation -> the numpy view that shows the image upright (Pillow's exif_transpose table:
# 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE,
# 8 ROTATE_90), applied after conversion so no second full-size Pillow image is made.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def load_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, EXIF orientation applied.

    ``max_pixels`` bounds width x height before any pixel is decoded (``None`` or 0: the hard
    ceiling of :data:`samdeploy.limits.PIXELS_CEILING`). Decoding then takes at most about 7
    bytes per pixel at its peak (see docs/security.md). Raises :class:`ImageError` for a missing,
    empty, truncated or non-image file (:class:`ImageLimitError` for one over the limit) and
    :class:`~samdeploy.errors.OptionError` for a ``max_pixels`` out of range.
    """
    limit = limits.resolve_max_pixels(max_pixels)
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if not path.is_file():  # a folder, a FIFO, a device: never opened
        raise ImageError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"image file is empty: {path}")
    try:
        with open(path, "rb") as handle:
            return _decode(handle, str(path), limit, max_pixels)
    except OSError as exc:  # opening it (decoding errors are ImageErrors already)
        raise ImageError(f"cannot read image {path}: {exc.strerror or exc}") from None


def decode_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str = "image") -> np.ndarray:
    """:func:`load_image` for an encoded image held in memory (an upload); ``name`` is for messages."""
    limit = limits.resolve_max_pixels(max_pixels)
    if not data:
        raise ImageError(f"{name} is empty")
    return _decode(io.BytesIO(data), name, limit, max_pixels)


def _decode(handle: BinaryIO, name: str, limit: int, asked: int | None) -> np.ndarray:
    try:
        with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(handle)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise ImageError(f"not an image, or a format Pillow cannot read: {name}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read image {name} (truncated or corrupt?): {exc}") from None
    with image:
        width, height = image.size
        if width * height > limit:
            how = (
                "raise the limit (max_pixels / --max-pixels) if the file is trusted"
                if asked
                else "the hard ceiling, which no setting raises"
            )
            raise ImageLimitError(
                f"image {name} has {width}x{height} = {width * height:,} pixels, more than the limit of"
                f" {limit:,}; {how}"
            )
        if width == 0 or height == 0:
            raise ImageError(f"image {name} is empty ({width}x{height})")
        try:
            image.load()  # the decoded image: at most 4 bytes per pixel in Pillow's memory
            orientation = image.getexif().get(0x0112, 1)  # after load: a PNG may put it after the pixels
            rgb = pil_to_rgb(image)
        except (OSError, SyntaxError, ValueError, MemoryError, Image.DecompressionBombError) as exc:
            raise ImageError(f"cannot read image {name} (truncated or corrupt?): {exc}") from None
    if orientation in _ORIENT:
        rgb = np.ascontiguousarray(_ORIENT[orientation](rgb))
    return rgb


def _strip_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert one Pillow image (a strip of rows) of any mode to hxWx3 uint8 RGB."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        gray = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.rint(np.clip(np.asarray(image, dtype=np.float64), 0, 255)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns if a transparent palette goes straight to RGB
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A Pillow image of any mode -> HxWx3 uint8 RGB (see the module docs for each conversion).

    Converted in strips of about :data:`STRIP_PIXELS` pixels into one preallocated array, so the
    memory a conversion adds is the 3-byte-per-pixel output and one strip (a 1-bit image does not
    pass through a full-size RGB Pillow copy and a full-size numpy copy of it).
    """
    width, height = image.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        strip = image if (top, bottom) == (0, height) else image.crop((0, top, width, bottom))
        out[top:bottom] = _strip_to_rgb(strip)
    return out


def as_rgb_array(image: np.ndarray, image_format: str = "RGB") -> np.ndarray:
    """Validate an image array and return it as HxWx3 uint8 in RGB order.

    Accepts HxWx3 (the official contract), and for convenience HxW / HxWx1 grayscale and HxWx4
    (alpha dropped). ``image_format`` "BGR" reverses the colour channels (as the official predictor
    does for BGR input, e.g. from ``cv2.imread``). An array over the pixel ceiling
    (:data:`samdeploy.limits.PIXELS_CEILING`) raises :class:`ImageLimitError`.
    """
    if image_format not in ("RGB", "BGR"):
        raise ImageError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image must be a numpy array (HxWx3 uint8), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must have dtype uint8 (pixel values 0..255), got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ImageError(f"image must be HxWx3 (or HxW, HxWx1, HxWx4), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"image is empty: shape {image.shape}")
    limits.check(image.shape[0] * image.shape[1], limits.PIXELS_CEILING, "image array", ImageLimitError)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    image = image[..., :3]
    if image_format == "BGR":
        image = image[..., ::-1]
    return np.ascontiguousarray(image)
