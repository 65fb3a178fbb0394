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

import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from samdeploy.errors import ImageError

#: Default limit on width x height of an image file (a decompression-bomb guard): 100 megapixels,
#: about 300 MB decoded. Raise it with ``load_image(..., max_pixels=...)`` or ``--max-pixels``.
DEFAULT_MAX_PIXELS = 100_000_000

# Pillow has its own process-wide bomb check; samdeploy replaces it with ``max_pixels``, which
# means switching Pillow's off while a header is parsed. The lock keeps that switch local.
_PILLOW_LIMIT_LOCK = threading.Lock()


def load_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, EXIF orientation applied.

    ``max_pixels`` bounds width x height before any pixel is decoded (None: no limit).
    Raises :class:`ImageError` for a missing, empty, truncated, oversized or non-image file.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if not path.is_file():
        raise ImageError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"image file is empty: {path}")
    try:
        with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise ImageError(f"not an image, or a format Pillow cannot read: {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read image {path} (truncated or corrupt?): {exc}") from None
    with image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageError(
                f"image {path} has {width}x{height} = {width * height:,} pixels, more than the limit of"
                f" {max_pixels:,}; raise the limit (max_pixels / --max-pixels) if the file is trusted"
            )
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
            return pil_to_rgb(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(f"cannot read image {path} (truncated or corrupt?): {exc}") from None


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A Pillow image of any mode -> HxWx3 uint8 RGB (see the module docs for each conversion)."""
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


def as_rgb_array(image: np.ndarray, image_format: str = "RGB") -> np.ndarray:
    """Validate an image array and return it as HxWx3 uint8 in RGB order.

    Accepts HxWx3 (the official contract), and for convenience HxW / HxWx1 grayscale and HxWx4
    (alpha dropped). ``image_format`` "BGR" reverses the colour channels (as the official predictor
    does for BGR input, e.g. from ``cv2.imread``).
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
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    image = image[..., :3]
    if image_format == "BGR":
        image = image[..., ::-1]
    return np.ascontiguousarray(image)
