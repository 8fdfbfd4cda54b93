"""The one small interface every inference backend implements, and the checks they share."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from abc import ABC, abstractmethod
from typing import Any, Mapping

import numpy as np

from vdt_runtime.bundle import TensorSpec, check_io  # noqa: F401 (check_io: re-exported for the backends)
from vdt_runtime.errors import BackendError, BundleError, InputError
from vdt_runtime.limits import shorten


class Backend(ABC):
    """Runs one bundle stage. Subclasses set the attributes below in their constructor."""

    name: str  # backend family, e.g. "onnxruntime", "openvino"
    stage: str  # bundle stage it runs: denoiser, vae_encoder, vae_decoder
    precision: str  # the compute precision that really runs: fp32 | fp16 | bf16 | int8
    inputs: tuple[TensorSpec, ...]  # declared I/O contract from the manifest
    outputs: tuple[TensorSpec, ...]
    providers: tuple[str, ...]  # what really runs (not what was asked for), e.g. ORT providers, "OpenVINO:CPU"
    graph: str = "standard"  # "fused" (onnxruntime contrib operators) | "standard" | "engine"
    # False when an item's result depends on what else is in its batch (e.g. dynamic INT8: one activation scale
    # per call); Pipeline.generate then runs the stage item by item, so batching never changes a request's bytes
    batch_invariant: bool = True
    _closed: bool = False

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feed {input name: array}; return {output name: array}."""

    def array_namespace(self):
        """The array library run() takes and returns natively: NumPy here; a GPU backend may return CuPy so the
        sampler keeps its state on the device."""
        return np

    def close(self) -> None:
        """Release the session/engine and its buffers; idempotent. run() afterwards raises BackendError."""
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:
        """Drop whatever close() frees (subclasses)."""

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs checked against the manifest's names and cast to its dtypes (contiguous)."""
        if self._closed:
            raise BackendError(f"stage {self.stage!r} backend {self.name} is closed")
        dtypes = {s.name: np.dtype(s.dtype) for s in self.inputs}
        if set(inputs) != set(dtypes):
            raise InputError(f"stage {self.stage!r} takes inputs {sorted(dtypes)}, got {sorted(inputs)}")
        return {k: np.ascontiguousarray(v, dtype=dtypes[k]) for k, v in inputs.items()}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.stage} {self.precision} ({self.graph}) on {', '.join(self.providers)}>"


def check_options(backend: str, options: Mapping[str, Any] | None, allowed: Mapping[str, Any]) -> dict[str, Any]:
    """`options` merged over a backend's defaults; an unknown key is refused, listing the allowed ones."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise InputError(f"options must be a dict of backend settings, got {shorten(options)}")
    unknown = sorted(set(options) - set(allowed), key=str)
    if unknown:
        raise InputError(f"backend {backend!r} does not take option(s) {', '.join(map(repr, unknown))}; "
                         f"it takes: {', '.join(allowed) or 'none'}")
    return {**allowed, **options}


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> int:
    """How many CUDA devices the NVIDIA driver reports (0 without a driver); no CUDA toolkit needed."""
    name = ctypes.util.find_library("cuda") or ctypes.util.find_library("nvcuda")
    try:
        lib = ctypes.CDLL(name or "libcuda.so.1")
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    except (OSError, AttributeError):
        return 0
