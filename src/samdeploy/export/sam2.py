"""SAM 2.x image models: checkpoint -> validated package, beside the SAM 1 exporter.

    from samdeploy.export import export_model
    export_model("sam2.1_hiera_tiny.pt", "models/sam2.1_tiny")        # family and size detected

The official ``sam2`` package builds the torch model from its own Hydra configs (the four SAM 2.1
presets ship inside it; ``config=`` takes a custom YAML). The package holds these graphs:

* ``image_encoder``: ``image`` 1x3xSxS float32 (square-resized, scaled to [0, 1] and normalized by
  the runtime) -> ``high_res_feats_0`` 1x(C/8)x4Gx4G, ``high_res_feats_1`` 1x(C/4)x2Gx2G (already
  through the decoder's ``conv_s0`` / ``conv_s1``, as ``SAM2Base.forward_image`` does) and
  ``image_embed`` 1xCxGxG (``no_mem_embed`` added, as the image predictor does). G = S/16.
* ``mask_decoder``: the prompt encoder + mask decoder (samdeploy's SAM 2 decoder contract):
  ``image_embed``, ``high_res_feats_0``, ``high_res_feats_1``, ``point_coords`` BxNx2 float32 (the
  S-frame: box corners first, then points, then the padding point), ``point_labels`` BxN float32
  (2/3 box corners, 0/1 points, -1 padding), ``mask_input`` Bx1x4Gx4G (or 1x...),
  ``has_mask_input`` [1] -> ``low_res_masks`` Bx4x4Gx4G (every mask token: 0 = single-mask output,
  1..3 = multimask), ``iou_predictions`` Bx4 and ``object_score_logits`` Bx1. The runtime picks the
  tokens (with the official dynamic fall-back to the best multimask output) and upscales only what
  it returns.
* ``mask_decoder_image`` and ``mask_decoder_prepared``: that decoder cut in two for prompts without
  a ``mask_input`` (the interactive click), as SAM 1 packages have it. The first runs once per
  image: the three feature maps -> the image tokens with the no-mask embedding added, the first
  transformer layer's projections of them, and the two high-resolution maps laid out as rows in the
  order the output upscaling makes its pixels (:func:`high_res_rows`). The second takes those and
  ``point_coords``/``point_labels`` to the decoder's three outputs; its output upscaling runs
  channels-last as SAM 1's does (one LayerNormalization instead of SAM 2's two ReduceMeans over
  the channel axis, which took 3 ms of a Hiera tiny click in ONNX Runtime).

The tensors are in the order X-AnyLabeling's SAM 2 models read them by position (encoder:
``high_res_feats_0, high_res_feats_1, image_embed``; decoder: the seven inputs above, then
``masks, scores`` = ``low_res_masks, iou_predictions``), so those tools load the two files as they are.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from rich.console import Console
from torch import nn
from torch.nn import functional as F

import samdeploy
from samdeploy.errors import CheckpointError, ExportError
from samdeploy.export.checkpoint import load_state_dict, normalize_state_dict
from samdeploy.export.checks import DEFAULT_SIMPLIFIER, check_opset, check_output, check_simplifier
from samdeploy.export.exporter import (
    ExportReport,
    _check_disk,
    _one_line,
    _Steps,
    _version,
    check_finite_weights,
    model_entry,
    move_into_place,
    new_staging,
    rewrite_encoder,
    save_graph,
    trace_and_simplify,
)
from samdeploy.export.models import _channels_last_upscaled_masks
from samdeploy.export.twoway import image_side, two_way_transformer
from samdeploy.export.validate import (
    TOLERANCES,
    _max_rel,
    _prompts,
    _session,
    cosine,
    failures,
    synthetic_image,
)
from samdeploy.package import (
    DECODER,
    ENCODER,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_SIDE,
    PREPARED_DECODER,
    SAM2_DECODER_INPUTS,
    SAM2_DECODER_OUTPUTS,
    SAM2_ENCODER_OUTPUTS,
    SAM2_IMAGE_SIDE_INPUTS,
    SAM2_IMAGE_SIDE_OUTPUTS,
    SAM2_PREPARED_DECODER_INPUTS,
    TensorSpec,
    describe_files,
    sha256_file,
    write_manifest,
)

# (family, trunk embed dim, trunk blocks) -> (model type, the official config file in the sam2 package)
SAM2_PRESETS = {
    ("sam2.1", 96, 12): ("sam2.1_hiera_tiny", "configs/sam2.1/sam2.1_hiera_t.yaml"),
    ("sam2.1", 96, 16): ("sam2.1_hiera_small", "configs/sam2.1/sam2.1_hiera_s.yaml"),
    ("sam2.1", 112, 24): ("sam2.1_hiera_base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml"),
    ("sam2.1", 144, 48): ("sam2.1_hiera_large", "configs/sam2.1/sam2.1_hiera_l.yaml"),
    ("sam2", 96, 12): ("sam2_hiera_tiny", "configs/sam2/sam2_hiera_t.yaml"),
    ("sam2", 96, 16): ("sam2_hiera_small", "configs/sam2/sam2_hiera_s.yaml"),
    ("sam2", 112, 24): ("sam2_hiera_base_plus", "configs/sam2/sam2_hiera_b+.yaml"),
    ("sam2", 144, 48): ("sam2_hiera_large", "configs/sam2/sam2_hiera_l.yaml"),
}
SAM2_MODEL_TYPES = tuple(name for name, _ in SAM2_PRESETS.values())

# What the official build_sam2 adds to every config (apply_postprocessing=True): when one mask is
# asked for and token 0's mask is unstable, fall back to the best multimask output.
DYNAMIC_MULTIMASK = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}
# SAM2Transforms' statistics, applied to pixels scaled to [0, 1].
SAM2_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM2_PIXEL_STD = (0.229, 0.224, 0.225)
LOW_RES_CLAMP = 32.0  # the image predictor clamps the low-res logits it returns to +-32


def is_sam2_state(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is a SAM 2.x one (its decoder lives under ``sam_mask_decoder.``)."""
    return any(key.startswith("sam_mask_decoder.") for key in state)


