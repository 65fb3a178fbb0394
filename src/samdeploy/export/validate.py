"""Validation of an exported package: ONNX Runtime against the official PyTorch modules.

The encoder gets a real-looking picture put through the official pre-processing
(``ResizeLongestSide`` + ``Sam.preprocess``). The decoder is checked on several prompt kinds, each
against the official path (``PromptEncoder`` -> ``MaskDecoder.predict_masks`` ->
``Sam.postprocess_masks``), fed the PyTorch embedding so its own error is measured alone; the
end-to-end mask agreement (ONNX encoder + ONNX decoder) is recorded too.

Tolerances (fp32, see docs/export.md) scale with the magnitude of the reference values: random
weights give logits from ~1 (vit_b) to ~100 (tiny models), and float32 error grows with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

# Relative tolerances: max |onnx - torch| / max(1, max |torch|).
TOLERANCES = {
    "embeddings_rel": 1e-3,
    "embeddings_cosine": 0.9999,
    "mask_logits_rel": 1e-3,
    "low_res_logits_rel": 1e-3,
    "iou_predictions_abs": 1e-3,
    "mask_agreement": 0.999,
}

VALIDATION_IMAGE_SIZE = (480, 640)


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A ``HxWx3`` uint8 RGB picture with a gradient sky, textured ground, shapes and noise.

    Deterministic for a seed; stands in for a photograph where none can be shipped.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    v, u = yy / max(height - 1, 1), xx / max(width - 1, 1)
    image = np.stack([60 + 120 * v, 110 + 90 * v, 200 - 60 * u], axis=-1)
    ground = v > 0.62 + 0.05 * np.sin(u * 9)
    image[ground] = np.stack([90 + 40 * np.sin(xx / 7), 120 + 30 * np.cos(yy / 5), 60 + 0 * xx], -1)[ground]
    shapes = [
        ((0.35, 0.3), 0.16, (220, 60, 40)),
        ((0.7, 0.55), 0.12, (40, 180, 90)),
        ((0.2, 0.75), 0.09, (240, 220, 60)),
    ]
    for (cy, cx), radius, colour in shapes:
        inside = (v - cy) ** 2 + ((u - cx) * width / height) ** 2 < radius**2
        shade = 0.75 + 0.25 * (1 - v)
        image[inside] = np.array(colour, np.float32) * shade[inside][:, None]
    box = (v > 0.45) & (v < 0.8) & (u > 0.45) & (u < 0.62)
    image[box] = (30, 30, 120)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Prompt:
    """One validation case in original-image pixels: points ``Nx2`` (x, y), labels ``N``, boxes ``Bx4`` XYXY."""

    name: str
    original_size: tuple[int, int]
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    use_mask_input: bool = False


def _prompts(height: int, width: int) -> list[Prompt]:
    size = (height, width)
    box = np.array([[0.15 * width, 0.1 * height, 0.55 * width, 0.5 * height]])
    return [
        Prompt("point", size, np.array([[0.35 * width, 0.3 * height]]), np.array([1])),
        Prompt(
            "points_with_negatives",
            size,
            np.array(
                [[0.35 * width, 0.3 * height], [0.7 * width, 0.55 * height], [0.5 * width, 0.9 * height]]
            ),
            np.array([1, 0, 1]),
        ),
        Prompt("box", size, boxes=box),
        Prompt("box_and_point", size, np.array([[0.3 * width, 0.25 * height]]), np.array([0]), boxes=box),
        Prompt(
            "mask_input", size, np.array([[0.35 * width, 0.3 * height]]), np.array([1]), use_mask_input=True
        ),
        Prompt(
            "box_batch",
            size,
            boxes=np.array(
                [
                    [0.15 * width, 0.1 * height, 0.55 * width, 0.5 * height],
                    [0.55 * width, 0.4 * height, 0.9 * width, 0.75 * height],
                    [0.05 * width, 0.6 * height, 0.35 * width, 0.95 * height],
                    [0.45 * width, 0.45 * height, 0.62 * width, 0.8 * height],
                ]
            ),
        ),
        # The same embedding read as a portrait image: a baked aspect ratio would crop it wrongly.
        Prompt("point_portrait", (width, height), np.array([[0.3 * height, 0.6 * width]]), np.array([1])),
    ]


def decoder_feeds(
    sam: Sam, prompt: Prompt, embeddings: np.ndarray, mask_input: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The official ONNX decoder inputs for ``prompt`` (coordinates in the model frame, padding point).

    Boxes become corner points labelled 2 and 3 after the points; without a box a (0, 0) point
    labelled -1 is appended, as ``PromptEncoder`` pads. A batch of B boxes gives a batch of B prompts.
    """
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    batch = 1 if prompt.boxes is None else len(prompt.boxes)
    coords = np.zeros((batch, 0, 2))
    labels = np.zeros((batch, 0))
    if prompt.points is not None:
        points = transform.apply_coords(prompt.points.astype(np.float64), prompt.original_size)
        coords = np.concatenate([coords, np.repeat(points[None], batch, 0)], axis=1)
        labels = np.concatenate([labels, np.repeat(prompt.labels[None].astype(np.float64), batch, 0)], axis=1)
    if prompt.boxes is None:
        coords = np.concatenate([coords, np.zeros((batch, 1, 2))], axis=1)
        labels = np.concatenate([labels, -np.ones((batch, 1))], axis=1)
    else:
        corners = transform.apply_boxes(prompt.boxes.astype(np.float64), prompt.original_size).reshape(
            -1, 2, 2
        )
        coords = np.concatenate([coords, corners], axis=1)
        labels = np.concatenate([labels, np.tile([[2.0, 3.0]], (batch, 1))], axis=1)
    low = 4 * sam.prompt_encoder.image_embedding_size[0]
    return {
        "image_embeddings": embeddings.astype(np.float32),
        "point_coords": coords.astype(np.float32),
        "point_labels": labels.astype(np.float32),
        "mask_input": (mask_input if mask_input is not None else np.zeros((1, 1, low, low))).astype(
            np.float32
        ),
        "has_mask_input": np.array([1.0 if mask_input is not None else 0.0], np.float32),
        "orig_im_size": np.array(prompt.original_size, np.float32),
    }


