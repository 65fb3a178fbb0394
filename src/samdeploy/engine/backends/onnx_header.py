"""Read an ONNX model's input and output tensor specs without loading its weights.

Graphs need a model's tensor names when they are built, long before a backend loads the model.
This walks the protobuf fields of the ``.onnx`` file and seeks past everything else (weights,
nodes), so it costs milliseconds even for multi-gigabyte models and needs no ``onnx`` package.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from samdeploy.errors import BackendError
from samdeploy.package import TensorSpec

# Field numbers from onnx.proto.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_ELEM_TYPE, _TENSOR_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2
_INITIALIZER_NAME = 8

# onnx.TensorProto.DataType -> numpy dtype name.
ELEM_TYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "str",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
}


def _varint(f: BinaryIO) -> int:
    result = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise ValueError("truncated file")
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7


def _fields(f: BinaryIO, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or body offset, body length) of each field in [start, end)."""
    pos = start
    while pos < end:
        f.seek(pos)
        key = _varint(f)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = _varint(f)
            pos = f.tell()
            yield number, wire, value, 0
        elif wire == 2:
            length = _varint(f)
            body = f.tell()
            pos = body + length
            yield number, wire, body, length
        elif wire in (1, 5):
            pos = f.tell() + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _string(f: BinaryIO, body: int, length: int) -> str:
    f.seek(body)
    return f.read(length).decode("utf-8")


def _value_info(f: BinaryIO, body: int, length: int) -> TensorSpec:
    name, dtype, shape = "", "unknown", []
    for number, wire, value, size in _fields(f, body, body + length):
        if number == _VALUE_NAME and wire == 2:
            name = _string(f, value, size)
        elif number == _VALUE_TYPE and wire == 2:
            for tnum, twire, tval, tsize in _fields(f, value, value + size):
                if tnum != _TYPE_TENSOR or twire != 2:
                    continue
                for num, w, val, sz in _fields(f, tval, tval + tsize):
                    if num == _TENSOR_ELEM_TYPE and w == 0:
                        dtype = ELEM_TYPES.get(val, "unknown")
                    elif num == _TENSOR_SHAPE and w == 2:
                        shape = [
                            _dim(f, dval, dsz)
                            for dnum, _, dval, dsz in _fields(f, val, val + sz)
                            if dnum == _SHAPE_DIM
                        ]
    return TensorSpec(name=name, shape=tuple(shape), dtype=dtype)


def _dim(f: BinaryIO, body: int, length: int) -> int | str:
    for number, wire, value, size in _fields(f, body, body + length):
        if number == _DIM_VALUE and wire == 0:
            return value
        if number == _DIM_PARAM and wire == 2:
            return _string(f, value, size)
    return "?"


def read_onnx_specs(path: str | Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The (inputs, outputs) of an ONNX model file, weights excluded from the inputs."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            end = f.seek(0, 2)
            inputs: list[TensorSpec] = []
            outputs: list[TensorSpec] = []
            weights: set[str] = set()
            for number, wire, body, length in _fields(f, 0, end):
                if number != _MODEL_GRAPH or wire != 2:
                    continue
                for gnum, gwire, gbody, glen in _fields(f, body, body + length):
                    if gwire != 2:
                        continue
                    if gnum == _GRAPH_INPUT:
                        inputs.append(_value_info(f, gbody, glen))
                    elif gnum == _GRAPH_OUTPUT:
                        outputs.append(_value_info(f, gbody, glen))
                    elif gnum == _GRAPH_INITIALIZER:
                        weights.update(
                            _string(f, v, s)
                            for n, w, v, s in _fields(f, gbody, gbody + glen)
                            if n == _INITIALIZER_NAME
                        )
    except FileNotFoundError:
        raise BackendError(f"model file not found: {path}") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise BackendError(f"cannot read ONNX model {path}: {exc}") from None
    if not outputs:
        raise BackendError(f"{path} is not an ONNX model (no graph outputs found)")
    # Models of IR version < 4 list their weights among the graph inputs too.
    return tuple(s for s in inputs if s.name not in weights), tuple(outputs)
