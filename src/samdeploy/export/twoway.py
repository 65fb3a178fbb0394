"""The mask decoder's two-way transformer, with its image-side attention products reassociated.

The decoder's cross attentions pair a handful of prompt tokens (T = 5 output tokens + the points:
7 for one point) with the N image tokens (4096 on the official 64x64 grid). The official
``Attention`` projects both sides to the internal width first, so each prompt pays for linear
layers over all N image tokens::

    tokens -> image:  scores = (q Wq)(k Wk)^T        out = softmax(scores) (v Wv) Wo
    image -> tokens:  scores = (x Wq)(K)^T           out = softmax(scores) V Wo

Per head h, matrix products can be grouped the other way round with the same result: the T
queries are taken back into the image's channel space (``(q Wq_h) Wk_h^T``, T x C), multiplied with
the raw image tokens, and the value projection is applied after the soft-max has summed them
(``(P_h v) Wv_h``: soft-max rows sum to one, so the value bias passes through unchanged; the key
bias adds a constant to each score row, which the soft-max ignores). For image -> tokens, the key
side is folded into the image's query weights (``x (Wq_h K_h^T)``) and the output projection into
the token values (``P_h (V_h Wo_h)``), its bias too: each head's soft-max row sums to one, so 1/h of
the bias on every value row of each head adds it once to every image token inside the product. What runs over the N image tokens is then a product with
h*T columns (56 for one point) instead of the internal width (128), twice per attention::

                                per prompt, vit_b decoder, one point     official   here
    layer 2 tokens -> image      k and v projections of 4096 tokens     537 MFLOP  235 MFLOP
    layer 2 image -> tokens      q and output projections               537 MFLOP  235 MFLOP
    final tokens -> image        k and v projections                    537 MFLOP  235 MFLOP
    layer 1 image -> tokens      output projection (q once per image)   268 MFLOP  117 MFLOP

Layer 1 keeps the official order where the image side is the same for every prompt (its
tokens -> image keys and values, its image -> tokens queries): computed once per call and broadcast,
they cost nothing per prompt. The grouping wins while h*T is below the internal width, i.e. up to
11 points per prompt for SAM's decoder; above that it does more arithmetic (it is still exact).

Same arithmetic up to float32 rounding (differences of ~1e-6 in the transformer's outputs); the
export's validation compares the graphs with the unmodified official modules as always.
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F


def _heads(attention: nn.Module) -> tuple[int, int]:
    """(number of heads, channels per head) of an official ``Attention``."""
    heads = attention.num_heads
    return heads, attention.internal_dim // heads


def tokens_to_image(attention: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``attention(q=q, k=k, v=v)`` for BxTxC prompt tokens attending to (1|B)xNxC image tokens."""
    heads, dim = _heads(attention)
    batch, tokens, channels = q.shape
    query = attention.q_proj(q).view(batch, tokens, heads, dim).transpose(1, 2)  # B h T d
    key_weight = attention.k_proj.weight.view(heads, dim, channels)
    query = (query @ key_weight).reshape(batch, heads * tokens, channels)  # B hT C
    probs = F.softmax((query @ k.transpose(1, 2)) / math.sqrt(dim), dim=-1)  # B hT N
    mixed = (probs @ v).view(batch, heads, tokens, channels)  # B h T C
    value_weight = attention.v_proj.weight.view(heads, dim, channels).transpose(1, 2)  # h C d
    out = mixed @ value_weight + attention.v_proj.bias.view(heads, 1, dim)  # B h T d
    return attention.out_proj(out.transpose(1, 2).reshape(batch, tokens, heads * dim))


def split_heads(attention: nn.Module, x: Tensor) -> Tensor:
    """BxNx(h*d) projections -> BxhxNxd, as the official ``Attention._separate_heads``."""
    heads, dim = _heads(attention)
    return x.view(x.shape[0], x.shape[1], heads, dim).transpose(1, 2)