@torch.no_grad()
def torch_decoder(
    sam: Sam, prompt: Prompt, embeddings: torch.Tensor, mask_input: np.ndarray | None
) -> list[np.ndarray]:
    """Official-path reference: ``[masks Bx4xHxW, iou_predictions Bx4, low_res_masks Bx4x(4G)x(4G)]``."""
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    points = boxes = masks = None
    batch = 1 if prompt.boxes is None else len(prompt.boxes)
    if prompt.points is not None:
        coords = torch.as_tensor(
            transform.apply_coords(prompt.points.astype(np.float64), prompt.original_size)
        )
        points = (
            coords.float()[None].repeat(batch, 1, 1),
            torch.as_tensor(prompt.labels).int()[None].repeat(batch, 1),
        )
    if prompt.boxes is not None:
        boxes = torch.as_tensor(
            transform.apply_boxes(prompt.boxes.astype(np.float64), prompt.original_size)
        ).float()
    if mask_input is not None:
        masks = torch.as_tensor(mask_input).float()
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
    low_res, iou = sam.mask_decoder.predict_masks(
        image_embeddings=embeddings,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )
    input_size = ResizeLongestSide.get_preprocess_shape(*prompt.original_size, sam.image_encoder.img_size)
    upscaled = sam.postprocess_masks(low_res, input_size, prompt.original_size)
    return [upscaled.numpy(), iou.numpy(), low_res.numpy()]


def _max_rel(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / max(1.0, float(np.abs(expected).max())))


def cosine(actual: np.ndarray, expected: np.ndarray) -> float:
    a, b = actual.ravel().astype(np.float64), expected.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Give activations back after each run: vit_h's global attention needs GBs only while it runs.
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def _encoder_input(sam: Sam, image: np.ndarray) -> torch.Tensor:
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    resized = torch.as_tensor(transform.apply_image(image)).permute(2, 0, 1).contiguous()[None].float()
    return sam.preprocess(resized)


