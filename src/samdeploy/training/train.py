"""Train a small official-architecture SAM on generated scenes (CPU, minutes).

The model is ``segment_anything.modeling.Sam`` built from the official classes with a narrow, shallow
ViT at a small input size (see :data:`MODEL_CONFIG`), so the official export path and the official
``SamPredictor`` run it unchanged, and the state dict loads like an official checkpoint.

Images go through the deployed pre-processing (``ResizeLongestSide`` with Pillow bilinear, normalise,
pad bottom/right) and prompts through the same coordinate transform, so the model trains on exactly
what it will see at run time. Each step encodes several images and decodes many prompts at once:

* ``point``: one positive click inside an object;
* ``box``: the object's box with jittered corners;
* ``points``: several positive and negative clicks;
* ``refine``: a ``point`` or ``box`` prompt plus a corrective click taken from the error of the
  model's own first answer, with that answer's low-res logits as ``mask_input``.

Every prompt trains the single-mask output (token 0, what ``multimask_output=False`` returns) and the
best of the three multimask outputs (the minimum of their losses, as SAM trains ambiguous clicks);
the IoU head regresses the actual IoU of all four outputs.
"""

from __future__ import annotations

import math
import multiprocessing
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, Sam
from segment_anything.utils.transforms import ResizeLongestSide

from samdeploy.export.config import SamConfig, build_sam
from samdeploy.training.scenes import Scene, SceneConfig, generate_scene, mask_to_box, random_interior_points

# The shipped default: a 4-block ViT (width 128; 8x8 windows, blocks 1 and 3 global) at 256 px in
# patches of 8 px (a 32x32 embedding, so 128x128 low-res masks: with 16 px patches the 64x64 masks
# alone cap the mean IoU of a perfect model near 0.94 on the held-out scenes, against 0.98 here), with
# a 128-wide prompt encoder and mask decoder (the official ones are 256 wide).
MODEL_CONFIG = SamConfig(
    encoder_embed_dim=128,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1, 3),
    image_size=256,
    patch_size=8,
    window_size=8,
    prompt_embed_dim=128,
    decoder_mlp_dim=512,
)

PROMPT_KINDS = ("point", "box", "points", "refine")
TRAINABLE = ("all", "iou-head")
# Channels of the image embedding that the auxiliary embedding loss shapes (see embedding_loss).
EMBEDDING_LOSS_CHANNELS = 32


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (everything that decides the result, with the seed)."""

    steps: int = 1500
    images_per_step: int = 8
    prompts_per_image: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    # Share of the steps after which refinement prompts (a second, corrective round) are trained.
    refine_from: float = 0.2
    focal: bool = True
    embedding_loss_weight: float = 1.0
    # Side of the square grid (over the padded model input) on which mask losses are computed.
    loss_size: int = 128
    # Run the forward passes under bfloat16 autocast (weights, optimiser and losses stay float32).
    # About twice as fast on CPUs with native bf16 arithmetic (see native_bf16); slow elsewhere.
    bf16: bool = False
    # What the optimiser updates: "all" weights, or only the "iou-head" (the MLP that scores the
    # masks, which picks the best of three), everything else frozen: a short calibration stage on a
    # trained model, several times cheaper per step since nothing else needs gradients.
    trainable: str = "all"
    seed: int = 0
    scenes: SceneConfig = field(default_factory=SceneConfig)


@dataclass
class StepReport:
    """What one optimisation step measured: the total loss and the mask loss per prompt kind."""

    step: int
    learning_rate: float
    loss: float
    kind_losses: dict[str, float]
    iou_loss: float
    embedding_loss: float


@dataclass
class PreparedScene:
    """A scene in the model's frame: the padded input, and soft targets of its promptable objects."""

    scene: Scene
    image: torch.Tensor  # 3xSxS float32, normalised and padded
    objects: list[int]  # promptable object indexes
    targets: torch.Tensor  # len(objects) x L x L float32 coverage in [0, 1] on the loss grid
    token_labels: torch.Tensor  # GxG int64 owner of each embedding cell (see _token_labels)


