"""Request and response bodies. Inputs refuse unknown fields; outputs are what the routes promise.

Coordinates are pixels of the original image: points XY, boxes XYXY, bboxes XYWH (COCO).
Range checks that need the image or the server's limits (points inside the image, at most
``max_points``) are made by the routes, with the same messages as the Python API.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Point = tuple[float, float]
Box = tuple[float, float, float, float]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptIn(_Input):
    """One prompt, as ``SamPredictor.predict`` takes it."""

    points: list[Point] | None = Field(None, description="Nx2 XY pixels")
    labels: list[int] | None = Field(None, description="N labels: 1 foreground, 0 background")
    box: Box | None = Field(None, description="XYXY pixels")
    boxes: list[Box] | None = Field(None, description="a batch of XYXY boxes, answered in one decoder call")
    multimask: bool = Field(True, description="three masks (ambiguous prompts) or one")
    mask_input: str | None = Field(None, description="logits_handle of an earlier answer on this image")


class SegmentIn(PromptIn):
    """One prompt, or ``prompts``: a list answered together, and the output format."""

    prompts: list[PromptIn] | None = Field(None, description="several prompts in one request")
    format: Literal["rle", "polygons", "png", "crop"] = "rle"
    polygon_tolerance: float = Field(1.0, ge=0.0, le=1000.0, description="pixels (polygons only)")


class EverythingIn(_Input):
    """``SamAutomaticMaskGenerator`` options; omitted ones take the generator's defaults."""

    points_per_side: int | None = Field(None, ge=1, le=128)
    points_per_batch: int | None = Field(None, ge=1, le=1024)
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    stability_score_offset: float | None = None
    box_nms_thresh: float | None = None
    crop_n_layers: int | None = Field(None, ge=0, le=3)
    crop_nms_thresh: float | None = None
    crop_overlap_ratio: float | None = None
    crop_n_points_downscale_factor: int | None = Field(None, ge=1)
    min_mask_region_area: int | None = Field(None, ge=0)


class RleOut(BaseModel):
    size: list[int] = Field(description="[H, W]")
    counts: str = Field(description="COCO compressed RLE (column-major)")


class CropOut(BaseModel):
    bbox: list[int] = Field(description="XYWH")
    png: str | None = Field(None, description="base64 PNG of the mask inside bbox; absent when empty")


class MaskOut(BaseModel):
    score: float = Field(description="the model's predicted IoU")
    area: int = Field(description="pixels in the mask")
    bbox: list[int] = Field(description="XYWH of the mask's pixels; [0, 0, 0, 0] when empty")
    rle: RleOut | None = None
    polygons: list[list[int]] | None = Field(None, description="outer contours, [x0, y0, x1, y1, ...]")
    png: str | None = Field(None, description="base64 PNG, mode L, 255 inside, full image size")
    crop: CropOut | None = None


class SegmentOut(BaseModel):
    masks: list[MaskOut] = Field(description="C masks per prompt (3 with multimask, else 1); boxes: B*C")
    best: int = Field(description="index of the highest score")
    logits_handle: str = Field(description="pass as mask_input to refine the best mask")
    width: int
    height: int


class SegmentListOut(BaseModel):
    results: list[SegmentOut]


class ImageOut(BaseModel):
    image_id: str = Field(description="sha256 of the uploaded bytes, hex")
    width: int
    height: int
    model_id: str
    cached: bool = Field(description="the embedding was already cached")


class JobRecord(BaseModel):
    segmentation: RleOut
    area: int
    bbox: list[int] = Field(description="XYWH")
    predicted_iou: float
    stability_score: float
    point_coords: list[list[float]]
    crop_box: list[int] = Field(description="XYWH")


class JobOut(BaseModel):
    job_id: str
    status: Literal["queued", "running", "done", "failed"]
    progress: float = Field(ge=0.0, le=1.0)
    error: str | None = None
    records: list[JobRecord] | None = None


class Health(BaseModel):
    status: str
    detail: dict[str, Any] | None = None
