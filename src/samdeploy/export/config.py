"""The SAM architecture as a typed config: presets, building the official model, and detection.

:class:`SamConfig` holds every number needed to rebuild ``segment_anything.modeling.Sam`` with the
official classes; it is stored in the package manifest (``architecture``) so a runtime never guesses.
:func:`detect_config` recovers it from the tensor shapes of a state dict, which is how custom
configurations (a smaller ViT, another input size) export without being named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import Any

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from samdeploy.errors import CheckpointError

# The official pixel statistics (RGB, 0-255). Sam keeps them as non-persistent buffers, so they are
# never in a state dict and cannot be detected.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
# LayerNorm epsilon of the official image encoder blocks (``build_sam`` passes it; not in any state dict).
ENCODER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class SamConfig:
    """Every hyper-parameter of the official SAM architecture (``build_sam.py`` hard-codes most).

    The encoder takes ``1x3xSxS`` (S = ``image_size``) and gives ``1xCxGxG`` with
    C = ``prompt_embed_dim`` and G = S / ``patch_size``; the decoder's low-res masks are ``4G x 4G``.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    decoder_attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = field(default=PIXEL_MEAN)
    pixel_std: tuple[float, float, float] = field(default=PIXEL_STD)
    # Epsilon of the image encoder blocks' LayerNorms. Official ``build_sam`` passes 1e-6, while a
    # bare ``ImageEncoderViT(...)`` defaults to ``nn.LayerNorm``'s 1e-5. No weight records it, and it
    # matters: on uniform regions (zero padding, flat areas) a LayerNorm row has a variance near eps,
    # and the two values give embeddings up to 4e-3 of their maximum apart on a trained 256 px model.
    encoder_norm_eps: float = ENCODER_NORM_EPS

    @property
    def embedding_size(self) -> int:
        """G: side of the square image-embedding grid."""
        return self.image_size // self.patch_size

    @property
    def mask_input_size(self) -> int:
        """Side of the low-resolution mask logits (``mask_input`` / ``low_res_masks``)."""
        return 4 * self.embedding_size

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        data["pixel_mean"] = list(self.pixel_mean)
        data["pixel_std"] = list(self.pixel_std)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SamConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown SAM config keys: {', '.join(unknown)}")
        values = dict(data)
        for key in ("encoder_global_attn_indexes", "pixel_mean", "pixel_std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def describe(self) -> str:
        """Short human description, e.g. ``ViT 768x12 (12 heads), 1024 px``."""
        return (
            f"ViT {self.encoder_embed_dim}x{self.encoder_depth} ({self.encoder_num_heads} heads,"
            f" global {list(self.encoder_global_attn_indexes)}), {self.image_size} px"
        )


PRESETS: dict[str, SamConfig] = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
}


def preset_name(config: SamConfig) -> str:
    """``vit_b`` / ``vit_l`` / ``vit_h`` when the config equals a preset, else ``custom``."""
    return next((name for name, preset in PRESETS.items() if preset == config), "custom")


def build_sam(config: SamConfig) -> Sam:
    """The official ``Sam`` module for ``config`` (random initial weights, eval mode).

    Mirrors ``segment_anything.build_sam._build_sam`` with every constant taken from ``config``.
    Build it under ``torch.device("meta")`` to get shapes without allocating weights.
    """
    grid = config.embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.image_size,
            mlp_ratio=config.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=config.encoder_norm_eps),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=config.encoder_global_attn_indexes,
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
                attention_downsample_rate=config.decoder_attention_downsample_rate,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
    )
    return sam.eval()