@dataclass
class Prompts:
    """A batch of P prompts in the model's frame, all with the same number of sparse tokens."""

    image_index: torch.Tensor  # P int64: which prepared scene each prompt belongs to
    targets: torch.Tensor  # P x L x L soft target masks
    point_coords: torch.Tensor | None = None  # P x N x 2 (x, y) in the model frame
    point_labels: torch.Tensor | None = None  # P x N
    boxes: torch.Tensor | None = None  # P x 4 XYXY in the model frame
    mask_input: torch.Tensor | None = None  # P x 1 x 4G x 4G previous low-res logits


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), so bf16 training pays off."""
    from samdeploy.cpu import cpu_flags, has_native_bf16

    return has_native_bf16(cpu_flags())


def build_model(config: SamConfig = MODEL_CONFIG, seed: int = 0, aligned_attention: bool = True) -> Sam:
    """The official ``Sam`` for ``config`` with seeded random initial weights, in train mode.

    With ``aligned_attention`` the decoder's cross-attention layers start with equal query and key
    projections, so ``q.k`` holds the (positive) similarity of the positional encodings: from the
    first step a prompt token and the image cells at its position attend to each other, and the
    decoder starts out localising the prompt instead of having to discover that from near-empty masks.
    """
    torch.manual_seed(seed)
    sam = build_sam(config)
    if aligned_attention:
        transformer = sam.mask_decoder.transformer
        attentions = [transformer.final_attn_token_to_image]
        for layer in transformer.layers:
            attentions += [layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
        with torch.no_grad():
            for attention in attentions:
                attention.k_proj.weight.copy_(attention.q_proj.weight)
    return sam.train()


def prepare_scene(scene: Scene, model: Sam, loss_size: int) -> PreparedScene:
    """Pre-process ``scene`` exactly as the predictor does and build its targets on the loss grid."""
    size = model.image_encoder.img_size
    grid = model.prompt_encoder.image_embedding_size[0]
    resized = ResizeLongestSide(size).apply_image(scene.image)
    pixels = torch.as_tensor(resized).permute(2, 0, 1).float()[None]
    with torch.no_grad():
        image = model.preprocess(pixels)[0]
    new_h, new_w = resized.shape[:2]
    coverage = np.zeros((scene.num_objects, loss_size, loss_size), np.float32)
    padded = np.zeros((size, size), np.float32)
    for index in range(scene.num_objects):
        padded[:new_h, :new_w] = cv2.resize(
            scene.mask(index).astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_AREA
        )
        coverage[index] = cv2.resize(padded, (loss_size, loss_size), interpolation=cv2.INTER_AREA)
    objects = scene.promptable_objects()
    return PreparedScene(
        scene=scene,
        image=image,
        objects=objects,
        targets=torch.from_numpy(coverage[objects]),
        token_labels=torch.from_numpy(
            _token_labels(coverage, grid, new_h * grid / size, new_w * grid / size)
        ),
    )


def _token_labels(coverage: np.ndarray, grid: int, valid_h: float, valid_w: float) -> np.ndarray:
    """GxG int64 owner of each embedding cell: object index + 1, 0 for background, -1 when mixed or padding."""
    cells = coverage.reshape(len(coverage), grid, coverage.shape[1] // grid, grid, coverage.shape[2] // grid)
    cells = cells.mean(axis=(2, 4))
    labels = np.full((grid, grid), -1, np.int64)
    total = cells.sum(axis=0)
    labels[total < 0.1] = 0
    if len(cells):
        owner, share = cells.argmax(axis=0), cells.max(axis=0)
        labels[share > 0.7] = owner[share > 0.7] + 1
    rows, cols = np.arange(grid)[:, None] + 1, np.arange(grid)[None, :] + 1
    labels[(rows > valid_h) | (cols > valid_w)] = -1
    return labels


def training_scene(rng: np.random.Generator, config: SceneConfig) -> Scene:
    """A generated scene with at least one promptable object."""
    while True:
        scene = generate_scene(rng, config)
        if scene.promptable_objects():
            return scene


def step_scenes(config: TrainConfig, model: Sam, step: int, rank: int, count: int) -> list[PreparedScene]:
    """The ``count`` prepared scenes that worker ``rank`` trains on at ``step`` (drawn from the seed)."""
    return [
        prepare_scene(
            training_scene(np.random.default_rng([config.seed, 1, step, rank, index]), config.scenes),
            model,
            config.loss_size,
        )
        for index in range(count)
    ]


def _to_model_frame(coords: np.ndarray, scene: Scene, size: int) -> np.ndarray:
    return ResizeLongestSide(size).apply_coords(coords, scene.image.shape[:2])


def _jittered_box(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask's box with each coordinate moved by N(0, 7% of the side), at most 20 px (as SAM)."""
    box = mask_to_box(mask)
    sides = np.array([box[2] - box[0], box[3] - box[1]] * 2) + 1.0
    noise = np.clip(rng.normal(0.0, 0.07 * sides), -20.0, 20.0)
    height, width = mask.shape
    jittered = np.clip(box + noise, 0, [width - 1, height - 1] * 2)
    x0, x1 = sorted(jittered[[0, 2]])
    y0, y1 = sorted(jittered[[1, 3]])
    return np.array([x0, y0, x1, y1])


