"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers, reporting what really runs.

Serves the choices "cpu", "cuda" and "ort-tensorrt" (and, for backend="auto" on a machine with an
NVIDIA GPU, "ort-auto": the best providers this onnxruntime offers, quietly falling back). Precisions are the
stage files the bundle carries.
"""
from __future__ import annotations

import contextlib
import io
import threading
import warnings

import numpy as np
import onnxruntime as ort

from vdt_runtime.backends.base import Backend, check_io, nvidia_gpus
from vdt_runtime.checks import check_bool
from vdt_runtime.bundle import Bundle
from vdt_runtime.errors import BackendError, InputError
from vdt_runtime.limits import check_threads

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
# backend choice -> preferred providers, best first
PROVIDERS = {"cpu": (CPU,), "cuda": (CUDA, CPU), "ort-tensorrt": (TRT, CUDA, CPU), "ort-auto": (TRT, CUDA, CPU)}
PRECISIONS = ("fp32", "fp16", "int8")  # whatever stage files the bundle carries
# threads: intra-op threads (None: onnxruntime's default); spinning: idle pool threads busy-wait;
# fused: the onnxruntime-fused denoiser where the bundle has one (CPU provider only)
OPTIONS = {"threads": None, "graph_optimization": "all", "spinning": True, "fused": True}
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


def available(backend: str) -> str | None:
    """None when this onnxruntime offers the choice's first provider (and, for a GPU provider, the NVIDIA driver
    reports a GPU), else why not (one line). onnxruntime-gpu offers its GPU providers on any machine."""
    wanted = PROVIDERS[backend][0]
    if backend == "ort-auto":
        return None
    if wanted not in available_providers():
        return f"onnxruntime {ort.__version__} does not offer {wanted}"
    if wanted != CPU and nvidia_gpus() == 0:
        return f"onnxruntime offers {wanted}, but this machine has no NVIDIA GPU (the driver reports none)"
    return None


def precisions(bundle: Bundle, stage: str, backend: str) -> tuple[str, ...]:
    """The stage files this bundle carries, its default precision first."""
    files = [p for p in bundle.precisions(stage) if p in PRECISIONS]
    return tuple(sorted(files, key=lambda p: p != bundle.precision))


def provider_list(backend: str) -> list[str]:
    """Providers to request for a backend choice; "ort-auto" keeps only the available ones."""
    if not isinstance(backend, str) or backend not in PROVIDERS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(PROVIDERS)}")
    offered = set(available_providers())
    wanted = list(PROVIDERS[backend])
    if backend == "ort-auto":
        return [p for p in wanted if p in offered] or [CPU]
    if wanted[0] not in offered:
        raise BackendError(
            f"backend {backend!r} needs {wanted[0]}, which this onnxruntime {ort.__version__} does not offer; "
            f"available: {', '.join(sorted(offered))}"
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
    threads, spinning = check_threads(threads), check_bool("spinning", spinning)
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

    def __init__(self, bundle: Bundle, stage: str, backend: str, precision: str, options: dict):
        spec = bundle.stage(stage)
        self.stage, self.precision = stage, precision
        self.inputs, self.outputs = spec.inputs, spec.outputs
        self.requested = provider_list(backend)
        fused = check_bool("fused", options["fused"])
        threads, graph_optimization, spinning = options["threads"], options["graph_optimization"], options["spinning"]
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
        quant = bundle.manifest.get("quantization", {}).get(self.precision, {})
        # a dynamically quantized file takes ONE activation scale per call, over the whole batch
        self.batch_invariant = quant.get("mode") != "dynamic"
        source = quant.get("source")
        if source is not None and source in spec.fused.values():  # e.g. int8 quantized from the fused graph
            self.graph = "fused"
        self._check_io(path.name)
        if backend != "ort-auto" and self.providers[0] != self.requested[0]:
            detail = f" ({log.strip().splitlines()[0]})" if log.strip() else ""
            warnings.warn(
                f"backend {backend!r} asked for {self.requested[0]} but stage {stage!r} runs on "
                f"{', '.join(self.providers)}{detail}",
                RuntimeWarning,
                stacklevel=3,
            )
        self._output_names = [o.name for o in self.outputs]

    def _check_io(self, fname: str) -> None:
        """The session's real input/output names and dtypes must match the manifest's."""
        for kind, declared, actual in (("inputs", self.inputs, self.session.get_inputs()),
                                       ("outputs", self.outputs, self.session.get_outputs())):
            check_io(self.stage, fname, kind, declared, [(a.name, _ORT_TYPES.get(a.type, a.type)) for a in actual])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session; inputs are cast to the declared dtypes (contiguous)."""
        feed = self._feed(inputs)
        try:
            results = self.session.run(self._output_names, feed)
        except Exception as e:  # onnxruntime raises its own exception types
            shapes = {k: v.shape for k, v in feed.items()}
            raise BackendError(f"stage {self.stage!r} failed on inputs {shapes}: {e}") from e
        return dict(zip(self._output_names, results))

    def _release(self) -> None:
        self.session = None


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


def open(bundle: Bundle, stage: str, backend: str, precision: str, options: dict) -> OrtBackend:  # noqa: A001
    """Factory used by `vdt_runtime.backends.open_backend` (options validated for keys, merged with OPTIONS)."""
    return OrtBackend(bundle, stage, backend, precision, options)