@dataclass(frozen=True)
class Sam2Config:
    """A SAM 2.x architecture: ``family`` (``sam2.1`` or ``sam2``), ``model_type`` (a preset name or
    ``custom``) and ``model`` (the Hydra ``model:`` section, resolved: enough to rebuild it)."""

    family: str
    model_type: str
    model: dict[str, Any]

    @property
    def image_size(self) -> int:
        return int(self.model.get("image_size", 512))

    @property
    def hidden_dim(self) -> int:
        return int(self.model["image_encoder"]["neck"]["d_model"])

    @property
    def embedding_size(self) -> int:
        return self.image_size // int(self.model.get("backbone_stride", 16))

    @classmethod
    def from_yaml(cls, path: str | Path, family: str | None = None, model_type: str = "custom") -> Sam2Config:
        """Read a SAM 2 Hydra config file (``model:`` with ``_target_`` entries)."""
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"SAM 2 config not found: {path}")
        try:
            cfg = OmegaConf.load(path)
            model = OmegaConf.to_container(cfg.get("model"), resolve=True)
        except (OmegaConfBaseException, ValueError, OSError) as exc:
            raise CheckpointError(f"cannot read SAM 2 config {path}: {_one_line(exc)}") from None
        if not isinstance(model, dict) or "image_encoder" not in model:
            raise CheckpointError(f"{path} is not a SAM 2 config (no model.image_encoder)")
        if family is None:
            family = "sam2.1" if model.get("no_obj_embed_spatial") else "sam2"
        return cls(family=family, model_type=model_type, model=model)


def official_config_path(relative: str) -> Path:
    """A config file shipped inside the official ``sam2`` package, e.g.
    ``configs/sam2.1/sam2.1_hiera_t.yaml``."""
    import sam2

    return Path(sam2.__path__[0]) / relative


def detect_sam2_config(state: Mapping[str, torch.Tensor]) -> Sam2Config:
    """The official config matching a SAM 2.x state dict (family from ``no_obj_embed_spatial``,
    size from the trunk's width and block count). A state dict of another shape needs ``config``."""
    family = "sam2.1" if "no_obj_embed_spatial" in state else "sam2"
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    blocks = {key.split(".")[3] for key in state if key.startswith("image_encoder.trunk.blocks.")}
    if patch is None:
        raise CheckpointError("not a SAM 2 checkpoint: no image_encoder.trunk.patch_embed weights")
    key = (family, int(patch.shape[0]), len(blocks))
    if key not in SAM2_PRESETS:
        raise CheckpointError(
            f"{family} checkpoint of an unknown size (Hiera width {key[1]}, {key[2]} blocks):"
            " pass its Hydra config with --config"
        )
    name, relative = SAM2_PRESETS[key]
    return Sam2Config.from_yaml(official_config_path(relative), family=family, model_type=name)


def build_sam2(config: Sam2Config) -> nn.Module:
    """The official ``SAM2Base`` for ``config`` (random weights, eval mode), built as the official
    ``build_sam2`` builds it: with the dynamic multimask fall-back of its post-processing."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    model = dict(config.model)
    model["sam_mask_decoder_extra_args"] = {
        **(model.get("sam_mask_decoder_extra_args") or {}),
        **DYNAMIC_MULTIMASK,
    }
    try:
        return instantiate(OmegaConf.create(model), _recursive_=True).eval()
    except Exception as exc:  # Hydra wraps every construction error in its own
        raise CheckpointError(f"cannot build the SAM 2 model from its config: {_one_line(exc)}") from None


def random_sam2(config: Sam2Config, seed: int = 0) -> nn.Module:
    """``build_sam2`` with seeded random weights (for tests and examples: no download)."""
    torch.manual_seed(seed)
    return build_sam2(config)


def load_sam2(state: Mapping[str, torch.Tensor], config: Sam2Config) -> nn.Module:
    """``build_sam2(config)`` holding the weights of ``state`` (strict, float32, eval)."""
    model = build_sam2(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"checkpoint does not match the SAM 2 config: {detail[:300]}") from None
    return model.eval()


# ---------------------------------------------------------------------------------------------
# The traced modules
# ---------------------------------------------------------------------------------------------


class Sam2EncoderOnnx(nn.Module):
    """``SAM2ImagePredictor.set_image`` from the normalized image on: backbone, the decoder's
    high-res projections, ``no_mem_embed``; the three feature maps as NCHW."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        backbone_out = self.model.forward_image(image)
        _, feats, _, sizes = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + self.model.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(1, -1, h, w) for f, (h, w) in zip(feats, sizes, strict=True)]
        return maps[0], maps[1], maps[-1]


