"""The image encoder's token grid as rows of tokens: a graph rewrite for OpenVINO.

SAM's ViT (and SAM 2's Hiera) carry their residual stream channels-last, ``[B, H, W, C]``, through
every layer norm, residual add and MLP. OpenVINO's CPU plugin reads any 4D tensor as ``NCHW`` and
picks a channels-last layout for its element-wise kernels, which here means moving ``H`` (what it
takes for channels) innermost: a real transpose of the whole stream in front of and behind every
layer norm and residual add (50 ``Reorder`` nodes, 2.5% of the vit_b int8-bf16 encoder on Zen 4).
:func:`flatten_token_grid` carries the same tensors as ``[B, H*W, C]`` instead, a shape OpenVINO keeps
as it is, and reshapes back to 4D only where an operator needs the grid (padding, window partition,
the neck). A reshape moves no data, and no arithmetic changes: ONNX Runtime gives the same output to
the bit (docs/performance.md has the measurements).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from samdeploy.export.attention import drop_unused

# Operators that work on every element (or every token's channels, for the layer norm) the same way
# whatever the tensor's leading dimensions: they take the flat stream as they took the grid.
TOKENWISE = frozenset({"Add", "Sub", "Mul", "Div", "Erf", "Sqrt", "Pow", "Relu", "Sigmoid", "Tanh", "Cast"})
_LAYER_NORM = "LayerNormalization"
_SUFFIX = "/tokens"


# Initializers up to this size keep their values for shape inference (shape and index constants);
# larger ones (weights) only their shapes.
_SHAPE_CONSTANT_BYTES = 4096


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """The shape of every tensor shape inference can tell, None for a dimension it cannot.

    Inferred on a copy without the weights' values, so it works for encoders over protobuf's 2 GB
    limit (vit_h) and costs no copy of the weights, and with data propagation, so reshapes whose
    targets are computed from ``Shape`` nodes (SAM 2's Hiera) get their shapes too.
    """
    light = onnx.ModelProto(
        ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions
    )
    light.graph.node.extend(model.graph.node)
    light.graph.input.extend(model.graph.input)
    light.graph.output.extend(model.graph.output)
    for tensor in model.graph.initializer:
        if tensor.ByteSize() <= _SHAPE_CONSTANT_BYTES:
            light.graph.initializer.append(tensor)
        else:  # in its place an input of the same name, type and shape, without the bytes
            light.graph.input.append(
                helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    graph = shape_inference.infer_shapes(light, data_prop=True).graph
    shapes = {}
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return shapes


def token_grids(
    model: onnx.ModelProto, shapes: dict[str, tuple[int | None, ...]] | None = None
) -> set[tuple[int, ...]]:
    """The channels-last token grids of ``model``: the ``(H, W, C)`` of each 4D ``[B, H, W, C]``
    tensor (any ``B``) that a layer norm normalizes over its last axis."""
    shapes = tensor_shapes(model) if shapes is None else shapes
    grids = set()
    for node in model.graph.node:
        if node.op_type != _LAYER_NORM:
            continue
        shape = shapes.get(node.input[0], ())
        if len(shape) == 4 and None not in shape[1:] and _norm_axis(node) in (-1, 3):
            grids.add(shape[1:])
    return grids


def _norm_axis(node: onnx.NodeProto) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)


def _tokens(grid: tuple[int, ...]) -> tuple[int, int, int]:
    """The reshape target of a ``grid`` = (H, W, C) tensor as rows of tokens (any batch)."""
    h, w, c = grid
    return -1, h * w, c


def flatten_token_grid(model: onnx.ModelProto) -> int:
    """Carry ``model``'s channels-last token grids (:func:`token_grids`) as ``[B, H*W, C]`` (in place).

    Reshapes that make a grid tensor make the flat one instead; layer norms and element-wise
    operators (:data:`TOKENWISE`) whose other inputs are scalars, per-channel constants or grid-shaped
    constants run on it; every other reader gets the grid back through a reshape, and a grid made by
    any other operator is flattened right after it. The batch may be symbolic (the reshapes infer
    it). Returns how many tensors are now carried flat (0 when the model has no layer norm over a
    grid of known height, width and channels, or was rewritten already).
    """
    shapes = tensor_shapes(model)
    grids = token_grids(model, shapes)
    graph = model.graph
    ends = {value.name for value in [*graph.input, *graph.output]}
    constants = {t.name: t for t in graph.initializer}
    stream = {
        name: shape[1:]
        for name, shape in shapes.items()
        if len(shape) == 4 and shape[1:] in grids and name not in constants and name not in ends
    }
    if not stream:
        return 0

    def flat_constant(name: str, grid: tuple[int, ...]) -> str | None:
        """The name of ``name``'s constant broadcast against the rows of tokens as it was against
        the ``grid``, or None when it does not carry over."""
        array = numpy_helper.to_array(constants[name])
        if array.ndim <= 1 or all(d == 1 for d in array.shape[:-1]):
            target = array.shape[-1:] if array.ndim else ()
        elif array.ndim == 4 and array.shape[1:3] == grid[:2]:
            target = (array.shape[0], grid[0] * grid[1], array.shape[3])
        else:
            return None
        if tuple(target) == array.shape:
            return name
        new = f"{name}{_SUFFIX}"
        if new not in constants:
            constants[new] = numpy_helper.from_array(array.reshape(target), new)
            graph.initializer.append(constants[new])
        return new

    # Which nodes read and write the flat stream (decided before any is changed).
    old_nodes = list(graph.node)
    flat_inputs: dict[int, list[str]] = {}  # node index -> its new inputs
    made_flat: set[str] = set()  # stream tensors whose maker writes the rows directly
    for index, node in enumerate(old_nodes):
        out = node.output[0] if node.output else ""
        constant_shape = node.op_type == "Reshape" and node.input[1] in constants
        if constant_shape and node.input[0] in stream:
            # a 0 would copy a dimension the flat input lacks
            if 0 not in numpy_helper.to_array(constants[node.input[1]]):
                flat_inputs[index] = [node.input[0] + _SUFFIX, node.input[1]]
        elif (
            len(node.output) == 1
            and out in stream
            and (node.op_type in TOKENWISE or (node.op_type == _LAYER_NORM and _norm_axis(node) in (-1, 3)))
        ):
            inputs = []
            for name in node.input:
                if name in stream:
                    inputs.append(name + _SUFFIX)
                elif name == "" or (
                    name in constants and (name := flat_constant(name, stream[out])) is not None
                ):
                    inputs.append(name)
                else:
                    break
            else:
                flat_inputs[index] = inputs
        if out in stream and (index in flat_inputs or constant_shape):  # a reshape just changes target
            made_flat.add(out)
    read_as_grid = {
        name
        for index, node in enumerate(old_nodes)
        if index not in flat_inputs
        for name in node.input
        if name in stream
    }
    read_as_tokens = {name.removesuffix(_SUFFIX) for inputs in flat_inputs.values() for name in inputs}

    shape_names: dict[tuple[int, ...], str] = {}

    def shape_constant(shape: tuple[int, ...]) -> str:
        if shape not in shape_names:
            name = f"token_grid{_SUFFIX}/shape_{'x'.join(str(d) if d > 0 else 'n' for d in shape)}"
            graph.initializer.append(numpy_helper.from_array(np.asarray(shape, dtype=np.int64), name))
            shape_names[shape] = name
        return shape_names[shape]

    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(old_nodes):
        if index in flat_inputs:
            del node.input[:]
            node.input.extend(flat_inputs[index])
            if node.op_type == _LAYER_NORM:
                for attribute in node.attribute:
                    if attribute.name == "axis":
                        attribute.i = -1
        nodes.append(node)
        for name in node.output:
            if name not in stream:
                continue
            grid = stream[name]
            if name in made_flat:
                if node.op_type == "Reshape":
                    node.input[1] = shape_constant(_tokens(grid))
                node.output[0] = name + _SUFFIX
                if name in read_as_grid:
                    nodes.append(
                        helper.make_node(
                            "Reshape",
                            [name + _SUFFIX, shape_constant((-1, *grid))],
                            [name],
                            f"{name}/to_grid",
                        )
                    )
            elif name in read_as_tokens:
                nodes.append(
                    helper.make_node(
                        "Reshape",
                        [name, shape_constant(_tokens(grid))],
                        [name + _SUFFIX],
                        f"{name}/to_tokens",
                    )
                )
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused(graph)  # the grid-shaped constants now read flat, the value infos of renamed tensors
    return len(stream)