def sample_prompts(
    prepared: list[PreparedScene], config: TrainConfig, rng: np.random.Generator, size: int
) -> tuple[Prompts, Prompts, Prompts]:
    """Draw the step's ``point``, ``box`` and ``points`` prompts, ``prompts_per_image`` per scene.

    Objects are visited in a random order per scene (so prompts on one image target different
    objects where there are enough). Returns three batches; each has one token count.
    """
    batches: dict[str, dict[str, list]] = {
        kind: {"index": [], "target": [], "coords": [], "labels": [], "boxes": []}
        for kind in ("point", "box", "points")
    }
    positives = int(rng.integers(1, 4))
    negatives = int(rng.integers(0, 3)) if positives > 1 else int(rng.integers(1, 3))
    for image_index, item in enumerate(prepared):
        order = rng.permutation(len(item.objects))
        for slot in range(config.prompts_per_image):
            row = int(order[slot % len(order)])
            mask = item.scene.mask(item.objects[row])
            kind = ("point", "box", "points")[int(rng.choice(3, p=(0.45, 0.3, 0.25)))]
            batch = batches[kind]
            batch["index"].append(image_index)
            batch["target"].append(item.targets[row])
            if kind == "point":
                coords = random_interior_points(mask, 1, rng)
                batch["coords"].append(_to_model_frame(coords, item.scene, size))
                batch["labels"].append(np.ones(1))
            elif kind == "box":
                box = _jittered_box(mask, rng)
                batch["boxes"].append(_to_model_frame(box.reshape(2, 2), item.scene, size).reshape(4))
            else:
                inside = random_interior_points(mask, positives, rng)
                outside_mask = ~mask
                if not outside_mask.any():
                    outside_mask = mask
                outside = random_interior_points(outside_mask, negatives, rng)
                coords = np.concatenate([inside, outside])
                batch["coords"].append(_to_model_frame(coords, item.scene, size))
                batch["labels"].append(np.concatenate([np.ones(positives), np.zeros(negatives)]))

    def finish(batch: dict[str, list]) -> Prompts:
        prompts = Prompts(
            image_index=torch.tensor(batch["index"], dtype=torch.int64),
            targets=torch.stack(batch["target"]) if batch["target"] else torch.zeros(0, 1, 1),
        )
        if batch["coords"]:
            prompts.point_coords = torch.as_tensor(np.stack(batch["coords"]), dtype=torch.float32)
            prompts.point_labels = torch.as_tensor(np.stack(batch["labels"]), dtype=torch.int64)
        if batch["boxes"]:
            prompts.boxes = torch.as_tensor(np.stack(batch["boxes"]), dtype=torch.float32)
        return prompts

    return finish(batches["point"]), finish(batches["box"]), finish(batches["points"])


