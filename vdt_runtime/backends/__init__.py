"""Backend factory: `open_backend(bundle, stage, backend, precision, **opts)`; one file per backend."""
from __future__ import annotations

from vdt_runtime.backends.base import Backend
from vdt_runtime.bundle import Bundle
from vdt_runtime.errors import InputError

# backend choice -> module implementing it (imported only when chosen). A native TensorRT
# backend would add e.g. "trt-native": "vdt_runtime.backends.tensorrt" here and nothing else.
BACKENDS = {
    "auto": "vdt_runtime.backends.ort",
    "cpu": "vdt_runtime.backends.ort",
    "cuda": "vdt_runtime.backends.ort",
    "tensorrt": "vdt_runtime.backends.ort",
}


def open_backend(bundle: Bundle, stage: str, backend: str = "auto", precision: str | None = None, **opts) -> Backend:
    """A ready Backend for `stage` of `bundle`; each backend module exposes `open(bundle, stage, backend, precision, **opts)`."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    precision = precision or bundle.precision
    if precision not in bundle.precisions(stage):
        raise InputError(
            f"precision {precision!r} is not in this bundle for stage {stage!r}; "
            f"available: {', '.join(bundle.precisions(stage))}"
        )
    import importlib

    module = importlib.import_module(BACKENDS[backend])
    return module.open(bundle, stage, backend, precision, **opts)


__all__ = ["BACKENDS", "Backend", "open_backend"]
