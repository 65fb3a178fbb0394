"""Validation of an exported package: ONNX Runtime against the official PyTorch modules.

The encoder gets three pictures put through the official pre-processing (``ResizeLongestSide`` +
``Sam.preprocess``): a real-looking landscape, and two with large uniform areas (a black strip,
mostly zero padding below it; a portrait whose top half is one flat colour, zero padding beside it).
On uniform areas a LayerNorm row's variance is close to its eps, which makes the embedding there
sensitive to how the graph normalizes: the real-looking picture alone misses such drift. The decoder is checked on several prompt kinds, each
against the official path (``PromptEncoder`` -> ``MaskDecoder.predict_masks`` ->
``Sam.postprocess_masks``), fed the PyTorch embedding so its own error is measured alone; the
end-to-end mask agreement (ONNX encoder + ONNX decoder) is recorded too.

Tolerances (fp32, see docs/export.md) scale with the magnitude of the reference values: random
weights give logits from ~1 (vit_b) to ~100 (tiny models), and float32 error grows with them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from samdeploy.package import (
    IMAGE_SIDE_OUTPUTS,
    LOW_RES_DECODER_OUTPUTS,
    MASK_FILTER_INPUT,
    MASK_FILTER_OUTPUT,
)

# Relative tolerances: max |onnx - torch| / max(1, max |torch|). float32 exports measure 2e-6 or
# less on the embeddings (random-weight vit_b and vit_h, trained 256 px models); a graph that
# normalizes differently from PyTorch (another LayerNorm eps) is 1e-3 off on uniform areas.
TOLERANCES = {
    "embeddings_rel": 1e-4,
    "embeddings_cosine": 0.9999,
    "mask_logits_rel": 1e-3,
    "low_res_logits_rel": 1e-3,
    "iou_predictions_abs": 1e-3,
    "mask_agreement": 0.999,
    "end_to_end_mask_agreement": 0.999,
}
# Figures that must stay at or above their limit; every other one at or below.
LOWER_BOUNDS = ("embeddings_cosine", "mask_agreement", "end_to_end_mask_agreement")

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


def encoder_images() -> dict[str, np.ndarray]:
    """The validation pictures of the encoder, ``HxWx3`` uint8 RGB, by name.

    ``synthetic`` is landscape (zero padding below); ``black_strip`` is an all-black 2:5 strip, so
    black above and zero padding below (both uniform); ``flat_portrait`` has a flat top half in the
    official pixel mean's colour (zero after normalizing) and zero padding on the right.
    """
    portrait = synthetic_image(640, 240, seed=1)
    portrait[:320] = (124, 116, 104)
    return {
        "synthetic": synthetic_image(*VALIDATION_IMAGE_SIZE),
        "black_strip": np.zeros((200, 500, 3), np.uint8),
        "flat_portrait": portrait,
    }


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


def _compare_embeddings(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    return {"max_abs": _max_abs(got, want), "max_rel": _max_rel(got, want), "cosine": cosine(got, want)}


def _max_abs(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest difference; NaN when either side holds a non-finite value (so it fails every limit)."""
    if not (np.isfinite(actual).all() and np.isfinite(expected).all()):
        return float("nan")
    return float(np.abs(actual - expected).max())


def _max_rel(actual: np.ndarray, expected: np.ndarray) -> float:
    return _max_abs(actual, expected) / max(1.0, float(np.abs(expected).max()))


def _agreement(actual: np.ndarray, expected: np.ndarray) -> float:
    """Share of mask pixels whose logits have the same sign; NaN when either side is non-finite."""
    if not (np.isfinite(actual).all() and np.isfinite(expected).all()):
        return float("nan")
    return float(np.mean((actual > 0) == (expected > 0)))


def cosine(actual: np.ndarray, expected: np.ndarray) -> float:
    a, b = actual.ravel().astype(np.float64), expected.ravel().astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
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


@torch.no_grad()
def norm_eps_sensitivity(sam: Sam, other_eps: float | None = None) -> dict[str, Any]:
    """How far the embedding of the ``black_strip`` picture moves when the encoder's LayerNorms use
    ``other_eps`` (default: 1e-5 if they use 1e-6, else 1e-6) instead of their own.

    Checkpoints do not record the eps; a large figure says the export is only faithful if the
    eps it assumes is the one the model was built with. Returns ``{"eps", "other_eps", "max_rel"}``.
    """
    norms = [m for block in sam.image_encoder.blocks for m in (block.norm1, block.norm2)]
    eps = float(norms[0].eps)
    other = other_eps if other_eps is not None else (1e-5 if eps != 1e-5 else 1e-6)
    x = _encoder_input(sam, encoder_images()["black_strip"])
    reference = sam.image_encoder(x).numpy()
    try:
        for norm in norms:
            norm.eps = other
        moved = sam.image_encoder(x).numpy()
    finally:
        for norm in norms:
            norm.eps = eps
    return {"eps": eps, "other_eps": other, "max_rel": _max_rel(moved, reference)}