class _Sam2Module(nn.Module):
    """A traced piece of a SAM 2 model's prompt encoder and mask decoder."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def prompt_tokens(
        self, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """The decoder's output tokens and the embedded points, BxTxC (see :func:`_output_tokens`)."""
        sparse = self.model.sam_prompt_encoder._embed_points(point_coords, point_labels, pad=False)
        return _output_tokens(self.model.sam_mask_decoder, sparse)


class Sam2DecoderOnnx(_Sam2Module):
    """Prompt encoder + ``MaskDecoder.predict_masks`` for a prompt batch of B, every mask token out.

    The same arithmetic as the image predictor's ``_predict``: points embedded by the official
    ``_embed_points`` (the runtime has appended the padding point and the box corners), the mask
    prompt chosen by ``has_mask_input``, the image embedding repeated over the B prompts.
    """

    def dense_embeddings(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        encoder = self.model.sam_prompt_encoder
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask_input * encoder.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        encoder, decoder = self.model.sam_prompt_encoder, self.model.sam_mask_decoder
        tokens, first = self.prompt_tokens(point_coords, point_labels)
        dense = self.dense_embeddings(mask_input, has_mask_input)
        batch = tokens.shape[0]
        # The official repeat_interleave of a batch-1 embedding over B prompts: a broadcast here, so
        # the first layer's image-side projections run once per call (see export/twoway.py).
        src = image_embed + dense
        _, c, h, w = src.shape
        hs, src = two_way_transformer(decoder.transformer, src, encoder.get_dense_pe(), tokens)
        hyper_in, iou_pred, object_score_logits = _heads_out(decoder, hs, first)
        src = src.transpose(1, 2).reshape(batch, c, h, w)
        if decoder.use_high_res_features:
            dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
            upscaled = act1(ln1(dc1(src) + high_res_feats_1))
            upscaled = act2(dc2(upscaled) + high_res_feats_0)
        else:
            upscaled = decoder.output_upscaling(src)
        _, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(batch, c, h * w)).reshape(batch, -1, h, w)
        return masks, iou_pred, object_score_logits


