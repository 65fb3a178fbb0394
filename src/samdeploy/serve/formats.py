"""One boolean mask -> the JSON the API returns: score, area, bbox and the chosen encoding.

Formats: ``rle`` (COCO compressed RLE, pycocotools), ``polygons`` (outer contours by OpenCV's
``findContours``, simplified by Douglas-Peucker within ``tolerance`` pixels; holes are not
represented, as in COCO polygons), ``png`` (base64 PNG, mode L, 255 inside, full image size) and
``crop`` (the bbox and a base64 PNG of the mask inside it only).
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import cv2
import numpy as np

from samdeploy.sam.results import coco_rle, mask_bbox, mask_png

Format = Literal["rle", "polygons", "png", "crop"]
FORMATS: tuple[str, ...] = ("rle", "polygons", "png", "crop")


def polygons(mask: np.ndarray, tolerance: float) -> list[list[int]]:
    """HxW bool -> outer contours as flat ``[x0, y0, x1, y1, ...]`` pixel lists (pixel centres).

    ``tolerance`` 0 keeps every boundary pixel (filling the polygons gives back the mask with its
    holes filled); larger values drop points within that many pixels of the simplified outline.
    Contours of fewer than three points after simplification (single pixels, thin lines) are kept
    only when ``tolerance`` is 0.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    result = []
    for contour in contours:
        if tolerance > 0:
            contour = cv2.approxPolyDP(contour, tolerance, True)
            if len(contour) < 3:
                continue
        result.append(contour.reshape(-1).astype(int).tolist())
    return result


def _b64_png(mask: np.ndarray) -> str:
    return base64.b64encode(mask_png(mask)).decode("ascii")


def mask_json(mask: np.ndarray, score: float, fmt: Format, tolerance: float = 1.0) -> dict[str, Any]:
    """The API's ``<mask>`` object for an HxW bool mask and its predicted IoU ``score``."""
    bbox = mask_bbox(mask)
    out: dict[str, Any] = {"score": float(score), "area": int(np.count_nonzero(mask)), "bbox": bbox}
    if fmt == "rle":
        out["rle"] = coco_rle(mask)
    elif fmt == "polygons":
        out["polygons"] = polygons(mask, tolerance)
    elif fmt == "png":
        out["png"] = _b64_png(mask)
    elif fmt == "crop":
        x, y, w, h = bbox
        # An empty mask has no crop to draw: its bbox is [0, 0, 0, 0] and "png" is left out.
        out["crop"] = {"bbox": bbox, "png": _b64_png(mask[y : y + h, x : x + w]) if w and h else None}
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return out