def manifest_encoder_input(
    image: np.ndarray, size: int, pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> np.ndarray:
    """``1x3xSxS`` float32 encoder input made as a package says: resize the longest side to ``size``
    (``ResizeLongestSide``), normalize with the manifest's ``pixel_mean``/``pixel_std`` (RGB), then
    zero-pad bottom and right. Validation feeds this, not PyTorch's input, to the ONNX encoder, so a
    wrong constant in the manifest shows as an embedding difference."""
    resized = ResizeLongestSide(size).apply_image(image).astype(np.float32)
    normalized = (resized - np.asarray(pixel_mean, np.float32)) / np.asarray(pixel_std, np.float32)
    padded = np.zeros((size, size, 3), np.float32)
    padded[: normalized.shape[0], : normalized.shape[1]] = normalized
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None])


def validate_package(
    sam: Sam,
    encoder_path: Path,
    decoder_path: Path,
    low_res_decoder_path: Path | None = None,
    prepared_paths: tuple[Path, Path] | None = None,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Compare the ONNX files with ``sam``; returns the figures recorded in ``model.json``.

    Keys: ``embeddings`` (max_abs, max_rel, cosine), ``decoder`` (per prompt kind: masks max_abs /
    max_rel / agreement, iou_predictions max_abs, low_res cosine; with ``low_res_decoder_path``
    also the low-res decoder's logits max_rel and iou_predictions max_abs; with ``prepared_paths``,
    the decoder's image side and the prepared decoder, the same two figures of the pair for the
    prompts without a ``mask_input``), ``end_to_end`` (mask
    agreement with the ONNX embedding), ``worst`` (the figures the tolerances apply to) and
    ``tolerances``. The caller decides whether to fail (see :func:`failures`).

    ``pixel_mean``/``pixel_std``: the manifest's pre-processing constants; the ONNX encoder then gets
    pictures normalized with them (:func:`manifest_encoder_input`) while PyTorch normalizes with the
    model's own. Without them both get PyTorch's input.
    """
    encoder = _session(encoder_path)
    inputs: dict[str, dict[str, float]] = {}
    for name, picture in encoder_images().items():
        x = _encoder_input(sam, picture)
        with torch.no_grad():
            output = sam.image_encoder(x)
        feed = (
            x.numpy()
            if pixel_mean is None or pixel_std is None
            else manifest_encoder_input(picture, sam.image_encoder.img_size, pixel_mean, pixel_std)
        )
        got = encoder.run(None, {"image": feed})[0]
        want = output.numpy()
        inputs[name] = _compare_embeddings(got, want) | {
            "height": picture.shape[0],
            "width": picture.shape[1],
        }
        if name == "synthetic":
            # The decoder cases run on the real-looking picture's embedding.
            image, reference, embeddings = picture, output, got
    del encoder
    expected = reference.numpy()
    report: dict[str, Any] = {
        "image": {"kind": "synthetic", "height": image.shape[0], "width": image.shape[1]},
        "encoder_inputs": inputs,
        # The worst over the encoder's pictures.
        "embeddings": {
            "max_abs": _worst(max, (case["max_abs"] for case in inputs.values())),
            "max_rel": _worst(max, (case["max_rel"] for case in inputs.values())),
            "cosine": _worst(min, (case["cosine"] for case in inputs.values())),
        },
        "decoder": {},
        "end_to_end": {},
    }
    decoder = _session(decoder_path)
    low_res_decoder = _session(low_res_decoder_path) if low_res_decoder_path is not None else None
    prepared = None
    if prepared_paths is not None:
        image_side = _session(prepared_paths[0])
        side = image_side.run(list(IMAGE_SIDE_OUTPUTS), {"image_embeddings": expected})
        prepared = (dict(zip(IMAGE_SIDE_OUTPUTS, side, strict=True)), _session(prepared_paths[1]))
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
            "masks_max_abs": _max_abs(got[0], want[0]),
            "masks_max_rel": _max_rel(got[0], want[0]),
            "mask_agreement": _agreement(got[0], want[0]),
            "iou_predictions_max_abs": _max_abs(got[1], want[1]),
            "low_res_cosine": cosine(got[2], want[2]),
        }
        if low_res_decoder is not None:
            iou, low_res = low_res_run(low_res_decoder, feeds)
            report["decoder"][prompt.name].update(
                low_res_max_rel=_max_rel(low_res, want[2]),
                low_res_iou_max_abs=_max_abs(iou, want[1]),
            )
        if prepared is not None and mask_input is None:
            image_feeds, session = prepared
            iou, low_res = session.run(
                list(LOW_RES_DECODER_OUTPUTS),
                {**image_feeds, "point_coords": feeds["point_coords"], "point_labels": feeds["point_labels"]},
            )
            report["decoder"][prompt.name].update(
                prepared_max_rel=_max_rel(low_res, want[2]), prepared_iou_max_abs=_max_abs(iou, want[1])
            )
        chained = decoder.run(None, decoder_feeds(sam, prompt, embeddings, mask_input))
        report["end_to_end"][prompt.name] = {
            "mask_agreement": _agreement(chained[0], want[0]),
            "iou_predictions_max_abs": _max_abs(chained[1], want[1]),
        }
    cases = report["decoder"].values()
    report["worst"] = {
        "embeddings_rel": report["embeddings"]["max_rel"],
        "embeddings_cosine": report["embeddings"]["cosine"],
        "mask_logits_rel": _worst(max, (case["masks_max_rel"] for case in cases)),
        "iou_predictions_abs": _worst(
            max,
            (
                v
                for case in cases
                for v in (
                    case["iou_predictions_max_abs"],
                    case.get("low_res_iou_max_abs", 0.0),
                    case.get("prepared_iou_max_abs", 0.0),
                )
            ),
        ),
        "mask_agreement": _worst(min, (case["mask_agreement"] for case in cases)),
        "end_to_end_mask_agreement": _worst(
            min, (case["mask_agreement"] for case in report["end_to_end"].values())
        ),
    }
    if low_res_decoder is not None or prepared is not None:  # the decoders that give low-res logits
        report["worst"]["low_res_logits_rel"] = _worst(
            max,
            (
                v
                for case in cases
                for v in (case.get("low_res_max_rel", 0.0), case.get("prepared_max_rel", 0.0))
            ),
        )
    report["tolerances"] = dict(TOLERANCES)
    return report


def low_res_run(session: Any, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(iou_predictions, low_res_masks) of the low-res decoder for the official decoder's ``feeds``.

    A decoder with the mask filter (``mask_iou_threshold``) runs unfiltered, and once more with a
    threshold between this prompt batch's IoUs: the prompts it keeps must be exactly those with a
    multimask IoU above it (the automatic generator relies on that), with the same masks.
    """
    feeds = {name: value for name, value in feeds.items() if name != "orig_im_size"}
    spec = next((i for i in session.get_inputs() if i.name == MASK_FILTER_INPUT), None)
    if spec is None:
        iou, low_res = session.run(list(LOW_RES_DECODER_OUTPUTS), feeds)
        return iou, low_res
    iou, low_res, kept = session.run(
        [*LOW_RES_DECODER_OUTPUTS, MASK_FILTER_OUTPUT],
        {**feeds, MASK_FILTER_INPUT: np.full(int(spec.shape[0]), -np.inf, np.float32)},
    )
    if not np.array_equal(kept, np.arange(len(iou))):
        raise ValueError(f"the mask filter at -inf kept prompts {kept.tolist()} of {len(iou)}")
    multimask = iou[:, 1:]
    cut = np.float32(np.median(multimask.max(axis=1)))  # one prompt: none kept; more: about half
    threshold = np.array([np.inf] + [cut] * multimask.shape[1], np.float32)
    filtered, kept = session.run(
        ["low_res_masks", MASK_FILTER_OUTPUT], {**feeds, MASK_FILTER_INPUT: threshold}
    )
    expected = np.flatnonzero((multimask > cut).any(axis=1))
    if not np.array_equal(kept, expected) or filtered.shape[0] != expected.size:
        raise ValueError(
            f"the mask filter at {float(cut)} kept prompts {kept.tolist()}, expected {expected.tolist()}"
        )
    scale = 1e-4 * max(1.0, float(np.abs(low_res).max(initial=0.0)))
    if not np.allclose(filtered, low_res[expected], rtol=1e-4, atol=scale):
        raise ValueError("the mask filter's masks differ from the unfiltered decoder's")
    return iou, low_res


def _worst(pick: Callable[[Iterable[float]], float], values: Iterable[float]) -> float:
    """``max`` or ``min`` of ``values``, NaN when any is NaN (Python's max and min may skip a NaN)."""
    values = list(values)
    return float("nan") if any(math.isnan(v) for v in values) else pick(values)


def non_finite(report: Any, path: str = "") -> list[str]:
    """Where ``report`` holds NaN or an infinity (dotted keys), e.g. ``["worst.embeddings_rel"]``."""
    if isinstance(report, dict):
        return [hit for key, value in report.items() for hit in non_finite(value, f"{path}{key}.")]
    if isinstance(report, float) and not math.isfinite(report):
        return [path.rstrip(".")]
    return []


def failures(report: dict[str, Any]) -> list[str]:
    """Human-readable list of the tolerances ``report`` exceeds (empty when it passes).

    Every figure of ``worst`` with a tolerance is held to it: differences at or below, cosine and
    mask agreements at or above. A non-finite figure (NaN weights or outputs on either side) fails.
    """
    worst = report["worst"]
    problems = []
    for key, limit in TOLERANCES.items():
        value = worst.get(key)
        if value is None:  # a package without the figure (no low-res decoder)
            continue
        if not math.isfinite(value):
            problems.append(f"{key} is {value} (non-finite values in the outputs)")
            continue
        bad = value < limit if key in LOWER_BOUNDS else value > limit
        if bad:
            problems.append(f"{key} {value:.6g} (limit {limit:g})")
    return problems
