"""The ONNX graphs of a package, traced from the official torch modules.

* ``image_encoder``: ``image`` float32 ``1x3xSxS`` (resized, normalized and zero-padded by the
  runtime) -> ``image_embeddings`` float32 ``1xCxGxG``.
* ``mask_decoder``: the official ``SamOnnxModel`` contract (six inputs, three outputs, same names),
  with ``return_single_mask=False`` so all mask tokens come out (token 0 = single-mask output,
  1..3 = multimask outputs) and the runtime picks, as ``SamPredictor`` does.

* ``mask_decoder_low_res``: the same prompt encoder and mask decoder without ``orig_im_size`` and the
  upscale to the image size (the five official inputs; ``iou_predictions`` and ``low_res_masks``),
  plus a mask filter: ``mask_iou_threshold`` in, ``mask_indices`` out (see
  :func:`filtered_predict_masks`). ONNX Runtime computes a graph's upscale even when only
  ``low_res_masks`` is fetched, and the runtime upscales the few masks it returns itself; this graph
  is what it prompts with.
* ``mask_decoder_image`` and ``mask_decoder_prepared``: the low-res decoder cut in two where no
  ``mask_input`` is given, for interactive prompting. The first runs once per image:
  ``image_embeddings`` -> the image tokens and the first transformer layer's projections of them
  (:data:`~samdeploy.package.IMAGE_SIDE_OUTPUTS`), which are the same for every prompt of the image.
  The second takes those and ``point_coords``/``point_labels`` to ``iou_predictions`` and
  ``low_res_masks``; about a third of a one-point call's arithmetic
  (0.8 of 2.6 GFLOP for vit_b) is gone from it.

The decoder adds one freedom to the official export: axis 0 of ``point_coords``/``point_labels``
(and of ``mask_input``) is a dynamic prompt batch. ``MaskDecoder.predict_masks`` already
``repeat_interleave``-s the single image embedding over that batch, so B boxes or B points run in
one call.

Tracing uses the TorchScript exporter (``dynamo=False``): the dynamo exporter needs
``onnxscript`` and must model the decoder's data-dependent output size (``orig_im_size`` is a
tensor *value* that sets the mask height and width), while the tracer records it as ops directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from segment_anything.modeling import MaskDecoder, Sam
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.utils.onnx import SamOnnxModel
from torch.nn import functional as F

from samdeploy.export.config import SamConfig
from samdeploy.export.twoway import image_side, two_way_transformer
from samdeploy.package import (
    DECODER_INPUTS,
    IMAGE_SIDE_OUTPUTS,
    LOW_RES_DECODER_INPUTS,
    LOW_RES_DECODER_OUTPUTS,
    MASK_FILTER_INPUT,
    MASK_FILTER_OUTPUT,
    PREPARED_DECODER_INPUTS,
    TensorSpec,
)

ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")

# Dynamic axes of the decoder. "batch" is the prompt batch; mask_input has its own name because it
# may stay 1 (broadcast: the same previous mask, or none, for every prompt) while points batch.
DECODER_DYNAMIC_AXES = {
    "point_coords": {0: "batch", 1: "num_points"},
    "point_labels": {0: "batch", 1: "num_points"},
    "mask_input": {0: "mask_batch"},
    "masks": {0: "batch", 2: "height", 3: "width"},
    "iou_predictions": {0: "batch"},
    "low_res_masks": {0: "batch"},
}


class DecoderOnnxModel(SamOnnxModel):
    """``SamOnnxModel`` whose crop to the pre-padding size stays dynamic in the traced graph.

    The official ``mask_postprocessing`` crops with ``int(prepadded_size[i])``; the tracer turns that
    Python int into a constant, which bakes the dummy input's aspect ratio into the graph (masks of
    any other aspect ratio come out cropped wrongly). Slicing with the 0-d tensors keeps it an op.
    """

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """``Bx4x(4G)x(4G)`` low-res logits -> ``Bx4xHxW`` logits at ``orig_im_size`` (H, W)."""
        masks = F.interpolate(
            masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        prepadded_size = self.resize_longest_image_size(orig_im_size, self.img_size)
        masks = masks[..., : prepadded_size[0], : prepadded_size[1]]
        orig_im_size = orig_im_size.to(torch.int64)
        return F.interpolate(
            masks, size=(orig_im_size[0], orig_im_size[1]), mode="bilinear", align_corners=False
        )


class LowResDecoderOnnxModel(SamOnnxModel):
    """The official decoder graph up to the low-res logits: no ``orig_im_size``, no upscale.

    One input and one output more than the official contract let a caller skip the masks it would
    throw away (see :func:`filtered_predict_masks`): ``mask_iou_threshold`` (one float32 per mask
    token) and ``mask_indices`` (int64, the prompts whose rows ``low_res_masks`` holds).
    """

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        mask_iou_threshold: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        masks, scores, indices = filtered_predict_masks(
            self.model.mask_decoder,
            image_embeddings=image_embeddings,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=self._embed_points(point_coords, point_labels),
            dense_prompt_embeddings=self._embed_masks(mask_input, has_mask_input),
            mask_iou_threshold=mask_iou_threshold,
        )
        return scores, masks, indices


class ImageSideOnnxModel(SamOnnxModel):
    """``image_embeddings`` -> what :class:`PreparedDecoderOnnxModel` takes from an image (see
    :func:`~samdeploy.export.twoway.image_side`): the image tokens with the no-mask embedding added,
    1xNxC, and the first layer's keys, values and queries, 1xhxNxd each."""

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        prompt_encoder = self.model.prompt_encoder
        # The official decoder's dense embedding without a mask_input: no_mask_embed at every cell.
        src = image_embeddings + prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        tokens = src.flatten(2).permute(0, 2, 1)
        key_pe = prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
        return (tokens, *image_side(self.model.mask_decoder.transformer.layers[0], tokens, key_pe))


