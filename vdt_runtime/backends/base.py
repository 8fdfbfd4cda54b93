"""The one small interface every inference backend family implements, and the checks they share.

A family is one Backend subclass, registered by choice name in vdt_runtime.backends.BACKENDS. Its class side says
what it can do on this machine (`available`, `precisions`, its frozen `Options` dataclass and which option keys a
choice takes); `open(bundle, stage, plan)` builds the instance that runs one stage exactly as the plan says.
Heavy libraries (onnxruntime, openvino, tensorrt) are imported inside methods, only when a family is used.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from vdt_runtime._xp import namespace
from vdt_runtime.bundle import Bundle, TensorSpec, check_io  # noqa: F401 (check_io: re-exported for the backends)
from vdt_runtime.errors import BackendError, InputError
from vdt_runtime.limits import shorten


class Backend(ABC):
    """Runs one bundle stage. Subclasses set the instance attributes below in their constructor, and the class
    attributes and classmethods that describe the family."""

    # --- the family (class side) ---------------------------------------------------------------------------
    PRECISIONS: ClassVar[tuple[str, ...]] = ()  # compute precisions the family can run at all
    Options: ClassVar[type]  # frozen dataclass of the family's settings; __post_init__ checks types and ranges

    @classmethod
    def option_keys(cls, choice: str) -> tuple[str, ...]:
        """The option keys backend `choice` takes (default: every field of Options)."""
        return tuple(f.name for f in dataclasses.fields(cls.Options))

    @classmethod
    @abstractmethod
    def available(cls, choice: str) -> str | None:
        """None when `choice` can be used on this machine, else a one-line reason."""

    @classmethod
    @abstractmethod
    def precisions(cls, bundle: Bundle, stage: str, choice: str) -> tuple[str, ...]:
        """The precisions `choice` runs for this bundle stage here, default first."""

    @classmethod
    def provider_list(cls, choice: str) -> tuple[str, ...]:
        """What the plan asks the family's runtime for (onnxruntime: its execution providers, best first)."""
        return ()

    @classmethod
    def resolve(cls, choice: str, options):
        """The options with every machine- or choice-dependent default decided (called once, by plan())."""
        return options

    @classmethod
    def open(cls, bundle: Bundle, stage: str, plan) -> "Backend":
        """A ready backend for `stage`, exactly as `plan` (a vdt_runtime.backends.Plan) says."""
        return cls(bundle, stage, plan)

    # --- one opened stage ----------------------------------------------------------------------------------
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
    _device_state: bool = False  # a GPU backend whose run() takes and returns CuPy arrays sets it (when asked to)

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feed {input name: array}; return {output name: array}."""

    def array_namespace(self):
        """The array library run() takes and returns natively: CuPy where the backend keeps device state
        (`_device_state`) and CuPy imports, so the sampler keeps its state on the GPU; NumPy otherwise."""
        if self._device_state:
            try:
                import cupy

                return cupy
            except ImportError:
                pass
        return np

    def close(self) -> None:
        """Release the session/engine and its buffers; idempotent. run() afterwards raises BackendError."""
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:
        """Drop whatever close() frees (subclasses)."""

    def _feed(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs checked against the manifest's names and cast to its dtypes (contiguous), each in its own array
        library (a CuPy array stays on the device)."""
        if self._closed:
            raise BackendError(f"stage {self.stage!r} backend {self.name} is closed")
        dtypes = {s.name: np.dtype(s.dtype) for s in self.inputs}
        if set(inputs) != set(dtypes):
            raise InputError(f"stage {self.stage!r} takes inputs {sorted(dtypes)}, got {sorted(inputs)}")
        return {k: namespace(v).ascontiguousarray(v, dtype=dtypes[k]) for k, v in inputs.items()}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.stage} {self.precision} ({self.graph}) on {', '.join(self.providers)}>"


def check_options(choice: str, options: Any, family: type[Backend]):
    """`options` (a dict, or the family's Options itself) as the family's Options; an unknown key is refused,
    listing the keys `choice` takes, and each value is checked by Options."""
    if isinstance(options, family.Options):
        options = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
                   if getattr(options, f.name) != f.default}
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise InputError(f"options must be a dict of backend settings, got {shorten(options)}")
    allowed = family.option_keys(choice)
    unknown = sorted(set(options) - set(allowed), key=str)
    if unknown:
        raise InputError(f"backend {choice!r} does not take option(s) {', '.join(map(repr, unknown))}; "
                         f"it takes: {', '.join(allowed) or 'none'}")
    return family.Options(**options)



def number(name: str, value: Any) -> Any:
    """`value`, or the float a string spells (the CLI's -o key=2.5); other types are left to the range check."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise InputError(f"{name} must be a number, got {shorten(value)}") from None
    return value



def folder_or_none(name: str, value: Any) -> Path | None:
    """None, or a folder path (str or PathLike) as a Path."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise InputError(f"{name} must be a folder path or None, got {shorten(value)}")
    return Path(value)


def cache_folder(bundle: Bundle, path: Path, who: str) -> Path:
    """A cache folder for build outputs: created if missing, never inside the (read-only, hashed) bundle."""
    path = Path(path).expanduser().resolve()
    if path == bundle.path.resolve() or bundle.path.resolve() in path.parents:
        raise InputError(f"{who} cache_dir {str(path)!r} is inside the bundle {str(bundle.path)!r}; "
                         "bundles stay read-only, choose a folder outside it")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{who} cache_dir {str(path)!r} cannot be created: {e.strerror}") from None
    return path


# --- the NVIDIA driver, asked directly (no CUDA toolkit needed) ---------------------------------------------------


def _driver():
    """The CUDA driver library after a successful cuInit, or None (no driver, or it reports an error). Found as the
    CUDA runtime finds it: libcuda.so.1 through the dynamic loader (LD_LIBRARY_PATH first), else nvcuda on Windows."""
    for name in ("libcuda.so.1", ctypes.util.find_library("cuda"), ctypes.util.find_library("nvcuda")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            return lib if lib.cuInit(0) == 0 else None
        except (OSError, AttributeError):
            continue
    return None


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> int:
    """How many CUDA devices the NVIDIA driver reports (0 without a driver); no CUDA toolkit needed."""
    lib, count = _driver(), ctypes.c_int(0)
    try:
        if lib is None or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:
        return 0
    return count.value


@functools.lru_cache(maxsize=None)
def gpu(index: int) -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of CUDA device `index` as the driver reports it; BackendError if it cannot."""
    lib = _driver()
    dev, name, major, minor = ctypes.c_int(0), ctypes.create_string_buffer(256), ctypes.c_int(0), ctypes.c_int(0)
    try:
        ok = (lib is not None and lib.cuDeviceGet(ctypes.byref(dev), index) == 0
              and lib.cuDeviceGetName(name, 256, dev) == 0
              and lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) == 0  # COMPUTE_CAPABILITY_MAJOR
              and lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev) == 0)  # COMPUTE_CAPABILITY_MINOR
    except AttributeError:
        ok = False
    if not ok:
        raise BackendError(f"the NVIDIA driver does not describe CUDA device {index} "
                           f"(it reports {nvidia_gpus()} device(s))")
    return name.value.decode(errors="replace").strip(), (major.value, minor.value)


@functools.lru_cache(maxsize=1)
def tensorrt_library() -> str | None:
    """The version of the TensorRT library onnxruntime's TensorRT provider would load (libnvinfer), or None."""
    for soname in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so", "nvinfer_10.dll"):
        try:
            v = ctypes.CDLL(soname).getInferLibVersion()
        except (OSError, AttributeError):
            continue
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    return None
