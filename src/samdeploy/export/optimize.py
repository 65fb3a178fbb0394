"""Graph clean-up after tracing: simplification, int8 quantization, and saving with external data."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import onnx

from samdeploy.errors import ExportError
from samdeploy.export.checks import SIMPLIFIERS

# A protobuf message cannot exceed 2 GiB; stay clear of it, the graph itself needs some room.
_SINGLE_FILE_LIMIT = 1_800_000_000


def external_data_name(model_file: str) -> str:
    """Name of the one external-data file that sits beside ``model_file`` when it is too large."""
    return model_file + ".data"


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers (its weights), without serializing the model.

    Works on a model loaded with ``load_external_data=False`` too (sizes come from the dims).
    """
    total = 0
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data") and tensor.data_location != onnx.TensorProto.EXTERNAL:
            total += len(tensor.raw_data)
        else:
            count = 1
            for dim in tensor.dims:
                count *= dim
            total += count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total


def simplify(source: Path, target: Path, method: str) -> None:
    """Write ``source`` simplified by ``onnxsim`` or ``onnxslim`` to ``target``.

    Works file to file so models over the protobuf limit (their weights in external data) never
    have to be serialized in one piece; ``target`` gets external data beside it when that large.
    """
    if method not in SIMPLIFIERS or method == "none":
        raise ExportError(f"unknown simplifier '{method}': choose one of {', '.join(SIMPLIFIERS[:-1])}")
    large = weight_bytes(onnx.load(str(source), load_external_data=False)) >= _SINGLE_FILE_LIMIT
    # Both tools print tables and banners; the export shows its own progress instead.
    with contextlib.redirect_stdout(io.StringIO()):
        if method == "onnxsim":
            import onnxsim

            _, ok = onnxsim.simplify(str(source), output_path=str(target), external_data_threshold="1.8GB")
            if not ok:
                raise ExportError(
                    "onnxsim could not check the simplified graph; retry with --simplify onnxslim or none"
                )
        else:
            import onnxslim

            onnxslim.slim(str(source), str(target), save_as_external_data=large)


def quantize_int8(source: Path, target: Path, external_data: bool = True) -> None:
    """ONNX Runtime dynamic quantization: int8 weights for MatMul/Gemm, activations quantized per call.

    Weights are int8 per output channel with ``reduce_range`` (7 bits): without VNNI, x86 multiplies
    u8 x s8 pairs into saturating 16-bit sums, and full 8-bit weights overflow them (vit_b embedding
    cosine 0.981 against 0.9998 with 7 bits). MatMuls of two activations (attention) stay float32;
    convolutions stay fp32 (ConvInteger is slow on CPU and the convs are a small share of the work).
    ``external_data=False`` writes one self-contained file (fine below the 2 GB protobuf limit).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs a generic "consider pre-processing" warning on the root logger every time.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(
            source,
            target,
            op_types_to_quantize=["MatMul", "Gemm"],
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            use_external_data_format=external_data,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        logging.disable(logging.NOTSET)


def compress_weights_int8(model: onnx.ModelProto) -> int:
    """Store the constant weights of ``model``'s MatMul/Gemm layers as int8 (in place); returns how many.

    Each weight becomes int8 per output channel (symmetric, scale = max |w| / 127) feeding a
    ``DequantizeLinear``: the graph still computes in float, and a runtime that recognises the
    pattern runs those layers on int8 weights. OpenVINO does: it quantizes the activations on the
    fly, per group of ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` input channels, and multiplies int8 x int8
    with VNNI. Products of two activations (attention) and convolutions are left as they are.
    """
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    added, replaced = [], set()
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        name = node.input[1]
        if name not in initializers or users[name] != 1 or len(initializers[name].dims) != 2:
            continue
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            continue
        weight = numpy_helper.to_array(initializers[name]).astype(np.float32)
        axis = 0 if transposed else 1  # the output-channel axis of B
        scale = np.abs(weight).max(axis=1 - axis) / 127.0
        scale[scale == 0] = 1.0
        shape = (-1, 1) if axis == 0 else (1, -1)
        quantized = np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(quantized, f"{name}_int8"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{name}_zero"),
            ]
        )
        added.append(
            onnx.helper.make_node(
                "DequantizeLinear",
                [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                [f"{name}_dequantized"],
                name=f"{name}_dequantize",
                axis=axis,
            )
        )
        node.input[1] = f"{name}_dequantized"
        replaced.add(name)
    if replaced:
        kept = [init for init in model.graph.initializer if init.name not in replaced]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        nodes = added + list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return len(replaced)


def save(model: onnx.ModelProto, path: Path) -> list[str]:
    """Write ``model`` to ``path``; returns the names of the files written, relative to its folder.

    Models over the protobuf limit keep their weights in ONE external-data file
    (``<name>.onnx.data``) referenced by a relative path, so the folder can move and be loaded from
    any working directory.
    """
    if weight_bytes(model) < _SINGLE_FILE_LIMIT:
        onnx.save_model(model, str(path))
        return [path.name]
    data_name = external_data_name(path.name)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=1024,
    )
    # onnx creates the data file owner-only (0600); give it the same permissions as the model file
    # so a package installed for several users stays readable.
    os.chmod(path.parent / data_name, path.stat().st_mode & 0o777)
    return [path.name, data_name]
