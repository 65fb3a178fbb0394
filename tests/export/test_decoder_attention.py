"""The decoders' attention products transposed for OpenVINO keep every output.

Why: bf16 and int8-bf16 packages multiply their decoders' soft-max by the image's values as
``(V^T P^T)^T`` (``export/decoder_attention.py``) so that OpenVINO runs plain matrix products instead
of its fused attention kernel. A wrong permutation, a rank mix-up on the broadcast 4-D products of
the first layer, or a rewrite of the prompt tokens' self attention would change masks on the fast
packages only, and only on CPUs with native bf16; these tests check the rewrite itself with ONNX
Runtime, on any CPU.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from samdeploy.export.decoder_attention import transpose_value_products


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _attention_graph() -> onnx.ModelProto:
    """Prompts attending to 300 image tokens, as 3-D (layer 2) and as broadcast 4-D (layer 1) chains,
    and a self attention over 7 tokens, which must stay as it is."""
    nodes = [
        helper.make_node("Transpose", ["k3"], ["k3t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q3", "k3t"], ["s3"]),
        helper.make_node("Softmax", ["s3"], ["p3"], axis=-1),
        helper.make_node("MatMul", ["p3", "v3"], ["out3"]),
        helper.make_node("Softmax", ["s4"], ["p4"], axis=-1),
        helper.make_node("MatMul", ["p4", "v4"], ["out4"]),
        helper.make_node("Softmax", ["self_scores"], ["self_p"], axis=-1),
        helper.make_node("MatMul", ["self_p", "self_v"], ["self_out"]),
    ]
    inputs = [
        helper.make_tensor_value_info("q3", TensorProto.FLOAT, ["batch", 56, 32]),
        helper.make_tensor_value_info("k3", TensorProto.FLOAT, [1, 300, 32]),
        # its row count unknown here: the soft-max's last axis tells it (as in exported decoders)
        helper.make_tensor_value_info("v3", TensorProto.FLOAT, [1, "keys", 24]),
        helper.make_tensor_value_info("s4", TensorProto.FLOAT, ["batch", 8, 7, 300]),
        helper.make_tensor_value_info("v4", TensorProto.FLOAT, [1, 8, 300, 16]),
        helper.make_tensor_value_info("self_scores", TensorProto.FLOAT, ["batch", 8, "tokens", "tokens"]),
        helper.make_tensor_value_info("self_v", TensorProto.FLOAT, ["batch", 8, "tokens", 16]),
    ]
    outputs = [
        helper.make_tensor_value_info("out3", TensorProto.FLOAT, ["batch", 56, 24]),
        helper.make_tensor_value_info("out4", TensorProto.FLOAT, ["batch", 8, 7, 16]),
        helper.make_tensor_value_info("self_out", TensorProto.FLOAT, ["batch", 8, "tokens", 16]),
    ]
    graph = helper.make_graph(nodes, "attention", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_rewrites_only_the_products_over_image_tokens():
    model = _attention_graph()
    rng = np.random.default_rng(0)
    feed = {
        "q3": rng.standard_normal((3, 56, 32), dtype=np.float32),
        "k3": rng.standard_normal((1, 300, 32), dtype=np.float32),
        "v3": rng.standard_normal((1, 300, 24), dtype=np.float32),
        "s4": rng.standard_normal((3, 8, 7, 300), dtype=np.float32) * 4,
        "v4": rng.standard_normal((1, 8, 300, 16), dtype=np.float32),
        "self_scores": rng.standard_normal((3, 8, 7, 7), dtype=np.float32),
        "self_v": rng.standard_normal((3, 8, 7, 16), dtype=np.float32),
    }
    expected = _session(model).run(None, feed)

    assert transpose_value_products(model) == 2
    onnx.checker.check_model(model)
    products = {node.output[0]: node for node in model.graph.node}
    # the soft-max over image tokens now feeds the product's second operand; the self attention's first
    assert products["out3"].op_type == products["out4"].op_type == "Transpose"
    assert products["self_out"].op_type == "MatMul" and products["self_out"].input[0] == "self_p"
    for name, node in products.items():
        if node.op_type == "MatMul" and name != "self_out":
            assert node.input[0] not in {"p3", "p4"}
    result = _session(model).run(None, feed)
    for got, want in zip(result, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert transpose_value_products(model) == 0  # nothing left to rewrite


def test_a_graph_without_soft_max_is_left_alone():
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "plain",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 300]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [300, 4]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    assert transpose_value_products(model) == 0
    assert model.SerializeToString() == before


def test_rewritten_decoders_answer_as_the_package_does(vit_b_package, tmp_path):
    """Every decoder graph of a vit_b package, rewritten, gives the same scores and logits through the
    predictor (ONNX Runtime): one point, several points, a box, a point with a mask input."""
    from samdeploy import SamPredictor, load_model
    from samdeploy.package import describe_files, write_manifest

    copy = tmp_path / "rewritten"
    shutil.copytree(vit_b_package, copy)
    manifest = json.loads((copy / "model.json").read_text())
    rewritten = {}
    for role, entry in manifest["models"].items():
        if role == "image_encoder":
            continue
        model = onnx.load(str(copy / entry["file"]))
        rewritten[role] = transpose_value_products(model)
        onnx.save_model(model, str(copy / entry["file"]))
    assert rewritten["mask_decoder"] == 3 and rewritten["mask_decoder_prepared"] == 3
    manifest["files"] = describe_files(copy, list(manifest["files"]))
    write_manifest(copy, manifest)

    image = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    prompts = [
        {"point_coords": np.array([[200, 150]]), "point_labels": np.array([1])},
        {"point_coords": np.array([[120, 80], [300, 200], [50, 250]]), "point_labels": np.array([1, 0, 1])},
        {"box": np.array([60, 40, 330, 260]), "multimask_output": False},
    ]
    answers = []
    for package in (vit_b_package, copy):
        model = load_model(package, threads=1)
        try:
            predictor = SamPredictor(model)
            predictor.set_image(image)
            runs = [predictor.predict(**prompt) for prompt in prompts]
            _, _, logits = runs[0]
            runs.append(predictor.predict(**prompts[0], mask_input=logits[:1]))
        finally:
            model.close()
        answers.append(runs)
    for (masks, scores, logits), (new_masks, new_scores, new_logits) in zip(*answers, strict=True):
        np.testing.assert_allclose(new_scores, scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(new_logits, logits, rtol=1e-4, atol=1e-4)
        assert (new_masks != masks).mean() < 1e-4