def decode(
    model: Sam,
    embeddings: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``MaskDecoder.predict_masks`` for prompts that each bring their own image.

    The official method repeats *one* image embedding for every prompt; here ``embeddings`` is
    already PxCxGxG (one row per prompt, gathered from several images), which is what batching
    several images per step needs. Returns all four outputs: Px4x4Gx4G logits and Px4 IoU scores.
    """
    decoder: MaskDecoder = model.mask_decoder
    count = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(count, -1, -1), sparse), dim=1)
    src = embeddings + dense
    with torch.autocast("cpu", enabled=False):
        pos_src = model.prompt_encoder.get_dense_pe().expand(count, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
    return masks, decoder.iou_prediction_head(iou_token_out)


def run_prompts(model: Sam, embeddings: torch.Tensor, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``prompts`` with the official prompt encoder and decode them against their images."""
    points = None if prompts.point_coords is None else (prompts.point_coords, prompts.point_labels)
    mask_input = None if prompts.mask_input is None else prompts.mask_input.float()
    # The positional encodings (sines of projected coordinates) stay float32 under bf16 autocast.
    with torch.autocast("cpu", enabled=False):
        sparse, dense = model.prompt_encoder(points=points, boxes=prompts.boxes, masks=mask_input)
    return decode(model, embeddings[prompts.image_index], sparse, dense)


def mask_losses(
    logits: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor, focal: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-prompt losses of the four outputs against soft ``targets`` (P x L x L).

    Returns (P mask loss = token 0 loss + min over tokens 1..3, P IoU-head MSE, Px4xLxL upscaled logits).
    Each output's loss is focal (``focal``, else BCE) + dice on the loss grid; the IoU head's target is
    the IoU of the thresholded output with the thresholded target.
    """
    logits, iou_pred = logits.float(), iou_pred.float()
    size = targets.shape[-1]
    upscaled = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
    expanded = targets[:, None].expand_as(upscaled)
    probabilities = upscaled.sigmoid()
    bce = F.binary_cross_entropy_with_logits(upscaled, expanded, reduction="none")
    if focal:
        # Focal loss (gamma 2, weighted 20 against dice, as SAM): easy background pixels stop drowning
        # the few pixels of the object.
        bce = 20.0 * bce * (probabilities - expanded).abs() ** 2
    bce = bce.mean(dim=(2, 3))
    intersection = (probabilities * expanded).sum(dim=(2, 3))
    dice = 1.0 - (2.0 * intersection + 1.0) / (probabilities.sum(dim=(2, 3)) + expanded.sum(dim=(2, 3)) + 1.0)
    per_output = bce + dice
    mask_loss = per_output[:, 0] + per_output[:, 1:].min(dim=1).values
    with torch.no_grad():
        predicted = upscaled > 0
        truth = (targets > 0.5)[:, None]
        union = (predicted | truth).sum(dim=(2, 3)).clamp(min=1)
        actual_iou = (predicted & truth).sum(dim=(2, 3)) / union
    iou_loss = ((iou_pred - actual_iou) ** 2).mean(dim=1)
    return mask_loss, iou_loss, upscaled


def embedding_loss(embeddings: torch.Tensor, token_labels: torch.Tensor) -> torch.Tensor:
    """Auxiliary loss that makes the image embeddings tell objects apart.

    On the first :data:`EMBEDDING_LOSS_CHANNELS` channels, the cosine similarity of two cells of one
    image is trained (as logits, BCE) to be high when one object (or the background) owns both and
    low otherwise. It gives the encoder a dense signal from every cell, where the mask losses reach it
    only through the decoder, and is what lets the decoder tell the clicked object from its neighbours.
    """
    features = embeddings[:, :EMBEDDING_LOSS_CHANNELS].float().flatten(2).transpose(1, 2)
    features = F.normalize(features, dim=-1)
    similarity = features @ features.transpose(1, 2)
    labels = token_labels.flatten(1)
    same = (labels[:, :, None] == labels[:, None, :]).float()
    valid = ((labels[:, :, None] >= 0) & (labels[:, None, :] >= 0)).float()
    loss = F.binary_cross_entropy_with_logits(5.0 * similarity, same, reduction="none")
    return (loss * valid).sum() / valid.sum().clamp(min=1.0)


def refinement_prompts(
    base: Prompts,
    upscaled: torch.Tensor,
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    generator: torch.Generator,
    size: int,
) -> Prompts:
    """``base`` plus one corrective click from the error of its best answer, with that answer as mask_input.

    The click is drawn uniformly from the pixels the answer got wrong (positive where it missed the
    object, negative where it spilled over), as SAM's interactive training does.
    """
    best = iou_pred.argmax(dim=1)
    rows = torch.arange(len(best))
    chosen = upscaled[rows, best].detach() > 0
    truth = base.targets > 0.5
    errors = (chosen ^ truth).flatten(1).float()
    empty = errors.sum(dim=1) == 0
    errors[empty] = truth.flatten(1)[empty].float()
    pick = torch.multinomial(errors, 1, generator=generator)[:, 0]
    grid = truth.shape[-1]
    cell = size / grid
    ys, xs = pick // grid, pick % grid
    coords = torch.stack([xs, ys], dim=1).float() * cell + (cell - 1) / 2
    labels = truth.flatten(1)[rows, pick].long()
    if base.point_coords is not None:
        point_coords = torch.cat([base.point_coords, coords[:, None]], dim=1)
        point_labels = torch.cat([base.point_labels, labels[:, None]], dim=1)
    else:
        point_coords, point_labels = coords[:, None], labels[:, None]
    return Prompts(
        image_index=base.image_index,
        targets=base.targets,
        point_coords=point_coords,
        point_labels=point_labels,
        boxes=base.boxes,
        mask_input=logits[rows, best][:, None].detach(),
    )


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 2% of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    return config.learning_rate * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _step_loss(
    model: Sam,
    config: TrainConfig,
    prepared: list[PreparedScene],
    rng: np.random.Generator,
    generator: torch.Generator,
    refine: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Total loss of one step on ``prepared``, with the per-prompt mask losses by kind, IoU and embedding losses."""
    size = model.image_encoder.img_size
    embeddings = model.image_encoder(torch.stack([item.image for item in prepared]))
    point, box, points = sample_prompts(prepared, config, rng, size)
    kind_losses: dict[str, torch.Tensor] = {}
    iou_losses: list[torch.Tensor] = []
    first_round: list[tuple[Prompts, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for kind, prompts in (("point", point), ("box", box), ("points", points)):
        if len(prompts.image_index) == 0:
            continue
        logits, iou_pred = run_prompts(model, embeddings, prompts)
        mask_loss, iou_loss, upscaled = mask_losses(logits, iou_pred, prompts.targets, config.focal)
        kind_losses[kind] = mask_loss
        iou_losses.append(iou_loss)
        if refine and kind in ("point", "box"):
            first_round.append((prompts, upscaled, logits, iou_pred))
    refine_losses = []
    for prompts, upscaled, logits, iou_pred in first_round:
        refined = refinement_prompts(prompts, upscaled, logits, iou_pred, generator, size)
        logits, iou_pred = run_prompts(model, embeddings, refined)
        mask_loss, iou_loss, _ = mask_losses(logits, iou_pred, refined.targets, config.focal)
        refine_losses.append(mask_loss)
        iou_losses.append(iou_loss)
    if refine_losses:
        kind_losses["refine"] = torch.cat(refine_losses)
    all_iou = torch.cat(iou_losses)
    aux = embedding_loss(embeddings, torch.stack([item.token_labels for item in prepared]))
    loss = torch.cat(list(kind_losses.values())).mean() + all_iou.mean() + config.embedding_loss_weight * aux
    return loss, kind_losses, all_iou, aux


def trainable_parameters(model: Sam, trainable: str) -> list[torch.nn.Parameter]:
    """The parameters that ``trainable`` ("all" or "iou-head") trains; the others are frozen."""
    if trainable not in TRAINABLE:
        raise ValueError(f"unknown trainable '{trainable}': choose one of {', '.join(TRAINABLE)}")
    chosen = (
        list(model.mask_decoder.iou_prediction_head.parameters())
        if trainable == "iou-head"
        else list(model.parameters())
    )
    keep = {id(parameter) for parameter in chosen}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in keep)
    return chosen


def _average_gradients(model: Sam, workers: int) -> None:
    """Sum the gradients of all workers (one all-reduce) and divide; every trained parameter gets one."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    flat = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in parameters])
    torch.distributed.all_reduce(flat)
    flat /= workers
    offset = 0
    for parameter in parameters:
        parameter.grad = flat[offset : offset + parameter.numel()].view_as(parameter).clone()
        offset += parameter.numel()


def _run(
    config: TrainConfig,
    model: Sam,
    rank: int,
    workers: int,
    on_step: Callable[[StepReport, Sam], None] | None,
) -> None:
    """The training loop of worker ``rank`` (of ``workers``), updating ``model`` in place."""
    model.train()
    optimizer = torch.optim.AdamW(
        trainable_parameters(model, config.trainable),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    images = config.images_per_step // workers
    for step in range(config.steps):
        rng = np.random.default_rng([config.seed, 2, step, rank])
        prepared = step_scenes(config, model, step, rank, images)
        lr = learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        refine = step >= config.refine_from * config.steps
        # bf16: the forward passes under autocast; weights, optimiser and the backward stay float32.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            loss, kind_losses, iou_losses, aux = _step_loss(model, config, prepared, rng, generator, refine)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if workers > 1:
            _average_gradients(model, workers)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        if on_step is not None:
            report = StepReport(
                step=step,
                learning_rate=lr,
                loss=loss.item(),
                kind_losses={kind: value.mean().item() for kind, value in kind_losses.items()},
                iou_loss=iou_losses.mean().item(),
                embedding_loss=aux.item(),
            )
            on_step(report, model)
            model.train()


def _worker(config: TrainConfig, model: Sam, rank: int, workers: int, rendezvous: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=workers)
    try:
        _run(config, model, rank, workers, None)
    finally:
        torch.distributed.destroy_process_group()


def train(
    config: TrainConfig,
    model: Sam | None = None,
    on_step: Callable[[StepReport, Sam], None] | None = None,
    workers: int = 1,
) -> Sam:
    """Train ``model`` (a fresh :data:`MODEL_CONFIG` model when None) and return it in eval mode.

    With ``workers`` > 1 the step's images are split over that many processes (forked here, one
    torch thread each) whose gradients are averaged every step: the same training, spread over
    cores. ``on_step`` is called in this process after every step with its report (the losses of
    this process's share) for progress display and probes. Given the same config, seed and
    ``workers`` the run is deterministic.
    """
    if config.images_per_step % workers:
        raise ValueError(
            f"images_per_step ({config.images_per_step}) must be a multiple of workers ({workers})"
        )
    if model is None:
        model = build_model(seed=config.seed)
    try:
        _train(config, model, on_step, workers)
    finally:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    return model.eval()


def _train(
    config: TrainConfig, model: Sam, on_step: Callable[[StepReport, Sam], None] | None, workers: int
) -> None:
    if workers == 1:
        _run(config, model, 0, 1, on_step)
        return
    context = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory() as folder:
        rendezvous = f"file://{folder}/rendezvous"
        processes = [
            context.Process(target=_worker, args=(config, model, rank, workers, rendezvous), daemon=True)
            for rank in range(1, workers)
        ]
        for process in processes:
            process.start()
        torch.distributed.init_process_group("gloo", init_method=rendezvous, rank=0, world_size=workers)
        try:
            _run(config, model, 0, workers, on_step)
        finally:
            torch.distributed.destroy_process_group()
            for process in processes:
                process.join()
    failed = [process.exitcode for process in processes if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"a training worker failed (exit codes {failed})")