def random_sam(config: SamConfig, seed: int = 0) -> Sam:
    """The official ``Sam`` for ``config`` with seeded random weights (eval mode), for tests and benchmarks.

    The official init leaves ``pos_embed`` and the relative-position tables at zero; they get small
    random values here so every path of the graph carries signal.
    """
    torch.manual_seed(seed)
    sam = build_sam(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in sam.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return sam.eval()


def _indexes(state: Mapping[str, Any], prefix: str) -> list[int]:
    """Sorted distinct ``i`` of keys ``{prefix}{i}.…`` (counts blocks / layers)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for key in state if (m := pattern.match(key))})


def _shape(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
    try:
        return tuple(state[key].shape)
    except KeyError:
        raise CheckpointError(f"not a SAM checkpoint: the state dict has no '{key}'") from None


def detect_config(state: Mapping[str, Any], decoder_num_heads: int = 8) -> SamConfig:
    """Recover the full :class:`SamConfig` from the tensor shapes of a SAM state dict.

    Only shapes are read, so tensors on the ``meta`` device work. What shapes reveal:
    encoder width and patch size (``patch_embed``), input size (``pos_embed`` grid x patch),
    depth (block count), head dim (``rel_pos`` width) hence heads, window size and the global
    blocks (``rel_pos`` length is ``2*window-1``, or ``2*grid-1`` for global blocks), MLP ratio,
    neck width, decoder depth / MLP width / downsample rate, mask tokens and the IoU head.
    The decoder's head count changes no shape; it is ``decoder_num_heads`` (officially 8).
    """
    embed_dim, in_chans, patch, _ = _shape(state, "image_encoder.patch_embed.proj.weight")
    if in_chans != 3:
        raise CheckpointError(f"not a SAM checkpoint: the patch embedding takes {in_chans} channels, not 3")
    _, grid, _, _ = _shape(state, "image_encoder.pos_embed")
    blocks = _indexes(state, "image_encoder.blocks.")
    if not blocks or blocks != list(range(len(blocks))):
        raise CheckpointError("not a SAM checkpoint: image encoder blocks are missing or not numbered 0..N-1")
    lengths = [_shape(state, f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] for i in blocks]
    head_dim = _shape(state, "image_encoder.blocks.0.attn.rel_pos_h")[1]
    global_length = 2 * grid - 1
    global_blocks = tuple(i for i, length in zip(blocks, lengths, strict=True) if length == global_length)
    window_lengths = {length for length in lengths if length != global_length}
    if len(window_lengths) > 1 or any(length % 2 == 0 for length in window_lengths):
        raise CheckpointError(
            f"not a SAM checkpoint: inconsistent relative-position sizes {sorted(set(lengths))}"
        )
    # With every block global the window size plays no role; keep the official 14.
    window = (window_lengths.pop() + 1) // 2 if window_lengths else 14
    mlp_hidden = _shape(state, "image_encoder.blocks.0.mlp.lin1.weight")[0]
    out_chans = _shape(state, "image_encoder.neck.0.weight")[0]
    mask_in_chans = _shape(state, "prompt_encoder.mask_downscaling.3.weight")[0]
    decoder_layers = _indexes(state, "mask_decoder.transformer.layers.")
    decoder_mlp = _shape(state, "mask_decoder.transformer.layers.0.mlp.lin1.weight")[0]
    cross_dim = _shape(state, "mask_decoder.transformer.final_attn_token_to_image.q_proj.weight")[0]
    mask_tokens = _shape(state, "mask_decoder.mask_tokens.weight")[0]
    iou_layers = _indexes(state, "mask_decoder.iou_prediction_head.layers.")
    iou_hidden = _shape(state, "mask_decoder.iou_prediction_head.layers.0.weight")[0]
    if embed_dim % head_dim:
        raise CheckpointError(
            f"not a SAM checkpoint: width {embed_dim} is not a multiple of head dim {head_dim}"
        )
    return SamConfig(
        encoder_embed_dim=embed_dim,
        encoder_depth=len(blocks),
        encoder_num_heads=embed_dim // head_dim,
        encoder_global_attn_indexes=global_blocks,
        image_size=grid * patch,
        patch_size=patch,
        window_size=window,
        mlp_ratio=mlp_hidden / embed_dim,
        prompt_embed_dim=out_chans,
        mask_in_chans=mask_in_chans,
        decoder_depth=len(decoder_layers),
        decoder_mlp_dim=decoder_mlp,
        decoder_num_heads=decoder_num_heads,
        decoder_attention_downsample_rate=out_chans // cross_dim,
        num_multimask_outputs=mask_tokens - 1,
        iou_head_depth=len(iou_layers),
        iou_head_hidden_dim=iou_hidden,
    )
