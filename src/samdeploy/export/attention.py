"""Chunked global attention: a graph rewrite of the traced SAM image encoder.

SAM's global-attention blocks build a heads x N x N score tensor (N = 4096 tokens for the official
64x64 grid: 805 MB for vit_b), add the two decomposed relative-position terms, soft-max it and
multiply by V: four passes over memory per block, and ONNX Runtime holds two or three such tensors
at once. :func:`chunk_global_attention` rewrites the graph so the same arithmetic runs on bands of
query rows: the scores of a band fit in cache, peak memory drops by GBs, and the result is the same
to float32 rounding (each query row's dot products, soft-max and weighted sum are computed exactly as
before, only fewer rows at a time). ``samdeploy export`` applies it by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Rows of the token grid per attention band; chosen by measurement (docs/performance.md).
DEFAULT_ATTENTION_ROWS = 4
# The same for packages that run on OpenVINO (bf16, int8-bf16): its CPU plugin fuses each band's
# chain into one attention kernel, which runs two 32-row bands 2-3% faster than sixteen 4-row ones
# and as fast as the traced chain, with less memory (docs/performance.md).
OPENVINO_ATTENTION_ROWS = 32
# Attention chains over fewer keys than this keep their scores as they are (int8_attention_scores):
# on SAM 2.1 Hiera tiny, windows of 16-64 keys lost more to rounding q and k than the int8 product
# saved, while 196-key windows (SAM's and Hiera's) and every global block gained (docs/performance.md).
MIN_INT8_KEYS = 128
# Global attention over fewer tokens than this is left alone: its scores are small enough already
# (the official 64x64 grid has 4096 tokens; the default model's 32x32 grid, 1024).
MIN_CHUNK_TOKENS = 2048


def chunk_global_attention(
    model: onnx.ModelProto, rows: int = DEFAULT_ATTENTION_ROWS, min_tokens: int = MIN_CHUNK_TOKENS
) -> int:
    """Rewrite each global-attention block of a traced SAM image encoder to work on bands of query rows.

    Matches, for every Softmax, the chain SAM's ``Attention.forward`` traces to::

        scores = MatMul(q * scale, k^T)               # [B*heads, N, N], N = qh * qw
        scores = Reshape(scores, [B*heads, qh, qw, kh, kw])
        scores = Add(Add(scores, rel_h), rel_w)       # rel_h [.., qh, qw, kh, 1], rel_w [.., qh, qw, 1, kw]
        probs  = Softmax(Reshape(scores, [B*heads, N, N]))
        out    = MatMul(probs, v)

    and replaces it by the same chain on ``rows``-row bands of the query grid (a Split of q,
    rel_h and rel_w along the query rows, one chain per band, a Concat of the outputs). Blocks
    with fewer than ``min_tokens`` tokens, or grids whose height ``rows`` does not divide, are
    left alone. Edits ``model`` in place; returns the number of blocks rewritten.
    """
    graph = model.graph
    chains = _attention_chains(graph)  # held: the ids below are of these node objects
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    def constant(name: str) -> np.ndarray | None:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producers.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute:
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    rewrites: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    for index, chain in enumerate(c for c in chains if c.rel):
        scores, softmax, weighted = chain.scores, chain.softmax, chain.weighted
        reshape_5d, add_h, add_w, reshape_3d = chain.rel
        rel_h, rel_w = chain.rel_h, chain.rel_w
        shape5, shape3 = constant(reshape_5d.input[1]), constant(reshape_3d.input[1])
        if shape5 is None or shape3 is None or shape5.shape != (5,) or shape3.shape != (3,):
            continue
        batch_heads, qh, qw, kh, kw = (int(v) for v in shape5)
        if min(qh, qw, kh, kw) <= 0 or qh * qw < min_tokens or rows <= 0 or qh % rows or rows == qh:
            continue
        bands = qh // rows
        prefix = f"{softmax.name or f'softmax_{index}'}/bands"

        def const_input(name: str, values: list[int], prefix: str = prefix) -> str:
            graph.initializer.append(
                numpy_helper.from_array(np.asarray(values, dtype=np.int64), f"{prefix}/{name}")
            )
            return f"{prefix}/{name}"

        split_q = const_input("split_q", [rows * qw] * bands)
        split_rel = const_input("split_rel", [rows] * bands)
        band_5d = const_input("shape_5d", [batch_heads, rows, qw, kh, kw])
        band_3d = const_input("shape_3d", [batch_heads, rows * qw, kh * kw])
        q_bands = [f"{prefix}/q_{b}" for b in range(bands)]
        h_bands = [f"{prefix}/rel_h_{b}" for b in range(bands)]
        w_bands = [f"{prefix}/rel_w_{b}" for b in range(bands)]
        new = [
            helper.make_node("Split", [scores.input[0], split_q], q_bands, f"{prefix}/split_q", axis=1),
            helper.make_node("Split", [rel_h, split_rel], h_bands, f"{prefix}/split_rel_h", axis=1),
            helper.make_node("Split", [rel_w, split_rel], w_bands, f"{prefix}/split_rel_w", axis=1),
        ]
        outputs = []
        for b in range(bands):
            p = f"{prefix}/{b}"
            new += [
                helper.make_node("MatMul", [q_bands[b], scores.input[1]], [f"{p}/scores"], f"{p}/qk"),
                helper.make_node("Reshape", [f"{p}/scores", band_5d], [f"{p}/scores_5d"], f"{p}/reshape_5d"),
                helper.make_node("Add", [f"{p}/scores_5d", h_bands[b]], [f"{p}/plus_h"], f"{p}/add_rel_h"),
                helper.make_node("Add", [f"{p}/plus_h", w_bands[b]], [f"{p}/plus_w"], f"{p}/add_rel_w"),
                helper.make_node("Reshape", [f"{p}/plus_w", band_3d], [f"{p}/logits"], f"{p}/reshape_3d"),
                helper.make_node("Softmax", [f"{p}/logits"], [f"{p}/probs"], f"{p}/softmax", axis=-1),
                helper.make_node("MatMul", [f"{p}/probs", weighted.input[1]], [f"{p}/out"], f"{p}/av"),
            ]
            outputs.append(f"{p}/out")
        new.append(helper.make_node("Concat", outputs, [weighted.output[0]], f"{prefix}/concat", axis=1))
        removed.update(id(node) for node in (scores, *chain.rel, softmax, weighted))
        rewrites[id(weighted)] = new  # emitted where the last node of the chain was: all inputs exist
    if not rewrites:
        return 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) in rewrites:
            nodes += rewrites[id(node)]
        elif id(node) not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused(graph)
    return len(rewrites)


def int8_attention_scores(model: onnx.ModelProto, min_keys: int = MIN_INT8_KEYS) -> int:
    """Multiply the attention scores QK^T in int8, with scales taken from q and k per call.

    For each attention chain over at least ``min_keys`` keys (SAM's pattern of
    :func:`chunk_global_attention`, banded or not, and the plain ``MatMul -> Softmax -> MatMul`` that
    scaled dot-product attention traces to in SAM 2's Hiera), q and k are divided by their largest
    magnitude per token (each query row of q, each key row of k), rounded to int8 at scale 1/127
    (``QuantizeLinear``/``DequantizeLinear``), and the product is multiplied back by both scales.
    SAM's two relative-position terms are summed first and added to the scores as one bias::

        logits = (Q8(q / |q|) @ Q8(k / |k|)^T) * |q| * |k|^T + Reshape(rel_h + rel_w)

    OpenVINO's CPU plugin recognises the int8 pair and keeps the chain in its fused attention
    kernel, now multiplying QK^T in int8 (VNNI) while the soft-max and xV stay at its inference
    precision. Nothing is calibrated: each token has its own scale, found per call, so the error is
    that of rounding each element of q and k to 1/254 of its token's range. k is rounded before the
    Transpose that makes k^T (per key row) and the Transpose, with any factor SDPA puts on k^T
    after it, moved after the rounding: the form the fused kernel takes. Chains whose key count
    shape inference cannot tell are rewritten. Edits ``model`` in place; returns the chains rewritten.
    """
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    chains = _attention_chains(graph)  # held: the ids below are of these node objects
    producers = {out: node for node in graph.node for out in node.output}
    step, zero, tiny = "int8_scores/step", "int8_scores/zero", "int8_scores/tiny"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.asarray(1.0 / 127.0, np.float32), step),
            numpy_helper.from_array(np.asarray(0, np.int8), zero),
            numpy_helper.from_array(np.asarray(np.finfo(np.float32).tiny, np.float32), tiny),
        ]
    )

    def round_rows(tensor: str, name: str) -> tuple[str, str, list[onnx.NodeProto]]:
        """``tensor`` rounded to int8 in units of each row's largest magnitude (its last axis):
        (the rounded tensor, the scales, the nodes making them)."""
        axes: dict[str, object] = {}
        reduce_inputs = [f"{name}/abs"]
        if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
            graph.initializer.append(numpy_helper.from_array(np.asarray([-1], np.int64), f"{name}/axes"))
            reduce_inputs.append(f"{name}/axes")
        else:
            axes["axes"] = [-1]
        nodes = [
            helper.make_node("Abs", [tensor], [f"{name}/abs"], f"{name}/abs"),
            helper.make_node("ReduceMax", reduce_inputs, [f"{name}/max"], f"{name}/max", keepdims=1, **axes),
            helper.make_node("Max", [f"{name}/max", tiny], [f"{name}/scale"], f"{name}/scale"),
            helper.make_node("Div", [tensor, f"{name}/scale"], [f"{name}/unit"], f"{name}/unit"),
            helper.make_node(
                "QuantizeLinear", [f"{name}/unit", step, zero], [f"{name}/int8"], f"{name}/int8"
            ),
            helper.make_node(
                "DequantizeLinear", [f"{name}/int8", step, zero], [f"{name}/rounded"], f"{name}/rounded"
            ),
        ]
        return f"{name}/rounded", f"{name}/scale", nodes

    rewrites: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    keys: dict[tuple[str, str], tuple[str, str]] = {}  # (k, its factor) -> (rounded k^T, its scales)
    shapes: dict[str, tuple[int | None, ...]] = {}
    if min_keys > 1:
        from samdeploy.export.layout import tensor_shapes  # layout imports this module

        shapes = tensor_shapes(model)
    for chain in chains:
        scores, softmax = chain.scores, chain.softmax
        transpose, factor = _k_transpose(scores.input[1], producers)
        if transpose is None:
            continue  # k^T is not a Transpose putting k's channels second to last: not a chain known here
        count = shapes.get(scores.input[1], (None,))[-1]
        if count is not None and count < min_keys:
            continue  # few keys: rounding q and k costs more than the int8 product saves
        perm = _perm(transpose)
        p = f"{scores.name}/int8"
        q, q_scale, new = round_rows(scores.input[0], f"{p}/q")
        if (transpose.input[0], factor) not in keys:  # the bands of a SAM block share their k
            k_rows, k_row_scale, k_nodes = round_rows(transpose.input[0], f"{p}/k")
            k, k_scale = f"{p}/k_t", f"{p}/k_scale_t"
            new += k_nodes + [
                helper.make_node("Transpose", [k_rows], [k], k, perm=perm),
                helper.make_node("Transpose", [k_row_scale], [k_scale], k_scale, perm=perm),
            ]
            if factor:  # the attention scale SDPA puts on k^T, kept where it was
                new.append(helper.make_node("Mul", [k, factor], [f"{k}/scaled"], f"{k}/scaled"))
                k = f"{k}/scaled"
            keys[(transpose.input[0], factor)] = (k, k_scale)
        k, k_scale = keys[(transpose.input[0], factor)]
        logits = f"{p}/scores" if chain.rel else softmax.input[0]
        new += [
            helper.make_node("MatMul", [q, k], [f"{p}/unit_scores"], f"{p}/qk"),
            helper.make_node("Mul", [f"{p}/unit_scores", q_scale], [f"{p}/row_scores"], f"{p}/times_q"),
            helper.make_node("Mul", [f"{p}/row_scores", k_scale], [logits], f"{p}/times_k"),
        ]
        if chain.rel:  # SAM: the relative-position terms summed into one bias first
            new += [
                helper.make_node("Add", [chain.rel_h, chain.rel_w], [f"{p}/rel"], f"{p}/rel"),
                helper.make_node("Reshape", [f"{p}/rel", chain.rel[3].input[1]], [f"{p}/bias"], f"{p}/bias"),
                helper.make_node("Add", [logits, f"{p}/bias"], [softmax.input[0]], f"{p}/logits"),
            ]
        removed.update(id(node) for node in (scores, *chain.rel))
        rewrites[id(softmax)] = new  # in the Softmax's place: every input exists by then
    if not rewrites:
        for name in (step, zero, tiny):
            graph.initializer.remove(next(t for t in graph.initializer if t.name == name))
        return 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes += rewrites.get(id(node), [])
        if id(node) not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(_live(nodes, {o.name for o in graph.output}))  # less the old k^T nothing reads
    drop_unused(graph)
    return len(rewrites)


def _k_transpose(k_t: str, producers: dict[str, onnx.NodeProto]) -> tuple[onnx.NodeProto | None, str]:
    """The Transpose making ``k_t`` (k^T) from k, and the factor k^T is multiplied by after it ("" if
    none): (None, "") unless that Transpose moves k's last axis (its channels) second to last."""
    node, factor = producers.get(k_t), ""
    if node is not None and node.op_type == "Mul":  # k^T times the attention scale, as SDPA traces
        for mine, other in ((0, 1), (1, 0)):
            made_by = producers.get(node.input[mine])
            if made_by is not None and made_by.op_type == "Transpose":
                node, factor = made_by, node.input[other]
                break
    perm = _perm(node) if node is not None and node.op_type == "Transpose" else []
    if len(perm) < 2 or perm[-2] != len(perm) - 1:
        return None, ""
    return node, factor


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` less those whose outputs nothing reads (graph ``outputs`` count as read), repeatedly."""
    while True:
        read = {name for node in nodes for name in node.input} | outputs
        kept = [node for node in nodes if any(out in read for out in node.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


def _perm(transpose: onnx.NodeProto) -> list[int]:
    """A Transpose node's ``perm`` (empty where it has none: the reversed axes)."""
    return next((list(a.ints) for a in transpose.attribute if a.name == "perm"), [])


@dataclass(frozen=True)
class _Chain:
    """One attention chain: the QK^T MatMul ``scores``, the ``softmax`` and the xV MatMul ``weighted``.
    SAM's (``Attention.forward``, see :func:`chunk_global_attention`) adds two relative-position terms
    in between: ``rel`` holds its 5-D Reshape, the Adds of ``rel_h`` and of ``rel_w`` and its 3-D
    Reshape. A plain chain (SAM 2's Hiera, scaled dot-product attention) has none (``rel`` empty)."""

    scores: onnx.NodeProto
    softmax: onnx.NodeProto
    weighted: onnx.NodeProto
    rel: tuple[onnx.NodeProto, ...] = ()
    rel_h: str = ""
    rel_w: str = ""


def _attention_chains(graph: onnx.GraphProto) -> list[_Chain]:
    """Every attention chain of ``graph`` whose intermediates nothing else reads, in graph order."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def parent(name: str, op_type: str) -> onnx.NodeProto | None:
        node = producers.get(name)
        return node if node is not None and node.op_type == op_type else None

    def add_parent(add: onnx.NodeProto, op_type: str) -> tuple[onnx.NodeProto | None, str | None]:
        """The input of ``add`` made by ``op_type``, and the other input."""
        for mine, other in ((0, 1), (1, 0)):
            node = parent(add.input[mine], op_type)
            if node is not None:
                return node, add.input[other]
        return None, None

    chains = []
    for softmax in (n for n in graph.node if n.op_type == "Softmax"):
        users = consumers.get(softmax.output[0], [])
        if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != softmax.output[0]:
            continue
        reshape_3d = parent(softmax.input[0], "Reshape")
        add_w = parent(reshape_3d.input[0], "Add") if reshape_3d is not None else None
        add_h, rel_w = add_parent(add_w, "Add") if add_w is not None else (None, None)
        reshape_5d, rel_h = add_parent(add_h, "Reshape") if add_h is not None else (None, None)
        scores = parent(reshape_5d.input[0], "MatMul") if reshape_5d is not None else None
        if scores is not None and rel_h and rel_w:
            chain = _Chain(scores, softmax, users[0], (reshape_5d, add_h, add_w, reshape_3d), rel_h, rel_w)
        elif (scores := parent(softmax.input[0], "MatMul")) is not None:
            chain = _Chain(scores, softmax, users[0])
        else:
            continue
        if any(len(consumers.get(n.output[0], [])) != 1 for n in (chain.scores, *chain.rel, softmax)):
            continue  # an intermediate is used elsewhere: not the pattern
        chains.append(chain)
    return chains


def drop_unused(graph: onnx.GraphProto) -> None:
    """Drop the value infos of tensors no node makes any more, and initializers no node reads."""
    produced = {out for node in graph.node for out in node.output}
    value_info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)


def unchunk_global_attention(model: onnx.ModelProto) -> int:
    """Undo :func:`chunk_global_attention`: put back each banded block's single chain.

    The chain is rebuilt as traced (the same MatMul, Reshape, Add, Add, Reshape, Softmax, MatMul on
    the whole query grid), so :func:`chunk_global_attention` can band it again with another row
    count. Edits ``model`` in place; returns the number of blocks restored (0 for a traced graph).
    """
    graph = model.graph
    nodes = {node.name: node for node in graph.node}
    initializers = {t.name: t for t in graph.initializer}
    restored: dict[str, list[onnx.NodeProto]] = {}  # band prefix -> its traced chain
    for concat in [n for n in graph.node if n.op_type == "Concat" and n.name.endswith("/bands/concat")]:
        prefix = concat.name[: -len("/concat")]
        shape_5d = initializers.get(f"{prefix}/shape_5d")
        parts = [
            nodes.get(f"{prefix}/{name}")
            for name in ("split_q", "split_rel_h", "split_rel_w", "0/qk", "0/av")
        ]
        if shape_5d is None or any(part is None for part in parts):
            continue  # not a band set this module wrote
        split_q, split_h, split_w, qk, av = parts
        batch_heads, rows, qw, kh, kw = (int(v) for v in numpy_helper.to_array(shape_5d))
        qh = rows * len(concat.input)
        name = prefix[: -len("/bands")]
        full_5d, full_3d = f"{name}/traced/shape_5d", f"{name}/traced/shape_3d"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.asarray([batch_heads, qh, qw, kh, kw], np.int64), full_5d),
                numpy_helper.from_array(np.asarray([batch_heads, qh * qw, kh * kw], np.int64), full_3d),
            ]
        )
        t = f"{name}/traced"
        restored[prefix] = [
            helper.make_node("MatMul", [split_q.input[0], qk.input[1]], [f"{t}/scores"], f"{t}/qk"),
            helper.make_node("Reshape", [f"{t}/scores", full_5d], [f"{t}/scores_5d"], f"{t}/reshape_5d"),
            helper.make_node("Add", [f"{t}/scores_5d", split_h.input[0]], [f"{t}/plus_h"], f"{t}/add_rel_h"),
            helper.make_node("Add", [f"{t}/plus_h", split_w.input[0]], [f"{t}/plus_w"], f"{t}/add_rel_w"),
            helper.make_node("Reshape", [f"{t}/plus_w", full_3d], [f"{t}/logits"], f"{t}/reshape_3d"),
            helper.make_node("Softmax", [f"{t}/logits"], [f"{t}/probs"], name, axis=-1),
            helper.make_node("MatMul", [f"{t}/probs", av.input[1]], [concat.output[0]], f"{t}/av"),
        ]
    if not restored:
        return 0
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        prefix = node.name[: -len("/concat")] if node.name.endswith("/bands/concat") else None
        if prefix in restored:
            kept += restored[prefix]  # where the bands were joined: every input exists by then
        elif not any(node.name.startswith(f"{p}/") for p in restored):
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused(graph)
    return len(restored)
