"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers, reporting what really runs."""
from __future__ import annotations

import contextlib
import io
import threading
import warnings

import numpy as np
import onnxruntime as ort

from vdt_runtime.backends.base import Backend
from vdt_runtime.bundle import Bundle
from vdt_runtime.errors import BackendError, BundleError, InputError

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
# backend choice -> preferred providers, best first
PROVIDERS = {"cpu": (CPU,), "cuda": (CUDA, CPU), "tensorrt": (TRT, CUDA, CPU), "auto": (TRT, CUDA, CPU)}
GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32"}


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers (they may still fail to load)."""
    return list(ort.get_available_providers())


def provider_list(backend: str) -> list[str]:
    """Providers to request for a backend choice; "auto" keeps only the available ones."""
    if not isinstance(backend, str) or backend not in PROVIDERS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(PROVIDERS)}")
    available = set(available_providers())
    wanted = list(PROVIDERS[backend])
    if backend == "auto":
        return [p for p in wanted if p in available] or [CPU]
    if wanted[0] not in available:
        raise BackendError(
            f"backend {backend!r} needs {wanted[0]}, which this onnxruntime {ort.__version__} does not offer; "
            f"available: {', '.join(sorted(available))}"
        )
    return wanted


def session_options(threads: int | None = None, graph_optimization: str = "all",
                    spinning: bool = True) -> ort.SessionOptions:
    """SessionOptions: `threads` intra-op threads (None: onnxruntime's default), an optimisation level, and
    whether idle pool threads busy-wait (`spinning`; off frees the cores for the NumPy loop between calls)."""
    if graph_optimization not in GRAPH_OPTIMIZATION:
        raise InputError(
            f"unknown graph_optimization {graph_optimization!r}; choose one of {', '.join(GRAPH_OPTIMIZATION)}"
        )
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a positive integer or None, got {threads!r}")
    if not isinstance(spinning, bool):
        raise InputError(f"spinning must be True or False, got {spinning!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = GRAPH_OPTIMIZATION[graph_optimization]
    if threads is not None:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3  # errors only; provider fallbacks are reported by us, once
    return so


class OrtBackend(Backend):
    """One onnxruntime InferenceSession for one bundle stage."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, stage: str, backend: str = "auto", precision: str | None = None, *,
                 threads: int | None = None, graph_optimization: str = "all", spinning: bool = True,
                 fused: bool = True):
        spec = bundle.stage(stage)
        self.stage, self.precision = stage, precision or bundle.precision
        self.inputs, self.outputs = spec.inputs, spec.outputs
        self.requested = provider_list(backend)
        if not isinstance(fused, bool):
            raise InputError(f"fused must be True or False, got {fused!r}")
        # the fused graph's com.microsoft operators are measured on the CPU provider only: GPU providers get the
        # standard graph (TensorRT cannot run contrib operators at all); a GPU request that really fell back to
        # the CPU alone is reloaded with the fused graph
        fused = fused and self.precision in spec.fused
        options = session_options(threads, graph_optimization, spinning)
        self.graph = "fused" if fused and self.requested == [CPU] else "standard"
        path = bundle.file_path(stage, self.precision, fused=self.graph == "fused")
        self.session, log = _create_session(str(path), options, self.requested)
        self.providers = tuple(self.session.get_providers())
        if fused and self.graph == "standard" and self.providers == (CPU,):
            self.graph, path = "fused", bundle.file_path(stage, self.precision, fused=True)
            self.session, _ = _create_session(str(path), options, [CPU])
        source = bundle.manifest.get("quantization", {}).get(self.precision, {}).get("source")
        if source is not None and source in spec.fused.values():  # e.g. int8 quantized from the fused graph
            self.graph = "fused"
        self._check_io(path.name)
        if backend != "auto" and self.providers[0] != self.requested[0]:
            detail = f" ({log.strip().splitlines()[0]})" if log.strip() else ""
            warnings.warn(
                f"backend {backend!r} asked for {self.requested[0]} but stage {stage!r} runs on "
                f"{', '.join(self.providers)}{detail}",
                RuntimeWarning,
                stacklevel=3,
            )
        self._output_names = [o.name for o in self.outputs]
        self._dtypes = {s.name: np.dtype(s.dtype) for s in self.inputs}

    def _check_io(self, fname: str) -> None:
        """The session's real input/output names and dtypes must match the manifest's."""
        for kind, declared, actual in (("inputs", self.inputs, self.session.get_inputs()),
                                       ("outputs", self.outputs, self.session.get_outputs())):
            want = [(s.name, s.dtype) for s in declared]
            got = [(a.name, _ORT_TYPES.get(a.type, a.type)) for a in actual]
            if want != got:
                raise BundleError(
                    f"stage {self.stage!r}: {fname} has {kind} {got}, but the manifest declares {want}"
                )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session; inputs are cast to the declared dtypes (contiguous)."""
        if set(inputs) != set(self._dtypes):
            raise InputError(f"stage {self.stage!r} takes inputs {sorted(self._dtypes)}, got {sorted(inputs)}")
        feed = {k: np.ascontiguousarray(v, dtype=self._dtypes[k]) for k, v in inputs.items()}
        try:
            results = self.session.run(self._output_names, feed)
        except Exception as e:  # onnxruntime raises its own exception types
            shapes = {k: v.shape for k, v in feed.items()}
            raise BackendError(f"stage {self.stage!r} failed on inputs {shapes}: {e}") from e
        return dict(zip(self._output_names, results))


# sys.stdout and the default logger severity are process-wide: sessions are created one at a time, or two
# threads loading pipelines would each restore the other's redirect and leave sys.stdout captured for good
_SESSION_LOCK = threading.Lock()


def _create_session(path: str, options: ort.SessionOptions, providers: list[str]):
    """An InferenceSession with onnxruntime's fallback chatter captured instead of printed."""
    quiet = providers != [CPU]
    out = io.StringIO()
    with _SESSION_LOCK:
        if quiet:
            ort.set_default_logger_severity(4)
        try:
            with contextlib.redirect_stdout(out):
                session = ort.InferenceSession(path, options, providers=providers)
        except Exception as e:
            raise BackendError(f"onnxruntime could not load {path} with {providers}: {e}") from e
        finally:
            if quiet:
                ort.set_default_logger_severity(2)
    return session, out.getvalue()


def open(bundle: Bundle, stage: str, backend: str, precision: str | None, **opts) -> OrtBackend:  # noqa: A001
    """Factory used by `vdt_runtime.backends.open_backend`."""
    return OrtBackend(bundle, stage, backend, precision, **opts)