def validate_package(
    sam: Sam, encoder_path: Path, decoder_path: Path, low_res_decoder_path: Path | None = None
) -> dict[str, Any]:
    """Compare the ONNX files with ``sam``; returns the figures recorded in ``model.json``.

    Keys: ``embeddings`` (max_abs, max_rel, cosine), ``decoder`` (per prompt kind: masks max_abs /
    max_rel / agreement, iou_predictions max_abs, low_res cosine; with ``low_res_decoder_path``
    also the low-res decoder's logits max_rel and iou_predictions max_abs), ``end_to_end`` (mask
    agreement with the ONNX embedding), ``worst`` (the figures the tolerances apply to) and
    ``tolerances``. The caller decides whether to fail (see :func:`failures`).
    """
    image = synthetic_image(*VALIDATION_IMAGE_SIZE)
    x = _encoder_input(sam, image)
    with torch.no_grad():
        reference = sam.image_encoder(x)
    encoder = _session(encoder_path)
    embeddings = encoder.run(None, {"image": x.numpy()})[0]
    del encoder
    expected = reference.numpy()
    report: dict[str, Any] = {
        "image": {"kind": "synthetic", "height": image.shape[0], "width": image.shape[1]},
        "embeddings": {
            "max_abs": float(np.abs(embeddings - expected).max()),
            "max_rel": _max_rel(embeddings, expected),
            "cosine": cosine(embeddings, expected),
        },
        "decoder": {},
        "end_to_end": {},
    }
    decoder = _session(decoder_path)
    low_res_decoder = _session(low_res_decoder_path) if low_res_decoder_path is not None else None
    previous_low_res: np.ndarray | None = None
    for prompt in _prompts(*VALIDATION_IMAGE_SIZE):
        mask_input = previous_low_res if prompt.use_mask_input else None
        want = torch_decoder(sam, prompt, reference, mask_input)
        feeds = decoder_feeds(sam, prompt, expected, mask_input)
        got = decoder.run(None, feeds)
        if prompt.name == "point":
            # Chain the best multimask output into the mask_input case, as an interactive tool would.
            best = 1 + int(np.argmax(want[1][0, 1:]))
            previous_low_res = want[2][:, best : best + 1]
        report["decoder"][prompt.name] = {
            "masks_max_abs": float(np.abs(got[0] - want[0]).max()),
            "masks_max_rel": _max_rel(got[0], want[0]),
            "mask_agreement": float(np.mean((got[0] > 0) == (want[0] > 0))),
            "iou_predictions_max_abs": float(np.abs(got[1] - want[1]).max()),
            "low_res_cosine": cosine(got[2], want[2]),
        }
        if low_res_decoder is not None:
            iou, low_res = low_res_decoder.run(
                None, {name: value for name, value in feeds.items() if name != "orig_im_size"}
            )
            report["decoder"][prompt.name].update(
                low_res_max_rel=_max_rel(low_res, want[2]),
                low_res_iou_max_abs=float(np.abs(iou - want[1]).max()),
            )
        chained = decoder.run(None, decoder_feeds(sam, prompt, embeddings, mask_input))
        report["end_to_end"][prompt.name] = {
            "mask_agreement": float(np.mean((chained[0] > 0) == (want[0] > 0))),
            "iou_predictions_max_abs": float(np.abs(chained[1] - want[1]).max()),
        }
    cases = report["decoder"].values()
    report["worst"] = {
        "embeddings_rel": report["embeddings"]["max_rel"],
        "embeddings_cosine": report["embeddings"]["cosine"],
        "mask_logits_rel": max(case["masks_max_rel"] for case in cases),
        "iou_predictions_abs": max(
            max(case["iou_predictions_max_abs"], case.get("low_res_iou_max_abs", 0.0)) for case in cases
        ),
        "mask_agreement": min(case["mask_agreement"] for case in cases),
        "end_to_end_mask_agreement": min(case["mask_agreement"] for case in report["end_to_end"].values()),
    }
    if low_res_decoder is not None:
        report["worst"]["low_res_logits_rel"] = max(case["low_res_max_rel"] for case in cases)
    report["tolerances"] = dict(TOLERANCES)
    return report


def failures(report: dict[str, Any]) -> list[str]:
    """Human-readable list of the tolerances ``report`` exceeds (empty when it passes)."""
    worst = report["worst"]
    problems = []
    for key, limit in TOLERANCES.items():
        value = worst.get(key)
        if value is None:  # a package without the figure (no low-res decoder)
            continue
        # Cosine and agreement must stay above their limit, differences below theirs.
        bad = value < limit if key in ("embeddings_cosine", "mask_agreement") else value > limit
        if bad:
            problems.append(f"{key} {value:.6g} (limit {limit:g})")
    return problems