def image_side(layer: nn.Module, keys: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The first layer's projections of the image tokens, the same for every prompt of an image
    (while no ``mask_input`` changes them): the keys and values its prompt tokens attend to and the
    queries its image tokens attend with, each 1xhxNxd."""
    k = keys + key_pe
    to_image, to_tokens = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    return (
        split_heads(to_image, to_image.k_proj(k)),
        split_heads(to_image, to_image.v_proj(keys)),
        split_heads(to_tokens, to_tokens.q_proj(k)),
    )


def tokens_to_projected_image(attention: nn.Module, q: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """``attention(q=q, k=k, v=v)`` with the image side already projected (:func:`image_side`):
    the official order of operations for the rest."""
    query = split_heads(attention, attention.q_proj(q))  # B h T d
    probs = F.softmax((query @ keys.transpose(2, 3)) / math.sqrt(query.shape[-1]), dim=-1)  # B h T N
    out = probs @ values  # B h T d
    return attention.out_proj(out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1))


def image_to_tokens(
    attention: nn.Module, x: Tensor, k: Tensor, v: Tensor, shared_image: bool, query: Tensor | None = None
) -> Tensor:
    """``attention(q=x, k=k, v=v)`` for (1|B)xNxC image tokens attending to BxTxC prompt tokens.

    ``shared_image``: ``x`` is the same for every prompt (batch 1), so its query projection runs
    once, in the official order (or comes projected already: ``query`` 1xhxNxd); otherwise the key
    side is folded into the query weights.
    """
    heads, dim = _heads(attention)
    batch, tokens, channels = k.shape
    keys = attention.k_proj(k).view(batch, tokens, heads, dim).transpose(1, 2)  # B h T d
    if shared_image:
        if query is None:
            query = split_heads(attention, attention.q_proj(x))  # 1 h N d
        scores = keys @ query.transpose(2, 3)  # B h T N
    else:
        query_weight = attention.q_proj.weight.view(heads, dim, channels)
        folded = (keys @ query_weight).reshape(batch, heads * tokens, channels)
        bias = (keys @ attention.q_proj.bias.view(heads, dim, 1)).reshape(batch, heads * tokens, 1)
        scores = (folded @ x.transpose(1, 2) + bias).view(batch, heads, tokens, -1)  # B h T N
    probs = _softmax_over_tokens(scores / math.sqrt(dim))
    values = attention.v_proj(v).view(batch, tokens, heads, dim).transpose(1, 2)  # B h T d
    out_weight = attention.out_proj.weight.view(channels, heads, dim).permute(1, 2, 0)  # h d C
    # Each head's soft-max row sums to one, so a 1/h share of the output bias on each head's values
    # adds the bias once per image token, inside the product (no pass over the BxNxC output).
    values = values @ out_weight + attention.out_proj.bias / heads  # B h T C
    probs = probs.reshape(batch, heads * tokens, -1).transpose(1, 2)  # B N hT
    return probs @ values.reshape(batch, heads * tokens, channels)


def _softmax_over_tokens(scores: Tensor) -> Tensor:
    """``softmax(scores, dim=2)`` of BxhxTxN scores, spelled out.

    Each image token's soft-max runs over the T prompt tokens (7 for one point). With the N image
    tokens innermost, every step is a pass over long contiguous rows, the maximum and the sum over T
    included, and the scores need no transpose to get there; a soft-max operator over a short axis
    works row by row (ONNX Runtime: 0.26 ms for one point's 4096x8x7 scores with T innermost, the
    spelled-out form on 8x7x4096 0.11 ms). A one-point click on vit_b: ONNX Runtime's decoder
    17.9 -> 17.2 ms of nodes, the bf16 package's click on OpenVINO 1.38x faster
    (docs/performance.md, "the image -> tokens soft-max").
    """
    shifted = (scores - scores.amax(dim=2, keepdim=True)).exp()
    return shifted / shifted.sum(dim=2, keepdim=True)


def two_way_transformer(
    transformer: nn.Module,
    image_embedding: Tensor,
    image_pe: Tensor,
    point_embedding: Tensor,
    projected: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """``TwoWayTransformer.forward`` (SAM's and SAM 2's) with the grouping above.

    ``image_embedding`` and ``image_pe`` are (1|B)xCxHxW (or already 1xNxC tokens), ``point_embedding``
    BxTxC; returns the processed tokens BxTxC and image tokens BxNxC, as the official forward does.
    ``projected``: the first layer's image-side projections (:func:`image_side` of the same 1xNxC
    image tokens), computed once per image instead of once per call.
    """
    keys = image_embedding.flatten(2).permute(0, 2, 1) if image_embedding.dim() == 4 else image_embedding
    key_pe = image_pe.flatten(2).permute(0, 2, 1) if image_pe.dim() == 4 else image_pe
    queries = query_pe = point_embedding
    for index, layer in enumerate(transformer.layers):
        first = index == 0  # the image tokens are still the same for every prompt
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        attention = layer.cross_attn_token_to_image
        if not first:
            out = tokens_to_image(attention, q, k, keys)
        elif projected is None:
            out = attention(q=q, k=k, v=keys)
        else:
            out = tokens_to_projected_image(attention, q, projected[0], projected[1])
        queries = layer.norm2(queries + out)
        queries = layer.norm3(queries + layer.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        image_queries = projected[2] if first and projected is not None else None
        out = image_to_tokens(
            layer.cross_attn_image_to_token, k, q, queries, shared_image=first, query=image_queries
        )
        keys = layer.norm4(keys + out)
    q, k = queries + query_pe, keys + key_pe
    queries = transformer.norm_final_attn(
        queries + tokens_to_image(transformer.final_attn_token_to_image, q, k, keys)
    )
    return queries, keys
