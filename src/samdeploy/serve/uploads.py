"""Uploaded bytes -> the HxWx3 uint8 RGB array SAM takes, with the same conversions as
:func:`samdeploy.sam.images.load_image` (EXIF orientation, grayscale, 16-bit, alpha dropped).

The pixel limit is checked from the header, before any pixel is decoded: a decompression bomb
costs a header parse, not its decoded size.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from samdeploy.errors import ImageError
from samdeploy.sam.images import pil_to_rgb
from samdeploy.serve.errors import ImageTooLarge


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an uploaded image file; :class:`ImageError` for an empty, corrupt or non-image body,
    :class:`ImageTooLarge` beyond ``max_pixels`` (width x height)."""
    if not data:
        raise ImageError("the request body is empty: send the image file's bytes")
    try:
        with warnings.catch_warnings():
            # samdeploy's max_pixels replaces Pillow's own bomb check, decided below from the header.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
    except Image.DecompressionBombError as exc:
        # Pillow refuses beyond twice its own limit before the size reaches us: a bomb either way.
        raise ImageTooLarge(f"the image has too many pixels: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image, or a format Pillow cannot read") from None
    except OSError as exc:
        raise ImageError(f"cannot read the image (truncated or corrupt?): {exc}") from None
    with image:
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"the image has {width}x{height} = {width * height:,} pixels, more than this server's"
                f" limit of {max_pixels:,}; send a smaller image"
            )
        try:
            image.load()
            return pil_to_rgb(ImageOps.exif_transpose(image))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(f"cannot read the image (truncated or corrupt?): {exc}") from None