def _output_tokens(decoder: nn.Module, sparse: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The decoder's output tokens (object score, IoU, mask tokens) followed by the prompt's
    embedded points, BxTxC, and the index of the IoU token."""
    first = 1 if decoder.pred_obj_scores else 0
    weights = [decoder.iou_token.weight, decoder.mask_tokens.weight]
    if decoder.pred_obj_scores:
        weights.insert(0, decoder.obj_score_token.weight)
    output_tokens = torch.cat(weights, dim=0).unsqueeze(0).expand(sparse.shape[0], -1, -1)
    return torch.cat((output_tokens, sparse), dim=1), first


def _heads_out(
    decoder: nn.Module, hs: torch.Tensor, first: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hyper_in BxTxC/8, iou_pred BxT, object_score_logits Bx1) from the transformer's tokens."""
    mask_tokens_out = hs[:, first + 1 : first + 1 + decoder.num_mask_tokens, :]
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    iou_pred = decoder.iou_prediction_head(hs[:, first, :])
    if decoder.pred_obj_scores:
        object_score_logits = decoder.pred_obj_score_head(hs[:, 0, :])
    else:
        object_score_logits = 10.0 * iou_pred.new_ones(hs.shape[0], 1)
    return hyper_in, iou_pred, object_score_logits


def high_res_rows(feats_0: torch.Tensor, feats_1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two high-resolution maps (1xC0x4Gx4G, 1xC1x2Gx2G) as rows of channels in the order the
    channels-last output upscaling makes its pixels (see
    :func:`~samdeploy.export.models._channels_last_upscaled_masks`): pixel (2y + a, 2x + b) of
    ``feats_1`` at row ((y G + x) 2 + a) 2 + b, pixel (4y + 2a + c, 4x + 2b + d) of ``feats_0``
    at row of (y, x, a, b, c, d) in that order. Every view stays at rank 6 or less."""
    # Channels last first (a plain 2-D transpose), then pixels moved in runs of whole channel
    # vectors: ONNX Runtime's Transpose is several times slower when the innermost run is one value.
    c1, g = feats_1.shape[1], feats_1.shape[2] // 2
    pixels_1 = feats_1.reshape(c1, -1).t()  # (Y X) x C, Y = 2y + a
    rows_1 = pixels_1.reshape(g, 2, g, 2 * c1).transpose(1, 2).reshape(-1, c1)  # y x a (b C)
    c0 = feats_0.shape[1]
    pixels_0 = feats_0.reshape(c0, -1).t()  # (Y X) x C, Y = 4y + 2a + c
    rows_0 = pixels_0.reshape(g, 4, g, 4 * c0).transpose(1, 2)  # y x (a c) (b d C)
    rows_0 = rows_0.reshape(g * g, 2, 2, 2, 2 * c0).transpose(2, 3)  # yx a b c (d C)
    return rows_0.reshape(-1, c0), rows_1


class Sam2ImageSideOnnx(_Sam2Module):
    """The three feature maps -> what :class:`Sam2PreparedDecoderOnnx` takes from an image: the
    image tokens with the no-mask embedding added (1xNxC), the first transformer layer's keys,
    values and queries (1xhxNxd, see :func:`~samdeploy.export.twoway.image_side`) and the
    high-resolution maps as rows (:func:`high_res_rows`)."""

    def forward(
        self, image_embed: torch.Tensor, high_res_feats_0: torch.Tensor, high_res_feats_1: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        encoder, decoder = self.model.sam_prompt_encoder, self.model.sam_mask_decoder
        src = image_embed + encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        tokens = src.flatten(2).permute(0, 2, 1)
        key_pe = encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
        projected = image_side(decoder.transformer.layers[0], tokens, key_pe)
        return (tokens, *projected, *high_res_rows(high_res_feats_0, high_res_feats_1))


class Sam2PreparedDecoderOnnx(_Sam2Module):
    """:class:`Sam2DecoderOnnx` for prompts without a ``mask_input``, on :class:`Sam2ImageSideOnnx`'s
    outputs: the same three outputs, the official values up to float32 rounding."""

    def forward(
        self,
        image_tokens: torch.Tensor,
        image_keys: torch.Tensor,
        image_values: torch.Tensor,
        image_queries: torch.Tensor,
        high_res_rows_0: torch.Tensor,
        high_res_rows_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        encoder, decoder = self.model.sam_prompt_encoder, self.model.sam_mask_decoder
        tokens, first = self.prompt_tokens(point_coords, point_labels)
        grid = encoder.image_embedding_size
        key_pe = encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
        projected = (image_keys, image_values, image_queries)
        hs, src = two_way_transformer(decoder.transformer, image_tokens, key_pe, tokens, projected)
        hyper_in, iou_pred, object_score_logits = _heads_out(decoder, hs, first)
        image = src.reshape(-1, grid[0], grid[1], src.shape[-1])
        masks = _channels_last_upscaled_masks(decoder, image, hyper_in, (high_res_rows_0, high_res_rows_1))
        return masks, iou_pred, object_score_logits


def has_prepared_pair(model: nn.Module) -> bool:
    """Whether the package gets the decoder cut in two: for decoders that add the high-resolution
    maps (every SAM 2 and 2.1 preset); others keep the one decoder."""
    return bool(model.sam_mask_decoder.use_high_res_features)


def encoder_specs(config: Sam2Config) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensor specs of the SAM 2 ``image_encoder.onnx``."""
    size, grid, dim = config.image_size, config.embedding_size, config.hidden_dim
    return (
        [TensorSpec("image", (1, 3, size, size), "float32")],
        [
            TensorSpec("high_res_feats_0", (1, dim // 8, 4 * grid, 4 * grid), "float32"),
            TensorSpec("high_res_feats_1", (1, dim // 4, 2 * grid, 2 * grid), "float32"),
            TensorSpec("image_embed", (1, dim, grid, grid), "float32"),
        ],
    )


def decoder_specs(config: Sam2Config) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensor specs of the SAM 2 ``mask_decoder.onnx`` (strings: dynamic axes)."""
    _, (high_res_0, high_res_1, embed) = encoder_specs(config)
    low = 4 * config.embedding_size
    inputs = [
        embed,
        high_res_0,
        high_res_1,
        TensorSpec("point_coords", ("batch", "num_points", 2), "float32"),
        TensorSpec("point_labels", ("batch", "num_points"), "float32"),
        TensorSpec("mask_input", ("mask_batch", 1, low, low), "float32"),
        TensorSpec("has_mask_input", (1,), "float32"),
    ]
    outputs = [
        TensorSpec("low_res_masks", ("batch", 4, low, low), "float32"),
        TensorSpec("iou_predictions", ("batch", 4), "float32"),
        TensorSpec("object_score_logits", ("batch", 1), "float32"),
    ]
    return inputs, outputs


def image_side_specs(model: nn.Module, config: Sam2Config) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensor specs of the SAM 2 ``mask_decoder_image.onnx``."""
    inputs = {spec.name: spec for spec in encoder_specs(config)[1]}
    attention = model.sam_mask_decoder.transformer.layers[0].cross_attn_token_to_image
    heads, cells, dim = attention.num_heads, config.embedding_size**2, config.hidden_dim
    projected = (1, heads, cells, attention.internal_dim // heads)
    rows = [
        (16 * cells, inputs["high_res_feats_0"].shape[1]),
        (4 * cells, inputs["high_res_feats_1"].shape[1]),
    ]
    return (
        [inputs[name] for name in SAM2_IMAGE_SIDE_INPUTS],
        [TensorSpec(SAM2_IMAGE_SIDE_OUTPUTS[0], (1, cells, dim), "float32")]
        + [TensorSpec(name, projected, "float32") for name in SAM2_IMAGE_SIDE_OUTPUTS[1:4]]
        + [
            TensorSpec(name, shape, "float32")
            for name, shape in zip(SAM2_IMAGE_SIDE_OUTPUTS[4:], rows, strict=True)
        ],
    )


def prepared_decoder_specs(model: nn.Module, config: Sam2Config) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensor specs of the SAM 2 ``mask_decoder_prepared.onnx``."""
    inputs, outputs = decoder_specs(config)
    points = [spec for spec in inputs if spec.name.startswith("point_")]
    return image_side_specs(model, config)[1] + points, outputs


def _decoder_dummies(config: Sam2Config) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    inputs, _ = decoder_specs(config)
    low = 4 * config.embedding_size
    return (
        *(torch.randn(*spec.shape, generator=generator) for spec in inputs[:3]),
        torch.randint(0, config.image_size, (2, 5, 2), generator=generator).float(),
        torch.randint(-1, 4, (2, 5), generator=generator).float(),
        torch.randn(1, 1, low, low, generator=generator),
        torch.tensor([1.0]),
    )


_DYNAMIC_AXES = {
    "point_coords": {0: "batch", 1: "num_points"},
    "point_labels": {0: "batch", 1: "num_points"},
    "mask_input": {0: "mask_batch"},
    "iou_predictions": {0: "batch"},
    "low_res_masks": {0: "batch"},
    "object_score_logits": {0: "batch"},
}


def _trace(
    module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int, inputs, outputs
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings: validation, not these, tells a good graph
        torch.onnx.export(
            module,
            args,
            str(path),
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={k: v for k, v in _DYNAMIC_AXES.items() if k in (*inputs, *outputs)},
        )


def _separate_qkv_attention(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Hiera's ``MultiScaleAttention.forward`` with q, k and v each from its own rows of the qkv
    layer's weights, instead of one product split along a middle axis afterwards. The same
    products (each output channel is the same dot product); OpenVINO ran that split with its
    reference kernel (30 ms of a Hiera tiny encoder's 740)."""
    batch, height, width, _ = x.shape
    rows = self.dim_out
    weight, bias = self.qkv.weight, self.qkv.bias
    q, k, v = (
        F.linear(
            x, weight[i * rows : (i + 1) * rows], None if bias is None else bias[i * rows : (i + 1) * rows]
        ).reshape(batch, height * width, self.num_heads, -1)
        for i in range(3)
    )
    if self.q_pool:
        from sam2.modeling.backbones.hieradet import do_pool

        q = do_pool(q.reshape(batch, height, width, -1), self.q_pool)
        height, width = q.shape[1:3]
        q = q.reshape(batch, height * width, self.num_heads, -1)
    x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return self.proj(x.transpose(1, 2).reshape(batch, height, width, -1))


def export_encoder(model: nn.Module, config: Sam2Config, path: Path, opset: int) -> None:
    from sam2.modeling.backbones.hieradet import MultiScaleAttention

    size = config.image_size
    forward = MultiScaleAttention.forward
    MultiScaleAttention.forward = _separate_qkv_attention  # type: ignore[method-assign]
    try:
        _trace(
            Sam2EncoderOnnx(model).eval(),
            (torch.zeros(1, 3, size, size),),
            path,
            opset,
            ["image"],
            SAM2_ENCODER_OUTPUTS,
        )
    finally:
        MultiScaleAttention.forward = forward  # type: ignore[method-assign]


def export_decoder(model: nn.Module, config: Sam2Config, path: Path, opset: int) -> None:
    _trace(
        Sam2DecoderOnnx(model).eval(),
        _decoder_dummies(config),
        path,
        opset,
        SAM2_DECODER_INPUTS,
        SAM2_DECODER_OUTPUTS,
    )


def export_image_side(model: nn.Module, config: Sam2Config, path: Path, opset: int) -> None:
    """Trace the decoder's per-image side (:class:`Sam2ImageSideOnnx`) to ``path``."""
    _trace(
        Sam2ImageSideOnnx(model).eval(),
        _decoder_dummies(config)[:3],
        path,
        opset,
        SAM2_IMAGE_SIDE_INPUTS,
        SAM2_IMAGE_SIDE_OUTPUTS,
    )


def export_prepared_decoder(model: nn.Module, config: Sam2Config, path: Path, opset: int) -> None:
    """Trace the decoder for prompts without a mask (:class:`Sam2PreparedDecoderOnnx`) to ``path``."""
    dummies = _decoder_dummies(config)
    features, (coords, labels) = dummies[:3], dummies[3:5]
    with torch.no_grad():
        image = Sam2ImageSideOnnx(model).eval()(*features)
    _trace(
        Sam2PreparedDecoderOnnx(model).eval(),
        (*image, coords, labels),
        path,
        opset,
        SAM2_PREPARED_DECODER_INPUTS,
        SAM2_DECODER_OUTPUTS,
    )


# ---------------------------------------------------------------------------------------------
# Validation against the official image predictor
# ---------------------------------------------------------------------------------------------


def official_predictor(model: nn.Module) -> Any:
    """``SAM2ImagePredictor`` for ``model``; its feature-map sizes follow the model's input size
    (the official class hard-codes those of 1024 px)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model)
    size = model.image_size
    predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
    return predictor


def decoder_feeds(
    predictor: Any, prompt: Any, features: dict[str, np.ndarray], mask_input: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The decoder inputs for a validation prompt, with the official coordinate transform: points
    first then box corners (labels 2, 3), always a padding point, as ``_predict`` concatenates them."""
    transforms, hw = predictor._transforms, prompt.original_size
    batch = 1 if prompt.boxes is None else len(prompt.boxes)
    coords, labels = [torch.zeros(batch, 0, 2)], [torch.zeros(batch, 0)]
    if prompt.boxes is not None:
        boxes = transforms.transform_boxes(torch.as_tensor(prompt.boxes, dtype=torch.float), True, hw)
        coords.append(boxes)
        labels.append(torch.tensor([[2.0, 3.0]]).repeat(batch, 1))
    if prompt.points is not None:
        points = transforms.transform_coords(torch.as_tensor(prompt.points, dtype=torch.float), True, hw)
        coords.append(points[None].repeat(batch, 1, 1))
        labels.append(torch.as_tensor(prompt.labels, dtype=torch.float)[None].repeat(batch, 1))
    coords.append(torch.zeros(batch, 1, 2))
    labels.append(-torch.ones(batch, 1))
    low = features["image_embed"].shape[-1] * 4
    return {
        **features,
        "point_coords": torch.cat(coords, 1).numpy(),
        "point_labels": torch.cat(labels, 1).numpy(),
        "mask_input": (mask_input if mask_input is not None else np.zeros((1, 1, low, low))).astype(
            np.float32
        ),
        "has_mask_input": np.array([float(mask_input is not None)], np.float32),
    }


@torch.no_grad()
def official_decoder(predictor: Any, prompt: Any, mask_input: np.ndarray | None) -> list[np.ndarray]:
    """The official path for all four tokens: ``[iou Bx4, low-res logits Bx4xRxR, masks Bx4xHxW]``."""
    model = predictor.model
    predictor._orig_hw = [prompt.original_size]  # the portrait case reads the embedding as another size
    _, unnorm_coords, labels, unnorm_box = predictor._prep_prompts(
        prompt.points, prompt.labels, prompt.boxes, None, True
    )
    batch = 1 if prompt.boxes is None else len(prompt.boxes)
    points = None
    if unnorm_coords is not None:
        points = (unnorm_coords.repeat(batch, 1, 1), labels.repeat(batch, 1))
    if unnorm_box is not None:
        box_labels = torch.tensor([[2, 3]], dtype=torch.int).repeat(batch, 1)
        points = (
            (unnorm_box, box_labels)
            if points is None
            else (torch.cat([unnorm_box, points[0]], 1), torch.cat([box_labels, points[1]], 1))
        )
    masks = torch.as_tensor(mask_input, dtype=torch.float) if mask_input is not None else None
    sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=masks)
    features = predictor._features
    low_res, iou, _, _ = model.sam_mask_decoder.predict_masks(
        image_embeddings=features["image_embed"],
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        repeat_image=batch > 1,
        high_res_features=features["high_res_feats"],
    )
    upscaled = predictor._transforms.postprocess_masks(low_res, prompt.original_size)
    return [iou.numpy(), low_res.numpy(), upscaled.numpy()]


def _upscale(low_res: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return F.interpolate(torch.as_tensor(low_res), size, mode="bilinear", align_corners=False).numpy()


@torch.no_grad()
def validate_sam2_package(
    model: nn.Module, encoder_path: Path, decoder_path: Path, prepared_paths: tuple[Path, Path] | None = None
) -> dict[str, Any]:
    """Compare the ONNX files with the official predictor on ``model``; returns the figures
    recorded in ``model.json`` (same keys and tolerances as SAM 1's validation, plus the
    high-resolution feature maps). With ``prepared_paths`` (the decoder's image side and the
    prepared decoder), the pair's low-res logits and IoU predictions too, for every prompt without
    a ``mask_input``."""
    from samdeploy.export.validate import VALIDATION_IMAGE_SIZE

    predictor = official_predictor(model)
    image = synthetic_image(*VALIDATION_IMAGE_SIZE)
    predictor.set_image(image)
    x = predictor._transforms(image)[None].numpy()
    reference = {
        "image_embed": predictor._features["image_embed"].numpy(),
        "high_res_feats_0": predictor._features["high_res_feats"][0].numpy(),
        "high_res_feats_1": predictor._features["high_res_feats"][1].numpy(),
    }
    encoder = _session(encoder_path)
    got = dict(zip(SAM2_ENCODER_OUTPUTS, encoder.run(list(SAM2_ENCODER_OUTPUTS), {"image": x}), strict=True))
    del encoder
    report: dict[str, Any] = {
        "reference": "sam2.sam2_image_predictor.SAM2ImagePredictor",
        "image": {"kind": "synthetic", "height": image.shape[0], "width": image.shape[1]},
        "features": {
            name: {
                "max_abs": float(np.abs(got[name] - reference[name]).max()),
                "max_rel": _max_rel(got[name], reference[name]),
                "cosine": cosine(got[name], reference[name]),
            }
            for name in SAM2_ENCODER_OUTPUTS
        },
        "decoder": {},
        "end_to_end": {},
    }
    report["embeddings"] = report["features"]["image_embed"]
    decoder = _session(decoder_path)
    outputs = ["iou_predictions", "low_res_masks"]  # fetched by name
    prepared = None
    if prepared_paths is not None:
        side = _session(prepared_paths[0]).run(
            list(SAM2_IMAGE_SIDE_OUTPUTS), {name: reference[name] for name in SAM2_IMAGE_SIDE_INPUTS}
        )
        prepared = (dict(zip(SAM2_IMAGE_SIDE_OUTPUTS, side, strict=True)), _session(prepared_paths[1]))
    previous: np.ndarray | None = None
    for prompt in _prompts(*VALIDATION_IMAGE_SIZE):
        mask_input = previous if prompt.use_mask_input else None
        want_iou, want_low, want_masks = official_decoder(predictor, prompt, mask_input)
        iou, low = decoder.run(outputs, decoder_feeds(predictor, prompt, reference, mask_input))
        masks = _upscale(low, prompt.original_size)
        if prompt.name == "point":
            best = 1 + int(np.argmax(want_iou[0, 1:]))
            previous = want_low[:, best : best + 1]
        report["decoder"][prompt.name] = {
            "masks_max_rel": _max_rel(masks, want_masks),
            "mask_agreement": float(np.mean((masks > 0) == (want_masks > 0))),
            "iou_predictions_max_abs": float(np.abs(iou - want_iou).max()),
            "low_res_max_rel": _max_rel(low, want_low),
        }
        if prepared is not None and mask_input is None:
            image_feeds, session = prepared
            feeds = decoder_feeds(predictor, prompt, reference, None)
            points = {name: feeds[name] for name in ("point_coords", "point_labels")}
            prepared_iou, prepared_low = session.run(outputs, {**image_feeds, **points})
            report["decoder"][prompt.name].update(
                prepared_max_rel=_max_rel(prepared_low, want_low),
                prepared_iou_max_abs=float(np.abs(prepared_iou - want_iou).max()),
            )
        _, chained = decoder.run(outputs, decoder_feeds(predictor, prompt, got, mask_input))
        report["end_to_end"][prompt.name] = {
            "mask_agreement": float(
                np.mean((_upscale(chained, prompt.original_size) > 0) == (want_masks > 0))
            )
        }
    cases = report["decoder"].values()
    features = report["features"]
    report["worst"] = {
        "embeddings_rel": max(f["max_rel"] for f in features.values()),
        "embeddings_cosine": min(f["cosine"] for f in features.values()),
        "mask_logits_rel": max(case["masks_max_rel"] for case in cases),
        "low_res_logits_rel": max(
            v for case in cases for v in (case["low_res_max_rel"], case.get("prepared_max_rel", 0.0))
        ),
        "iou_predictions_abs": max(
            v
            for case in cases
            for v in (case["iou_predictions_max_abs"], case.get("prepared_iou_max_abs", 0.0))
        ),
        "mask_agreement": min(case["mask_agreement"] for case in cases),
        "end_to_end_mask_agreement": min(case["mask_agreement"] for case in report["end_to_end"].values()),
    }
    report["tolerances"] = dict(TOLERANCES)
    return report


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def _load(
    checkpoint: str | Path | Mapping[str, Any] | nn.Module, config: Sam2Config | str | Path | None
) -> tuple[nn.Module, Sam2Config, dict[str, Any]]:
    if config is not None and not isinstance(config, Sam2Config):
        config = Sam2Config.from_yaml(config)
    if isinstance(checkpoint, nn.Module):
        if config is None:
            raise ExportError("exporting a SAM 2 torch module needs its config (config=...)")
        return checkpoint.eval(), config, {"source": "torch module"}
    if isinstance(checkpoint, Mapping):
        state = normalize_state_dict(checkpoint, source="state dict")
        source: dict[str, Any] = {"source": "state dict"}
    else:
        path = Path(checkpoint)
        state = load_state_dict(path)
        source = {"source": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if not is_sam2_state(state):
        raise CheckpointError("not a SAM 2 checkpoint: no sam_mask_decoder weights")
    config = config or detect_sam2_config(state)
    return load_sam2(state, config), config, source


def export_sam2(
    checkpoint: str | Path | Mapping[str, Any] | nn.Module,
    output: str | Path,
    *,
    config: Sam2Config | str | Path | None = None,
    opset: int = 17,
    simplify: str = DEFAULT_SIMPLIFIER,
    validate: bool = True,
    force: bool = False,
    console: Console | None = None,
) -> ExportReport:
    """Export a SAM 2.x checkpoint (``.pt``, a state dict, or a ``SAM2Base`` with ``config``) to a
    package folder; see the module docs for its graphs.

    ``config``: a :class:`Sam2Config` or a Hydra YAML path, for a model that is not an official
    preset (default: detected from the weights).
    Validation failures above :data:`~samdeploy.export.validate.TOLERANCES` raise
    :class:`ExportError` and write nothing.
    """
    output = Path(output)
    try:
        import hydra  # noqa: F401
        import sam2  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"SAM 2 export needs the official sam2 package ({exc.name} is missing): see docs/sam2.md to install it"
        ) from None
    check_simplifier(simplify)
    check_opset(opset)
    check_output(output, force)
    steps = _Steps(console)
    with steps.step("load", "loading checkpoint"):
        model, sam2_config, source = _load(checkpoint, config)
    check_finite_weights(model)
    _check_disk(output, sum(t.numel() * t.element_size() for t in model.state_dict().values()))
    try:
        staging = new_staging(output, console)
    except OSError as exc:
        raise ExportError(f"cannot create {output}: {exc.strerror or exc}") from None
    try:  # from here on, an error or an interrupt removes the staging folder (below)
        work = staging / ".work"
        work.mkdir()
        graphs = [
            (ENCODER, "image encoder", export_encoder),
            (DECODER, "mask decoder", export_decoder),
        ]
        if has_prepared_pair(model):
            graphs += [
                (IMAGE_SIDE, "mask decoder's image side", export_image_side),
                (PREPARED_DECODER, "prepared mask decoder", export_prepared_decoder),
            ]
        files: list[str] = []
        nodes: dict[str, dict[str, int]] = {}
        for role, label, trace in graphs:
            current, counts = trace_and_simplify(
                role,
                label,
                lambda path, trace=trace: trace(model, sam2_config, path, opset),
                work,
                simplify,
                steps,
            )
            if role == ENCODER:  # Hiera's global blocks have no relative-position terms to band
                current, rewrites = rewrite_encoder(current, work, steps, attention_rows=0)
                counts.update(rewrites)
            files += save_graph(current, staging, role, label, steps)
            nodes[role] = counts
        shutil.rmtree(work)

        report = None
        if validate:
            with steps.step("validate", "validating against PyTorch (the official SAM2ImagePredictor)"):
                prepared = (staging / f"{IMAGE_SIDE}.onnx", staging / f"{PREPARED_DECODER}.onnx")
                report = validate_sam2_package(
                    model,
                    staging / f"{ENCODER}.onnx",
                    staging / f"{DECODER}.onnx",
                    prepared if has_prepared_pair(model) else None,
                )
            problems = failures(report)
            report["passed"] = not problems
            if problems:
                raise ExportError(
                    f"validation against PyTorch failed: {'; '.join(problems)}; nothing was written"
                )
        manifest = _manifest(
            model, sam2_config, opset, simplify, staging, files, nodes, steps, source, report
        )
        write_manifest(staging, manifest)
        move_into_place(staging, output)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"writing {output} failed: {exc.strerror or _one_line(exc)}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportReport(
        output=output,
        model_type=sam2_config.model_type,
        config=sam2_config,  # type: ignore[arg-type]
        precision="fp32",
        files={f: manifest["files"][f]["bytes"] for f in files},
        nodes=nodes,
        timings=steps.timings,
        validation=report,
        manifest=manifest,
    )


def _manifest(
    model: nn.Module,
    config: Sam2Config,
    opset: int,
    simplify: str,
    staging: Path,
    files: list[str],
    nodes: dict[str, dict[str, int]],
    steps: _Steps,
    source: dict[str, Any],
    report: dict[str, Any] | None,
) -> dict[str, Any]:
    decoder = model.sam_mask_decoder
    mask_tokens = {"single": 0, "multimask": [1, 2, 3]}
    models: dict[str, Any] = {
        ENCODER: model_entry(ENCODER, encoder_specs(config)),
        DECODER: model_entry(
            DECODER, decoder_specs(config), mask_tokens=mask_tokens, contract="samdeploy-sam2"
        ),
    }
    if has_prepared_pair(model):
        models[IMAGE_SIDE] = model_entry(IMAGE_SIDE, image_side_specs(model, config))
        models[PREPARED_DECODER] = model_entry(
            PREPARED_DECODER, prepared_decoder_specs(model, config), mask_tokens=mask_tokens
        )
    grid = config.embedding_size
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": config.family,
        "model_type": config.model_type,
        "architecture": config.model,
        "image_size": config.image_size,
        "embedding_size": [grid, grid],
        "mask_input_size": [4 * grid, 4 * grid],
        "pixel_mean": list(SAM2_PIXEL_MEAN),
        "pixel_std": list(SAM2_PIXEL_STD),
        "preprocessing": {
            "resize": "square",
            "interpolation": "bilinear_antialias",
            "scale": "divide_by_255_before_resize",
            "normalize": "runtime",
            "pad": "none",
            "channel_order": "RGB",
            "layout": "NCHW",
        },
        "postprocessing": {
            "mask_threshold": 0.0,
            "upscale": "bilinear_to_original",
            "low_res_clamp": LOW_RES_CLAMP,
            "dynamic_multimask": {
                "enabled": bool(decoder.dynamic_multimask_via_stability),
                "stability_delta": float(decoder.dynamic_multimask_stability_delta),
                "stability_thresh": float(decoder.dynamic_multimask_stability_thresh),
            },
        },
        "precision": "fp32",
        "opset": opset,
        "models": models,
        "files": describe_files(staging, files),
        "export": {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": source,
            "versions": {
                "samdeploy": samdeploy.__version__,
                "torch": torch.__version__,
                "sam2": _version("sam2"),
                "onnx": onnx.__version__,
                "onnxruntime": _version("onnxruntime"),
                simplify: _version(simplify) if simplify != "none" else None,
            },
            "exporter": "torch.onnx TorchScript (dynamo=False)",
            "simplify": simplify,
            "nodes": nodes,
            "timings": steps.timings,
            "peak_rss_mb": steps.peak_rss_mb,
            "validation": report,
        },
    }
