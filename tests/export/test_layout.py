"""The token grid carried as rows of tokens (samdeploy.export.layout): same outputs, no 4D stream."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, shape_inference

from samdeploy.export.layout import flatten_token_grid, token_grids


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def norm_input_ranks(model: onnx.ModelProto) -> list[int]:
    inferred = shape_inference.infer_shapes(model)
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.graph.value_info, *inferred.graph.input]
    }
    return [ranks[n.input[0]] for n in inferred.graph.node if n.op_type == "LayerNormalization"]


def test_the_encoder_gives_the_same_embedding_to_the_bit(tiny_sam, tiny_package, tmp_path) -> None:
    from samdeploy.export.models import export_encoder
    from samdeploy.export.optimize import simplify

    export_encoder(tiny_sam, tmp_path / "traced.onnx", opset=17)
    simplify(tmp_path / "traced.onnx", tmp_path / "simplified.onnx", "onnxsim")  # as samdeploy export does
    model = onnx.load(str(tmp_path / "simplified.onnx"))
    image = np.random.default_rng(0).standard_normal((1, 3, 256, 256), dtype=np.float32)
    before = run(model, {"image": image})
    assert token_grids(model) == {(16, 16, 64), (16, 16, 256)}  # the blocks, the neck
    assert set(norm_input_ranks(model)) == {4}

    flat = flatten_token_grid(model)

    onnx.checker.check_model(model, full_check=True)
    assert flat > 0
    assert set(norm_input_ranks(model)) == {3}  # every layer norm reads rows of tokens
    after = run(model, {"image": image})
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert flatten_token_grid(model) == 0  # nothing left to rewrite
    assert not any(t.name == "pos_embed" for t in model.graph.initializer)  # only its flat copy is kept
    exported = onnx.load(str(tiny_package / "image_encoder.onnx"))  # samdeploy export does the same
    assert token_grids(exported) == set() and set(norm_input_ranks(exported)) == {3}


def _grid_graph() -> onnx.ModelProto:
    """A small channels-last stream with every kind of reader the rewrite tells apart."""
    b, g, c = 1, 4, 8
    rng = np.random.default_rng(1)

    def const(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    initializers = [
        const("pos", (1, g, g, c)),  # grid-shaped: flattened with the stream
        const("gamma", (c,)),
        const("beta", (c,)),
        const("scale", (1, 1, 1, c)),  # per channel, 4D: broadcast as [C]
        const("by_column", (g, c)),  # broadcasts over the grid's columns: no flat equivalent
        numpy_helper.from_array(np.asarray([0, g * g, c], dtype=np.int64), "copy_batch"),
        numpy_helper.from_array(np.asarray([0, 1, 1, 0, 0, 1, 1, 0], dtype=np.int64), "pads"),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["grid"], perm=[0, 2, 3, 1]),  # made by a non-reshape
        helper.make_node("Add", ["grid", "pos"], ["a"]),
        helper.make_node("LayerNormalization", ["a", "gamma", "beta"], ["n"], axis=3, epsilon=1e-6),
        helper.make_node("Mul", ["n", "scale"], ["m"]),
        helper.make_node("Mul", ["m", "by_column"], ["col"]),  # stays on the grid
        helper.make_node("Reshape", ["col", "copy_batch"], ["rows"]),  # a 0 in its shape: reads the grid
        helper.make_node("Pad", ["m", "pads"], ["padded"]),  # needs the grid back
        helper.make_node("Add", ["m", "a"], ["out"]),  # a graph output: stays 4D
    ]
    graph = helper.make_graph(
        nodes,
        "grid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, c, g, g])],
        [
            helper.make_tensor_value_info("rows", TensorProto.FLOAT, [b, g * g, c]),
            helper.make_tensor_value_info("padded", TensorProto.FLOAT, [b, g + 2, g + 2, c]),
            helper.make_tensor_value_info("out", TensorProto.FLOAT, [b, g, g, c]),
        ],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_each_reader_gets_the_shape_it_needs() -> None:
    model = _grid_graph()
    x = np.random.default_rng(2).standard_normal((1, 8, 4, 4), dtype=np.float32)
    before = run(model, {"x": x})

    assert flatten_token_grid(model) == 5  # grid, a, n, m, col

    onnx.checker.check_model(model, full_check=True)
    after = run(model, {"x": x})
    for name, a, b in zip(("rows", "padded", "out"), before, after, strict=True):
        assert a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-6), name
    made = {n.output[0]: n for n in model.graph.node}
    # The stream itself: the add with the grid-shaped constant, the norm, the per-channel product.
    assert made["a/tokens"].op_type == "Add" and list(made["a/tokens"].input) == ["grid/tokens", "pos/tokens"]
    assert made["n/tokens"].op_type == "LayerNormalization"
    assert [a.i for a in made["n/tokens"].attribute if a.name == "axis"] == [-1]
    assert list(made["m/tokens"].input) == ["n/tokens", "scale/tokens"]
    # Made by a transpose, or by a product that only broadcasts on the grid: flattened right after.
    assert made["grid"].op_type == "Transpose" and list(made["grid/tokens"].input)[0] == "grid"
    assert list(made["col"].input) == ["m", "by_column"] and "col/tokens" not in made  # no flat reader
    # Readers that need the grid get it back; the graph's outputs keep their shapes.
    assert made["m"].op_type == "Reshape" and made["m"].input[0] == "m/tokens"
    assert made["padded"].input[0] == "m" and made["rows"].input[0] == "col"
    assert list(made["out"].input) == ["m", "a"]


def test_a_symbolic_batch_is_inferred_by_the_reshapes() -> None:
    model = _grid_graph()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    x = np.random.default_rng(3).standard_normal((2, 8, 4, 4), dtype=np.float32)
    before = run(model, {"x": x})

    assert flatten_token_grid(model) == 5

    after = run(model, {"x": x})
    assert all(
        a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-6)
        for a, b in zip(before, after, strict=True)
    )
