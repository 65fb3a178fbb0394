"""What is particular to an upload: finding the image file in a request, and naming it in messages.

Decoding is :func:`samdeploy.sam.images.decode_image`, the same as the command line and the
Python API (pixel limit checked from the header before any pixel is decoded, bounded memory,
EXIF orientation, grayscale, 16-bit, alpha dropped), so a bad file gets the same sentence
everywhere. The body's byte limit is enforced while it is read, by
:class:`samdeploy.serve.middleware.BodyLimit`.
"""

from __future__ import annotations

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request

from samdeploy.errors import ImageError
from samdeploy.sam.images import decode_image

#: How messages name an uploaded file.
UPLOAD_NAME = "upload"


async def read_upload(request: Request) -> bytes:
    """The image file of a request: its raw body, or the multipart field ``file``.

    The body arrives through the body limit, so a body over it raises 413 while it is read.
    """
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ImageError("a multipart upload needs the image in a file field named 'file'")
        return await upload.read()
    return await request.body()


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """Uploaded bytes -> HxWx3 uint8 RGB: :func:`decode_image` with the server's pixel limit.

    :class:`~samdeploy.errors.ImageError` (400) for an empty, corrupt or non-image body,
    :class:`~samdeploy.errors.ImageLimitError` (413) beyond ``max_pixels``.
    """
    return decode_image(data, max_pixels=max_pixels, name=UPLOAD_NAME)