class PreparedDecoderOnnxModel(SamOnnxModel):
    """The low-res decoder for prompts without a ``mask_input``, on :class:`ImageSideOnnxModel`'s
    outputs: ``iou_predictions`` BxT and ``low_res_masks`` BxTxRxR, the official values."""

    def forward(  # type: ignore[override]
        self,
        image_tokens: torch.Tensor,
        image_keys: torch.Tensor,
        image_values: torch.Tensor,
        image_queries: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = self.model.mask_decoder
        grid = self.model.prompt_encoder.image_embedding_size
        image, hyper_in, iou = _decoder_tokens(
            decoder,
            image_tokens,
            self.model.prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1),
            self._embed_points(point_coords, point_labels),
            None,
            grid=grid,
            projected=(image_keys, image_values, image_queries),
        )
        return iou, _channels_last_upscaled_masks(decoder, image, hyper_in)


def encoder_specs(config: SamConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensor specs of ``image_encoder.onnx``."""
    size, grid = config.image_size, config.embedding_size
    return (
        [TensorSpec("image", (1, 3, size, size), "float32")],
        [TensorSpec("image_embeddings", (1, config.prompt_embed_dim, grid, grid), "float32")],
    )


def decoder_specs(config: SamConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensor specs of ``mask_decoder.onnx`` (strings name dynamic axes)."""
    grid, low, tokens = config.embedding_size, config.mask_input_size, config.num_mask_tokens
    inputs = [
        TensorSpec("image_embeddings", (1, config.prompt_embed_dim, grid, grid), "float32"),
        TensorSpec("point_coords", ("batch", "num_points", 2), "float32"),
        TensorSpec("point_labels", ("batch", "num_points"), "float32"),
        TensorSpec("mask_input", ("mask_batch", 1, low, low), "float32"),
        TensorSpec("has_mask_input", (1,), "float32"),
        TensorSpec("orig_im_size", (2,), "float32"),
    ]
    outputs = [
        TensorSpec("masks", ("batch", tokens, "height", "width"), "float32"),
        TensorSpec("iou_predictions", ("batch", tokens), "float32"),
        TensorSpec("low_res_masks", ("batch", tokens, low, low), "float32"),
    ]
    return inputs, outputs


def low_res_decoder_specs(config: SamConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensor specs of ``mask_decoder_low_res.onnx`` (with the mask filter)."""
    inputs, outputs = decoder_specs(config)
    low, tokens = config.mask_input_size, config.num_mask_tokens
    return (
        [spec for spec in inputs if spec.name in LOW_RES_DECODER_INPUTS]
        + [TensorSpec(MASK_FILTER_INPUT, (tokens,), "float32")],
        [
            TensorSpec("iou_predictions", ("batch", tokens), "float32"),
            TensorSpec("low_res_masks", ("kept", tokens, low, low), "float32"),
            TensorSpec(MASK_FILTER_OUTPUT, ("kept",), "int64"),
        ],
    )


def image_side_specs(config: SamConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensor specs of ``mask_decoder_image.onnx``."""
    grid, channels, heads = config.embedding_size, config.prompt_embed_dim, config.decoder_num_heads
    cells, dim = grid * grid, channels // config.decoder_attention_downsample_rate // heads
    projected = (1, heads, cells, dim)
    return (
        [TensorSpec("image_embeddings", (1, channels, grid, grid), "float32")],
        [TensorSpec(IMAGE_SIDE_OUTPUTS[0], (1, cells, channels), "float32")]
        + [TensorSpec(name, projected, "float32") for name in IMAGE_SIDE_OUTPUTS[1:]],
    )


def prepared_decoder_specs(config: SamConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensor specs of ``mask_decoder_prepared.onnx``."""
    point_specs = {spec.name: spec for spec in decoder_specs(config)[0]}
    _, outputs = decoder_specs(config)
    return (
        image_side_specs(config)[1] + [point_specs["point_coords"], point_specs["point_labels"]],
        [spec for spec in outputs if spec.name in LOW_RES_DECODER_OUTPUTS],
    )


def _channels_last_layer_norm(self: LayerNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``LayerNorm2d.forward`` as one LayerNormalization over the last axis of an NHWC view.

    SAM's ``LayerNorm2d`` (encoder neck, mask down- and up-scaling) normalizes over axis 1 of NCHW
    with two ReduceMeans; ONNX Runtime's CPU ReduceMean over a non-last axis is slow: on vit_b the two
    in the decoder's output upscaling took 56 of a 1-point call's 140 ms. The same mean, biased
    variance, eps inside the square root and affine run here as ORT's fused LayerNormalization.
    """
    channels = self.weight.shape[0]
    normalized = F.layer_norm(x.permute(0, 2, 3, 1), (channels,), self.weight, self.bias, self.eps)
    return normalized.permute(0, 3, 1, 2)


def _decoder_tokens(
    self: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor | None,
    grid: tuple[int, int] | None = None,
    projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transformer and the heads of ``MaskDecoder.predict_masks``, without copying the image per prompt.

    Returns the image tokens BxHxWxC (channels last), ``hyper_in`` BxTxC/8 and the IoU
    predictions BxT. The official method ``repeat_interleave``-s the image embedding and its
    positional encoding over the B prompts before the transformer. Until the first image-to-token
    attention writes into them, the image tokens are the same for every prompt (or for every
    ``mask_input``, when those come batched), so here they stay one copy and broadcast: the first
    layer's key and value projections of the 4096 image tokens (and the query projection of its
    image-to-token attention) run once per call instead of once per prompt. Same arithmetic, prompt
    by prompt. The later layers' attention products over the image tokens are grouped as
    :func:`~samdeploy.export.twoway.two_way_transformer` describes.

    With ``projected`` (the first layer's image side, see
    :func:`~samdeploy.export.twoway.image_side`), ``image_embeddings`` and ``image_pe`` are 1xNxC
    tokens with the dense embedding already added (``dense_prompt_embeddings`` None) on a ``grid``
    of (H, W) cells.
    """
    output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
    if dense_prompt_embeddings is None:
        assert grid is not None
        src, (h, w), c = image_embeddings, grid, image_embeddings.shape[-1]
    else:
        src = image_embeddings + dense_prompt_embeddings  # 1 or B copies, broadcast against B prompts
        _, c, h, w = src.shape
    hs, src = two_way_transformer(self.transformer, src, image_pe, tokens, projected)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
    )
    return src.reshape(tokens.shape[0], h, w, c), hyper_in, self.iou_prediction_head(iou_token_out)


def _shared_image_predict_masks(
    self: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.predict_masks`` as :func:`_decoder_tokens` and :func:`_channels_last_upscaled_masks`
    compute it: the same (masks, iou_pred)."""
    image, hyper_in, iou = _decoder_tokens(
        self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
    )
    return _channels_last_upscaled_masks(self, image, hyper_in), iou


def filtered_predict_masks(
    decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
    mask_iou_threshold: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``predict_masks`` that upscales only the prompts with a mask its caller can keep.

    ``mask_iou_threshold`` holds one threshold per mask token. A prompt is dropped when every
    token's predicted IoU is ``<=`` its threshold; a token whose threshold is ``-inf`` never drops
    it (all ``-inf``: every prompt kept, the official output), nor does a NaN IoU. Returns the masks
    KxTxRxR of the K kept prompts, the IoU predictions BxT of all B and the kept prompts' indices K
    (ascending). The transformer and the IoU head run for every prompt; only the output upscaling,
    about half of a prompt's arithmetic, is skipped. ``SamAutomaticMaskGenerator`` drops masks with
    ``iou_pred <= pred_iou_thresh`` before it looks at their logits, so it asks for
    ``[inf, t, t, t]`` (tokens 1..3, the multimask outputs it keeps) and the records do not change.
    """
    image, hyper_in, iou = _decoder_tokens(
        decoder, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
    )
    fails = (iou <= mask_iou_threshold) & (mask_iou_threshold > float("-inf"))
    indices = torch.nonzero(~fails.all(dim=1)).reshape(-1)
    image, hyper_in = image.index_select(0, indices), hyper_in.index_select(0, indices)
    return _channels_last_upscaled_masks(decoder, image, hyper_in), iou, indices


def _channels_last_upscaled_masks(
    decoder: torch.nn.Module,
    tokens: torch.Tensor,
    hyper_in: torch.Tensor,
    high_res: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``output_upscaling`` and the hypernetwork product on channels-last tokens: BxTx4Hx4W logits.

    ``tokens`` is the transformer's image output as BxHxWxC. The official path transposes it to
    NCHW, runs two stride-2 2x2 transposed convolutions (with a LayerNorm2d between) and multiplies
    by ``hyper_in``. A stride-2 2x2 transposed convolution writes each input cell into its own 2x2
    output block, so it is a matrix product of the cell's channels with the weights laid out as
    ``Cin x (2*2*Cout)``, bias included (``addmm``: one Gemm, no pass of its own over the output).
    The layer norm and the GELUs act on each output pixel alone, so the pixels stay in the order the
    products make them (cell, then sub-pixel) until the T final masks exist; only those (C/8 times
    smaller than the last feature map) are put in image order, in three transposes that each move
    runs of contiguous values (ONNX Runtime's CPU Transpose is several times slower when the
    innermost moved run is one value). Same products and sums as the official modules; tensors stay
    at rank 6 or less, which every backend handles (OpenVINO 2026.4 mis-executes an 8-D transpose).

    ``high_res``: SAM 2's two high-resolution feature maps as rows in the same pixel order
    (``(rows_0, rows_1)``, see ``samdeploy.export.sam2.high_res_rows``), added after each transposed
    convolution as SAM 2's ``MaskDecoder.predict_masks`` adds them (rows_1 before the layer norm,
    rows_0 before the last GELU).
    """
    first, norm, act1, second, act2 = decoder.output_upscaling
    _, height, width, channels = tokens.shape

    def block_matmul(x: torch.Tensor, conv: torch.nn.ConvTranspose2d) -> torch.Tensor:
        """P x Cin pixels -> (P*2*2) x Cout: output pixel (2y + a, 2x + b) of input pixel p at row 4p + 2a + b."""
        cin, cout = conv.weight.shape[0], conv.weight.shape[1]
        weight = conv.weight.permute(0, 2, 3, 1).reshape(cin, 4 * cout)
        bias = conv.bias.repeat(4)
        return torch.addmm(bias, x, weight).view(-1, cout)

    x = block_matmul(tokens.reshape(-1, channels), first)  # (B H W a b) x C/4
    if high_res is not None:
        x = (x.view(-1, *high_res[1].shape) + high_res[1]).view(-1, high_res[1].shape[-1])
    x = act1(F.layer_norm(x, tuple(norm.weight.shape), norm.weight, norm.bias, norm.eps))
    x = block_matmul(x, second)  # (B H W a b c d) x C/8
    if high_res is not None:
        x = (x.view(-1, *high_res[0].shape) + high_res[0]).view(-1, high_res[0].shape[-1])
    x = act2(x)
    # No reshape below names the batch, which may be 0 (the mask filter kept no prompt): a 0 there
    # would be ambiguous beside a -1, and ONNX's Reshape reads a 0 as "keep this axis".
    tokens_out = hyper_in.shape[1]
    masks = x.view(-1, 16 * height * width, x.shape[-1]) @ hyper_in.transpose(1, 2)  # B (H W a b c d) T
    # pixel (4y + 2a + c, 4x + 2b + d): first (y, a) and (x, b) together, then c and d.
    masks = masks.view(-1, height, width, 2, 2, 4 * tokens_out).permute(0, 1, 3, 2, 4, 5)  # B H a W b (c d T)
    masks = masks.reshape(-1, 16 * height * width, tokens_out).transpose(1, 2)  # B T (2H 2W c d)
    masks = masks.reshape(-1, 2 * width, 2, 2).transpose(1, 2)  # (B T 2H) c 2W d
    return masks.reshape(-1, tokens_out, 4 * height, 4 * width)


@contextmanager
def _export_patches() -> Iterator[None]:
    """While tracing, two official methods are swapped for faster graphs of the same arithmetic:
    ``LayerNorm2d.forward`` (see :func:`_channels_last_layer_norm`) and ``MaskDecoder.predict_masks``
    (see :func:`_shared_image_predict_masks`, whose output upscaling runs channels-last:
    :func:`_channels_last_upscaled_masks`). The validation compares the graphs with the
    unpatched official modules.
    """
    layer_norm, predict_masks = LayerNorm2d.forward, MaskDecoder.predict_masks
    LayerNorm2d.forward = _channels_last_layer_norm  # type: ignore[method-assign]
    MaskDecoder.predict_masks = _shared_image_predict_masks  # type: ignore[method-assign]
    try:
        yield
    finally:
        LayerNorm2d.forward = layer_norm  # type: ignore[method-assign]
        MaskDecoder.predict_masks = predict_masks  # type: ignore[method-assign]


def _export(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int, **kwargs: object
) -> None:
    with warnings.catch_warnings(), torch.no_grad(), _export_patches():
        # The tracer warns about every tensor->Python number conversion and about its own
        # deprecation; the validation step, not these warnings, is what tells a good graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), opset_version=opset, dynamo=False, do_constant_folding=True, **kwargs
        )


def export_encoder(sam: Sam, path: Path, opset: int) -> None:
    """Trace ``sam.image_encoder`` to ``path`` (weights beside it as external data if over 2 GB)."""
    size = sam.image_encoder.img_size
    dummy = torch.zeros(1, 3, size, size)
    _export(
        sam.image_encoder,
        (dummy,),
        path,
        opset,
        input_names=list(ENCODER_INPUTS),
        output_names=list(ENCODER_OUTPUTS),
    )


def _decoder_dummies(config: SamConfig) -> tuple[torch.Tensor, ...]:
    """Trace inputs of the decoder, in :data:`DECODER_INPUTS` order."""
    grid, low = config.embedding_size, config.mask_input_size
    generator = torch.Generator().manual_seed(0)
    # Dummy values only fix the trace path; every size they carry is declared dynamic.
    return (
        torch.randn(1, config.prompt_embed_dim, grid, grid, generator=generator),
        torch.randint(0, config.image_size, (1, 5, 2), generator=generator).float(),
        torch.randint(-1, 4, (1, 5), generator=generator).float(),
        torch.randn(1, 1, low, low, generator=generator),
        torch.tensor([1.0]),
        torch.tensor([1500.0, 2250.0]),
    )


def export_decoder(sam: Sam, config: SamConfig, path: Path, opset: int) -> None:
    """Trace the prompt encoder + mask decoder + mask post-processing to ``path``."""
    _export(
        DecoderOnnxModel(sam, return_single_mask=False).eval(),
        _decoder_dummies(config),
        path,
        opset,
        input_names=list(DECODER_INPUTS),
        output_names=list(DECODER_OUTPUTS),
        dynamic_axes=DECODER_DYNAMIC_AXES,
    )


def export_low_res_decoder(sam: Sam, config: SamConfig, path: Path, opset: int) -> None:
    """Trace the prompt encoder + mask decoder, without the upscale, to ``path``."""
    _export(
        LowResDecoderOnnxModel(sam, return_single_mask=False).eval(),
        # The threshold's value does not shape the trace (-inf: the dummy prompt is kept).
        (
            *_decoder_dummies(config)[: len(LOW_RES_DECODER_INPUTS)],
            torch.full((config.num_mask_tokens,), float("-inf")),
        ),
        path,
        opset,
        input_names=[*LOW_RES_DECODER_INPUTS, MASK_FILTER_INPUT],
        output_names=[*LOW_RES_DECODER_OUTPUTS, MASK_FILTER_OUTPUT],
        dynamic_axes={
            **{name: axes for name, axes in DECODER_DYNAMIC_AXES.items() if name in LOW_RES_DECODER_INPUTS},
            "iou_predictions": {0: "batch"},
            "low_res_masks": {0: "kept"},
            MASK_FILTER_OUTPUT: {0: "kept"},
        },
    )


def export_image_side(sam: Sam, config: SamConfig, path: Path, opset: int) -> None:
    """Trace the decoder's per-image side (:class:`ImageSideOnnxModel`) to ``path``."""
    _export(
        ImageSideOnnxModel(sam, return_single_mask=False).eval(),
        _decoder_dummies(config)[:1],
        path,
        opset,
        input_names=["image_embeddings"],
        output_names=list(IMAGE_SIDE_OUTPUTS),
    )


def export_prepared_decoder(sam: Sam, config: SamConfig, path: Path, opset: int) -> None:
    """Trace the decoder for prompts without a mask (:class:`PreparedDecoderOnnxModel`) to ``path``."""
    model = ImageSideOnnxModel(sam, return_single_mask=False).eval()
    embeddings, coords, labels = _decoder_dummies(config)[:3]
    with torch.no_grad():
        image = model(embeddings)
    _export(
        PreparedDecoderOnnxModel(sam, return_single_mask=False).eval(),
        (*image, coords, labels),
        path,
        opset,
        input_names=list(PREPARED_DECODER_INPUTS),
        output_names=list(LOW_RES_DECODER_OUTPUTS),
        dynamic_axes={
            **{name: axes for name, axes in DECODER_DYNAMIC_AXES.items() if name.startswith("point_")},
            "iou_predictions": {0: "batch"},
            "low_res_masks": {0: "batch"},
        },
    )
