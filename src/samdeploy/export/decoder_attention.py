"""The mask decoder's attention to the image, rewritten for OpenVINO: a graph rewrite of decoder graphs.

In the decoder, the prompt tokens attend to the image's tokens (56 score rows for one point, heads x
tokens, against 4096 image tokens on the official grid): ``softmax(Q K^T) V``. OpenVINO's CPU plugin
fuses every ``MatMul -> Softmax -> MatMul`` chain into one attention kernel, which on the AMX Xeon ran
these few-row chains on AVX-512 at bf16 instead of AMX: 3.8 of a one-point call's 10.7 ms of nodes
for the three chains. The fusion needs the soft-max to be the first operand of the second product;
:func:`transpose_value_products` multiplies it as ``(V^T P^T)^T`` instead, so the two products run as
plain matrix products (on AMX) and the soft-max as its own node. The same arithmetic, only the
transposed product: one-point calls of the prepared vit_b decoder at bf16 1.22-1.30x faster there,
the bf16 package's click 1.12-1.34x (ONNX Runtime, which runs these graphs where OpenVINO cannot,
takes 1.00-1.03x the time). bf16 and int8-bf16 packages apply it to their decoders
(docs/performance.md, "xeon-amx, the decoder's attention unfused on OpenVINO").
"""

from __future__ import annotations

import onnx
from onnx import helper

from samdeploy.export.layout import tensor_shapes

# Products whose values have fewer rows than this (the prompt tokens' self attention: 7 for one
# point) are left as they are: only the products over the image's tokens are rewritten.
MIN_VALUE_ROWS = 256


def _swap_last_two(rank: int) -> list[int]:
    return [*range(rank - 2), rank - 1, rank - 2]


def transpose_value_products(model: onnx.ModelProto, min_rows: int = MIN_VALUE_ROWS) -> int:
    """Rewrite each ``MatMul(Softmax(...), V)`` whose V has a known row count >= ``min_rows`` (read
    from V or from the soft-max's last axis, which the product contracts with them) as
    ``Transpose(MatMul(Transpose(V), Transpose(P)))``, in place; returns how many were rewritten.

    The output keeps its name, shape and values (up to the rounding of a product summed the same
    way); products over fewer rows, or of unknown shape, stay as they are.
    """
    graph = model.graph
    probabilities = {node.output[0] for node in graph.node if node.op_type == "Softmax"}
    if not probabilities:
        return 0
    shapes = tensor_shapes(model)
    nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[0] not in probabilities:
            nodes.append(node)
            continue
        probs, values = node.input
        p_shape, v_shape = shapes.get(probs), shapes.get(values)
        if (
            p_shape is None
            or v_shape is None
            or min(len(p_shape), len(v_shape)) < 2
            or (v_shape[-2] or p_shape[-1] or 0) < min_rows  # the rows of V are the soft-max's axis
        ):
            nodes.append(node)
            continue
        prefix = f"{node.name or node.output[0]}/values_first"
        out_rank = max(len(p_shape), len(v_shape))
        nodes += [
            helper.make_node(
                "Transpose",
                [values],
                [f"{prefix}/values_t"],
                f"{prefix}/values_t",
                perm=_swap_last_two(len(v_shape)),
            ),
            helper.make_node(
                "Transpose",
                [probs],
                [f"{prefix}/probs_t"],
                f"{prefix}/probs_t",
                perm=_swap_last_two(len(p_shape)),
            ),
            helper.make_node(
                "MatMul", [f"{prefix}/values_t", f"{prefix}/probs_t"], [f"{prefix}/out_t"], f"{prefix}/matmul"
            ),
            helper.make_node(
                "Transpose",
                [f"{prefix}/out_t"],
                [node.output[0]],
                f"{prefix}/out",
                perm=_swap_last_two(out_rank),
            ),
        ]
        rewritten += 1
    if rewritten:
        graph.ClearField("node")
        graph.node.extend(nodes)
    return rewritten
