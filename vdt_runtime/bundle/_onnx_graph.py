"""What an .onnx file states about itself, read from its protobuf bytes with neither onnx nor onnxruntime.

Bundle loading uses it before any backend opens a file: the graph's inputs and outputs (names, element
types, dims) to hold the manifest against, the external data files its tensors point to (so each one is
listed and hashed), and the model's metadata_props. Tensor payloads are skipped, never copied, so a
multi-GB model costs one pass over its field headers.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

from vdt_runtime.errors import BundleError

ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
              11: "float64", 16: "bfloat16"}
_MAX_NESTING = 32  # subgraphs inside subgraphs (If / Loop bodies); real models use a few levels

# field numbers of onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto, ...)
_MODEL_GRAPH, _MODEL_META, _MODEL_FUNCTIONS = 7, 14, 25
_FUNCTION_NODE = 7
_GRAPH_NODE, _GRAPH_INIT, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_SPARSE_INIT = 1, 5, 11, 12, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_TENSOR_EXTERNAL, _TENSOR_LOCATION_FLAG = 13, 14
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2


@dataclass(frozen=True)
class ValueInfo:
    """One graph input or output: name, element type ("float32", ...) and dims (int, axis name or None)."""

    name: str
    dtype: str
    dims: tuple[int | str | None, ...]


@dataclass
class GraphInfo:
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)
    external: set[str] = field(default_factory=set)  # external data locations, as written in the file
    metadata: dict[str, str] = field(default_factory=dict)


class _Corrupt(Exception):
    pass


def read_graph_info(path: str | os.PathLike) -> GraphInfo:
    """Inputs, outputs, external data locations and metadata of the ONNX model at `path`; BundleError if the
    file is not a readable ONNX protobuf."""
    path = Path(path)
    info = GraphInfo()
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise _Corrupt("the file is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                buf = memoryview(mm)
                problem = _parse(buf, info)
                buf.release()
            if problem is not None:
                raise _Corrupt(problem)
    except _Corrupt as e:
        raise BundleError(f"{path.name} is not a readable ONNX model ({e})") from None
    except OSError as e:
        raise BundleError(f"cannot read {path.name}: {e.strerror or e}") from None
    if not info.inputs or not info.outputs:
        raise BundleError(f"{path.name} is not a readable ONNX model (no graph inputs/outputs found)")
    return info


def _parse(buf: memoryview, info: GraphInfo) -> str | None:
    """Fill `info` from the model bytes; the reason they are corrupt, or None. The exception (and with it every
    frame holding a slice of `buf`) is gone on return, so the caller can release the mapping: raising through
    it instead turned a truncated file into a BufferError."""
    try:
        _model(buf, info)
    except _Corrupt as e:
        return str(e)
    return None


# --- protobuf wire format ------------------------------------------------------------------------
def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _Corrupt("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt("varint too long")


def _fields(buf: memoryview):
    """(field number, wire type, value) over one message; value is an int or a memoryview slice."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise _Corrupt(f"field {number} runs past the end of the data")
            value, pos = buf[pos: pos + size], pos + size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _Corrupt("truncated fixed-size field")
            value = None
        else:
            raise _Corrupt(f"unsupported wire type {wire}")
        yield number, wire, value


def _text(value) -> str:
    if not isinstance(value, memoryview):
        raise _Corrupt("a string field has the wrong wire type")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise _Corrupt("a string field is not UTF-8") from None


def _message(value) -> memoryview:
    if not isinstance(value, memoryview):
        raise _Corrupt("a message field has the wrong wire type")
    return value


# --- ONNX messages --------------------------------------------------------------------------------
def _model(buf: memoryview, info: GraphInfo) -> None:
    graphs = 0
    for number, _, value in _fields(buf):
        if number == _MODEL_GRAPH:
            graphs += 1
            _graph(_message(value), info, 0, top=True)
        elif number == _MODEL_META:
            entry = dict(_string_pair(_message(value)))
            info.metadata[entry.get("key", "")] = entry.get("value", "")
        elif number == _MODEL_FUNCTIONS:
            for n, _, v in _fields(_message(value)):
                if n == _FUNCTION_NODE:
                    _node(_message(v), info, 1)
    if graphs != 1:
        raise _Corrupt(f"expected one graph, found {graphs}")


def _graph(buf: memoryview, info: GraphInfo, depth: int, top: bool = False) -> None:
    if depth > _MAX_NESTING:
        raise _Corrupt(f"subgraphs nested deeper than {_MAX_NESTING} levels")
    for number, _, value in _fields(buf):
        if number == _GRAPH_NODE:
            _node(_message(value), info, depth)
        elif number == _GRAPH_INIT:
            _tensor(_message(value), info)
        elif number == _GRAPH_SPARSE_INIT:
            _sparse(_message(value), info)
        elif top and number in (_GRAPH_INPUT, _GRAPH_OUTPUT):
            (info.inputs if number == _GRAPH_INPUT else info.outputs).append(_value_info(_message(value)))


def _node(buf: memoryview, info: GraphInfo, depth: int) -> None:
    for number, _, value in _fields(buf):
        if number != _NODE_ATTRIBUTE:
            continue
        for n, _, v in _fields(_message(value)):
            if n in (_ATTR_T, _ATTR_TENSORS):
                _tensor(_message(v), info)
            elif n in (_ATTR_G, _ATTR_GRAPHS):
                _graph(_message(v), info, depth + 1)
            elif n in (_ATTR_SPARSE, _ATTR_SPARSES):
                _sparse(_message(v), info)


def _tensor(buf: memoryview, info: GraphInfo) -> None:
    for number, _, value in _fields(buf):
        if number == _TENSOR_EXTERNAL:
            entry = dict(_string_pair(_message(value)))
            if entry.get("key") == "location":
                info.external.add(entry.get("value", ""))


def _sparse(buf: memoryview, info: GraphInfo) -> None:
    for number, _, value in _fields(buf):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES):
            _tensor(_message(value), info)


def _string_pair(buf: memoryview):
    """StringStringEntryProto: key = 1, value = 2."""
    for number, _, value in _fields(buf):
        if number in (1, 2):
            yield ("key" if number == 1 else "value"), _text(value)


def _value_info(buf: memoryview) -> ValueInfo:
    name, dtype, dims = "", "undefined", ()
    for number, _, value in _fields(buf):
        if number == 1:
            name = _text(value)
        elif number == 2:  # TypeProto: tensor_type = 1
            for n, _, v in _fields(_message(value)):
                if n == 1:
                    dtype, dims = _tensor_type(_message(v))
    return ValueInfo(name, dtype, dims)


def _tensor_type(buf: memoryview) -> tuple[str, tuple]:
    dtype, dims = "undefined", ()
    for number, _, value in _fields(buf):
        if number == 1 and isinstance(value, int):
            dtype = ELEM_TYPES.get(value, f"type{value}")
        elif number == 2:  # TensorShapeProto: dim = 1
            dims = tuple(_dim(_message(v)) for n, _, v in _fields(_message(value)) if n == 1)
    return dtype, dims


def _dim(buf: memoryview) -> int | str | None:
    for number, _, value in _fields(buf):
        if number == 1 and isinstance(value, int):
            return value
        if number == 2:
            return _text(value)
    return None
