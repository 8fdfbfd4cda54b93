"""One external-data file for several ONNX graphs of the same model: every weight is stored (and hashed) once.

The bundle's standard denoiser and its onnxruntime-fused twin (fused_attention.py) come from the same torch
module, and the exporter stores their weights in the same layout (the fused graph's Attention takes the packed
q/k/v weight [D, 3D] that the standard graph's MatMul uses too). `share_weights` writes each distinct tensor of
the graphs once into one data file and points every graph's initializers at it (ONNX external data: location,
offset, length), so both graphs load the same bytes. Tensors are matched by content (dtype, dims, bytes), so the
sharing needs no knowledge of the graphs; a tensor only one graph has is stored once too, in the same file.
Initializers smaller than `INLINE_BYTES` stay inside their .onnx file.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data, uses_external_data

from vdt_runtime._atomic import atomic_path

INLINE_BYTES = 1024  # smaller initializers (scalars, shapes, tiny biases) stay in the graph file
PAGE = 4096  # tensors of PAGE bytes or more start on a page boundary (onnxruntime can map them)
SMALL_ALIGN = 64


@dataclass(frozen=True)
class SharingReport:
    """Bytes of external tensors per graph, and the size of the shared data file."""

    data_file: str
    data_bytes: int
    graph_bytes: dict[str, int]  # graph file name -> bytes of its tensors that live in the data file

    @property
    def saved_bytes(self) -> int:
        """What the graphs would hold in separate data files, minus the shared file."""
        return sum(self.graph_bytes.values()) - self.data_bytes


def _key(tensor: onnx.TensorProto, raw: bytes) -> tuple:
    return tensor.data_type, tuple(tensor.dims), hashlib.sha256(raw).digest()


def _raw(tensor: onnx.TensorProto) -> bytes:
    """The tensor's bytes, moved into its raw_data field (ONNX layout: little-endian, row-major) if elsewhere."""
    if not tensor.HasField("raw_data"):
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    return tensor.raw_data


def share_weights(graphs: Sequence[str | os.PathLike], data_name: str) -> SharingReport:
    """Rewrite the .onnx files `graphs` (all in one folder) so their initializers of INLINE_BYTES or more live in
    one data file `data_name` beside them, each distinct tensor once. Data files the graphs used before are
    removed. The data file and each graph are written to a temp file and renamed."""
    paths = [Path(g) for g in graphs]
    folder = paths[0].parent
    if any(p.parent != folder for p in paths):
        raise ValueError(f"graphs must share one folder, got {[str(p) for p in paths]}")
    data_path = folder / data_name
    stored: dict[tuple, tuple[int, int]] = {}  # content key -> (offset, length) in the data file
    graph_bytes: dict[str, int] = {}
    models: list[onnx.ModelProto] = []
    old_data: set[str] = set()
    with atomic_path(data_path) as tmp_data, open(tmp_data, "wb") as out:
        for path in paths:
            old_data.update(_external_locations(onnx.load(str(path), load_external_data=False)))
            model = onnx.load(str(path))  # with its weights, wherever they are
            graph_bytes[path.name] = 0
            for tensor in model.graph.initializer:
                raw = _raw(tensor)
                if len(raw) < INLINE_BYTES:
                    continue
                key = _key(tensor, raw)
                if key not in stored:
                    align = PAGE if len(raw) >= PAGE else SMALL_ALIGN
                    out.write(b"\0" * (-out.tell() % align))
                    stored[key] = (out.tell(), len(raw))
                    out.write(raw)
                offset, length = stored[key]
                set_external_data(tensor, location=data_name, offset=offset, length=length)
                tensor.ClearField("raw_data")
                graph_bytes[path.name] += length
            models.append(model)
        data_bytes = out.tell()
    for path, model in zip(paths, models):
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
        onnx.checker.check_model(str(path))  # path form: also checks the external data references
    for name in old_data - {data_name}:
        (folder / name).unlink(missing_ok=True)
    return SharingReport(data_name, data_bytes, graph_bytes)


def _external_locations(model: onnx.ModelProto) -> set[str]:
    return {entry.value for t in model.graph.initializer if uses_external_data(t)
            for entry in t.external_data if entry.key == "location"}
