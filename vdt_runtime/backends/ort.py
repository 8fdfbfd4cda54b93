"""ONNX Runtime family: the choices "cpu", "cuda" and "ort-tensorrt", reporting the providers sessions really got.

The plan fixes the provider list (best first) and the options; the provider options of each stage follow from them
(`provider_options`): CUDA's device, arena, cuDNN search, TF32 off and CUDA graphs; TensorRT's engine and timing
caches in folders outside the bundle keyed like the native engine cache (backends/trt_engines.py), its
optimization profile from the manifest's min/opt/max and its fp16 flag. With `io_binding` (on by default on GPU
choices) a call binds its inputs and outputs where they live: CuPy arrays stay on the device (no host round trip
per step when the sampler state lives on the GPU), NumPy arrays are copied once. `cuda_graph` keeps one set of
buffers per input shape so onnxruntime can capture and replay a CUDA graph for it. Precisions are the stage files
the bundle carries; onnxruntime is imported only when this family is used.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vdt_runtime._xp import namespace, to_numpy
from vdt_runtime.backends import trt_engines as engines
from vdt_runtime.backends.base import (Backend, cache_folder, check_io, folder_or_none, gpu, nvidia_gpus, number,
                                       tensorrt_library)
from vdt_runtime.checks import check_bool, check_choice, check_int, check_int_or_none
from vdt_runtime.bundle import Bundle
from vdt_runtime.errors import BackendError, InputError
from vdt_runtime.limits import check_threads

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_PROVIDERS = (TRT, CUDA)
# backend choice -> providers to ask for, best first (those this onnxruntime offers; the first one must be offered)
PROVIDERS = {"cpu": (CPU,), "cuda": (CUDA, CPU), "ort-tensorrt": (TRT, CUDA, CPU)}
GRAPH_OPTIMIZATION = ("disable", "basic", "extended", "all")
_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}
ARENA_EXTEND = ("kNextPowerOfTwo", "kSameAsRequested")
CUDNN_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
_CPU_KEYS = ("threads", "graph_optimization", "spinning", "fused", "io_binding")
_CUDA_KEYS = ("device_id", "gpu_mem_limit", "arena_extend_strategy", "cudnn_conv_algo_search", "cuda_graph",
              "device_state")
_TRT_KEYS = ("cache_dir", "workspace_gb")
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32"}


def _ort():
    import onnxruntime

    return onnxruntime


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers (they may still fail to load)."""
    return list(_ort().get_available_providers())


@dataclasses.dataclass(frozen=True)
class OrtOptions:
    """onnxruntime settings. CPU choice: the first five; "cuda" adds the CUDA ones; "ort-tensorrt" all."""

    threads: int | None = None  # intra-op threads (None: onnxruntime's default)
    graph_optimization: str = "all"  # disable | basic | extended | all
    spinning: bool = True  # idle pool threads busy-wait (off frees the cores for the NumPy loop between calls)
    fused: bool = True  # the onnxruntime-fused denoiser where the bundle has one (CPU provider only)
    io_binding: bool | None = None  # bind inputs/outputs where they live (None: on for GPU choices)
    device_id: int = 0  # CUDA device
    gpu_mem_limit: int | None = None  # bytes the CUDA arena may hold (None: no limit)
    arena_extend_strategy: str = "kNextPowerOfTwo"  # or kSameAsRequested
    cudnn_conv_algo_search: str = "EXHAUSTIVE"  # or HEURISTIC, DEFAULT
    cuda_graph: bool = False  # capture and replay a CUDA graph per input shape (needs io_binding)
    device_state: bool = True  # hand CuPy arrays to the sampler when a GPU provider runs (and CuPy imports)
    cache_dir: Path | None = None  # TensorRT provider: engine + timing caches (None: trt_engines' default folder)
    workspace_gb: float = 4.0  # TensorRT provider: builder workspace limit

    def __post_init__(self):
        check_threads(self.threads)
        check_choice("graph_optimization", self.graph_optimization, GRAPH_OPTIMIZATION)
        for key in ("spinning", "fused", "cuda_graph", "device_state"):
            check_bool(key, getattr(self, key))
        if self.io_binding is not None:
            check_bool("io_binding", self.io_binding)
        check_int("device_id", self.device_id, 0)
        check_int_or_none("gpu_mem_limit", self.gpu_mem_limit)
        check_choice("arena_extend_strategy", self.arena_extend_strategy, ARENA_EXTEND)
        check_choice("cudnn_conv_algo_search", self.cudnn_conv_algo_search, CUDNN_SEARCH)
        object.__setattr__(self, "cache_dir", folder_or_none("cache_dir", self.cache_dir))
        object.__setattr__(self, "workspace_gb", engines.check_workspace(number("workspace_gb", self.workspace_gb)))
        if self.cuda_graph and self.io_binding is False:
            raise InputError("cuda_graph needs io_binding (CUDA graphs replay fixed buffers); drop io_binding=False")


class OrtBackend(Backend):
    """One onnxruntime InferenceSession for one bundle stage."""

    name = "onnxruntime"
    PRECISIONS = ("fp32", "fp16", "int8")
    Options = OrtOptions

    # --- the family ----------------------------------------------------------------------------------------
    @classmethod
    def option_keys(cls, choice: str) -> tuple[str, ...]:
        return _CPU_KEYS + (_CUDA_KEYS if choice != "cpu" else ()) + (_TRT_KEYS if choice == "ort-tensorrt" else ())

    @classmethod
    def available(cls, choice: str) -> str | None:
        """None when this onnxruntime offers the choice's first provider (and, for a GPU provider, the NVIDIA driver
        reports a GPU), else why not (one line). onnxruntime-gpu offers its GPU providers on any machine."""
        wanted = PROVIDERS[choice][0]
        if wanted not in available_providers():
            return f"onnxruntime {_ort().__version__} does not offer {wanted}"
        if wanted != CPU and nvidia_gpus() == 0:
            return f"onnxruntime offers {wanted}, but this machine has no NVIDIA GPU (the driver reports none)"
        return None

    @classmethod
    def precisions(cls, bundle: Bundle, stage: str, choice: str) -> tuple[str, ...]:
        """The stage files this bundle carries, its default precision first (GPU choices: fp32 and fp16 files)."""
        can = cls.PRECISIONS if choice == "cpu" else engines.PRECISIONS
        files = [p for p in bundle.precisions(stage) if p in can]
        return tuple(sorted(files, key=lambda p: p != bundle.precision))

    @classmethod
    def provider_list(cls, choice: str) -> tuple[str, ...]:
        offered = set(available_providers())
        return tuple(p for p in PROVIDERS[choice] if p in offered or p == CPU)

    @classmethod
    def resolve(cls, choice: str, o: OrtOptions) -> OrtOptions:
        if choice != "cpu" and o.device_id >= nvidia_gpus():
            raise BackendError(f"device_id {o.device_id} does not exist; the NVIDIA driver reports "
                               f"{nvidia_gpus()} GPU(s)")
        cache = o.cache_dir if o.cache_dir is not None or choice != "ort-tensorrt" else engines.default_cache_dir()
        return dataclasses.replace(o, io_binding=choice != "cpu" if o.io_binding is None else o.io_binding,
                                   cache_dir=cache)

    # --- one stage -----------------------------------------------------------------------------------------
    def __init__(self, bundle: Bundle, stage: str, plan):
        spec = bundle.stage(stage)
        o: OrtOptions = plan.options
        self.stage, self.precision, self.inputs, self.outputs = stage, plan.precisions[stage], spec.inputs, spec.outputs
        self.requested = plan.providers
        # the fused graph's com.microsoft operators are measured on the CPU provider only: GPU providers get the
        # standard graph (TensorRT cannot run contrib operators at all); a GPU request that really fell back to
        # the CPU alone is reloaded with the fused graph
        fused = o.fused and self.precision in spec.fused
        so = session_options(o.threads, o.graph_optimization, o.spinning)
        self.graph = "fused" if fused and self.requested == (CPU,) else "standard"
        path = bundle.file_path(stage, self.precision, fused=self.graph == "fused")
        self.provider_options = provider_options(bundle, stage, plan)
        self.session, log = _create_session(str(path), so, self.requested, self.provider_options)
        self.providers = tuple(self.session.get_providers())
        if _FELL_BACK in log and self.providers[0] in self.requested[1:]:
            # onnxruntime's own retry after a provider failed (e.g. TensorRT) drops every provider option
            # (device_id, memory limit, ...): open again from that provider on, with the planned options
            k = self.requested.index(self.providers[0])
            self.session, _ = _create_session(str(path), so, self.requested[k:], self.provider_options[k:])
            self.providers = tuple(self.session.get_providers())
        if fused and self.graph == "standard" and self.providers == (CPU,):
            self.graph, path = "fused", bundle.file_path(stage, self.precision, fused=True)
            self.session, _ = _create_session(str(path), so, (CPU,), [{}])
        quant = bundle.manifest.get("quantization", {}).get(self.precision, {})
        # a dynamically quantized file takes ONE activation scale per call, over the whole batch
        self.batch_invariant = quant.get("mode") != "dynamic"
        source = quant.get("source")
        if source is not None and source in spec.fused.values():  # e.g. int8 quantized from the fused graph
            self.graph = "fused"
        self._check_io(path.name)
        if self.providers[0] != self.requested[0]:
            who = f"auto's choice {plan.backend!r}" if plan.chosen else f"backend {plan.backend!r}"
            warnings.warn(f"{who} asked for {self.requested[0]} but stage {stage!r} runs on "
                          f"{', '.join(self.providers)} ({_why_not_loaded(log)})", RuntimeWarning, stacklevel=4)
        self._output_names = [s.name for s in self.outputs]
        self._on_gpu = self.providers[0] in GPU_PROVIDERS
        self._device = ("cuda" if self._on_gpu else "cpu", o.device_id if self._on_gpu else 0)
        self._binding, self._graphs = o.io_binding, o.cuda_graph and graph_capable(spec)
        self._device_state = o.device_state and self._on_gpu and self._binding
        self._static: dict[tuple, tuple] = {}  # cuda_graph: input shapes -> (binding, inputs, outputs, run options)
        self._lock = threading.Lock()

    def _check_io(self, fname: str) -> None:
        """The session's real input/output names and dtypes must match the manifest's."""
        for kind, declared, actual in (("inputs", self.inputs, self.session.get_inputs()),
                                       ("outputs", self.outputs, self.session.get_outputs())):
            check_io(self.stage, fname, kind, declared, [(a.name, _ORT_TYPES.get(a.type, a.type)) for a in actual])

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run the session; inputs are cast to the declared dtypes (contiguous). NumPy in, NumPy out; with
        io_binding, CuPy in, CuPy out (device to device)."""
        feed = self._feed(inputs)
        try:
            if self._graphs:
                with self._lock:
                    return self._run_static(feed)
            if self._binding:
                return self._run_bound(feed)
            feed = {k: to_numpy(v) for k, v in feed.items()}
            return dict(zip(self._output_names, self.session.run(self._output_names, feed)))
        except BackendError:
            raise
        except Exception as e:  # onnxruntime raises its own exception types
            shapes = {k: tuple(v.shape) for k, v in feed.items()}
            raise BackendError(f"stage {self.stage!r} failed on inputs {shapes}: {str(e)[:500]}") from e

    def _run_bound(self, feed: dict[str, Any]) -> dict[str, Any]:
        """One call through an I/O binding: inputs bound where they live, outputs allocated by onnxruntime where the
        inputs live (the device for CuPy inputs, the host for NumPy ones)."""
        binding = self.session.io_binding()
        for name, a in feed.items():
            binding.bind_input(name, *_where(a), a.dtype.type, tuple(a.shape), _pointer(a))
        xp = namespace(*feed.values())
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()  # the caller's device work on the inputs is done
        where = ("cuda", self._device[1]) if xp is not np else ("cpu", 0)
        for name in self._output_names:
            binding.bind_output(name, *where)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        values = binding.get_outputs()
        return {n: (_as_cupy(v, where[1]) if xp is not np else np.array(v.numpy(), copy=True))
                for n, v in zip(self._output_names, values)}

    def _run_static(self, feed: dict[str, Any]) -> dict[str, Any]:
        """cuda_graph: one binding with fixed input and output buffers per input shapes, reused every call (a
        captured graph replays those addresses); inputs are copied in, outputs copied out. Graph ids are passed
        only where a GPU provider really runs."""
        ort = _ort()
        key = tuple((k, tuple(v.shape)) for k, v in sorted(feed.items()))
        entry = self._static.get(key)
        if entry is None:
            binding = self.session.io_binding()
            shapes = _output_shapes(self.inputs, self.outputs, {k: tuple(v.shape) for k, v in feed.items()})
            buffers = {k: ort.OrtValue.ortvalue_from_shape_and_type(tuple(v.shape), v.dtype.type, *self._device)
                       for k, v in feed.items()}
            outs = {s.name: ort.OrtValue.ortvalue_from_shape_and_type(shapes[s.name], np.dtype(s.dtype).type,
                                                                      *self._device) for s in self.outputs}
            for k, ov in buffers.items():
                binding.bind_ortvalue_input(k, ov)
            for k, ov in outs.items():
                binding.bind_ortvalue_output(k, ov)
            run_options = ort.RunOptions()
            if self._on_gpu:
                run_options.add_run_config_entry("gpu_graph_id", str(len(self._static) + 1))
            entry = self._static[key] = (binding, buffers, outs, run_options)
        binding, buffers, outs, run_options = entry
        xp = namespace(*feed.values())
        for k, a in feed.items():
            if type(a) is np.ndarray:
                buffers[k].update_inplace(a)
            else:
                _as_cupy(buffers[k], self._device[1])[...] = a
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()
        self.session.run_with_iobinding(binding, run_options)
        binding.synchronize_outputs()
        return {n: (_as_cupy(v, self._device[1]).copy() if xp is not np else np.array(v.numpy(), copy=True))
                for n, v in outs.items()}

    def _release(self) -> None:
        self.session, self._static = None, {}


def provider_options(bundle: Bundle, stage: str, plan) -> list[dict[str, str]]:
    """The provider options each of the plan's providers gets for `stage` (strings, as onnxruntime takes them).
    The TensorRT provider's folders are created here (outside the bundle)."""
    o: OrtOptions = plan.options
    precision = plan.precisions[stage]
    out = []
    graphs = o.cuda_graph and graph_capable(bundle.stage(stage))
    for provider in plan.providers:
        if provider == CUDA:
            opts = {"device_id": str(o.device_id), "arena_extend_strategy": o.arena_extend_strategy,
                    "cudnn_conv_algo_search": o.cudnn_conv_algo_search, "use_tf32": "0",
                    "enable_cuda_graph": "1" if graphs else "0"}
            if o.gpu_mem_limit is not None:
                opts["gpu_mem_limit"] = str(o.gpu_mem_limit)
        elif provider == TRT:
            opts = _tensorrt_options(bundle, stage, precision, o, graphs)
        else:
            opts = {}
        out.append(opts)
    return out


def _tensorrt_options(bundle: Bundle, stage: str, precision: str, o: OrtOptions, graphs: bool) -> dict[str, str]:
    """TensorRT provider options: engine cache keyed by trt_engines' BuildSpec (ONNX sha256, precision, profile,
    flags, GPU name + compute capability, TensorRT version) in its own folder, one timing cache per GPU + TensorRT,
    the manifest's min/opt/max as the optimization profile, fp16 for the bundle's fp16 file."""
    name, cc = gpu(o.device_id)
    device = engines.Device(name=name, compute_capability=cc, tensorrt=tensorrt_library() or "none")
    spec = engines.build_spec(bundle, stage, precision, workspace_gb=o.workspace_gb)
    root = cache_folder(bundle, o.cache_dir, "ort-tensorrt")
    engine_dir = cache_folder(bundle, root / ("ort." + spec.plan_path(root, device).stem), "ort-tensorrt")
    timing_dir = cache_folder(bundle, root / ("ort." + engines.timing_cache_path(root, device).stem), "ort-tensorrt")
    (profile,) = spec.profiles
    shapes = [",".join(f"{n}:{'x'.join(map(str, mmo[k]))}" for n, mmo in profile.shapes.items()) for k in range(3)]
    return {"device_id": str(o.device_id), "trt_fp16_enable": str(precision == "fp16"),
            "trt_max_workspace_size": str(int(o.workspace_gb * 2**30)),
            "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(engine_dir),
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(timing_dir),
            "trt_profile_min_shapes": shapes[0], "trt_profile_opt_shapes": shapes[1],
            "trt_profile_max_shapes": shapes[2], "trt_cuda_graph_enable": str(graphs)}


def graph_capable(spec) -> bool:
    """Whether a stage's output shapes follow from its input shapes (every output axis is fixed or named by an
    input), so fixed output buffers can be bound before the first call: what a CUDA graph needs. The denoiser is;
    the VAE stages are not (latent and pixel sizes are separate axes), so cuda_graph leaves them uncaptured."""
    named = {d for s in spec.inputs for d in s.shape if isinstance(d, str)}
    return all(isinstance(d, int) or d in named for s in spec.outputs for d in s.shape)


def _output_shapes(inputs, outputs, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Each output's shape for these input shapes (graph_capable stages only)."""
    size = {d: n for s in inputs for d, n in zip(s.shape, shapes[s.name]) if isinstance(d, str)}
    return {s.name: tuple(d if isinstance(d, int) else size[d] for d in s.shape) for s in outputs}


def session_options(threads: int | None = None, graph_optimization: str = "all", spinning: bool = True):
    """SessionOptions: `threads` intra-op threads (None: onnxruntime's default), an optimisation level, and
    whether idle pool threads busy-wait (`spinning`; off frees the cores for the NumPy loop between calls)."""
    ort = _ort()
    check_choice("graph_optimization", graph_optimization, GRAPH_OPTIMIZATION)
    threads, spinning = check_threads(threads), check_bool("spinning", spinning)
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[graph_optimization])
    if threads is not None:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3  # errors only; provider fallbacks are reported by us, once
    return so


_FELL_BACK = "Falling back to"  # what onnxruntime prints when it retries a session on its fallback providers


def _why_not_loaded(log: str) -> str:
    """One line on why a provider did not load: onnxruntime's own words where it printed them, else the usual cause."""
    lines = [line.strip() for line in log.splitlines() if line.strip(" *")]
    said = next((line[line.index("Please install"):] for line in lines if "Please install" in line), None)
    return (said or f"onnxruntime {_ort().__version__} could not load it: its CUDA, cuDNN or TensorRT libraries are "
            "missing or do not match; see README 'GPU'")[:300]


def _where(a) -> tuple[str, int]:
    """(device type, device id) of an array, as an I/O binding names it."""
    if type(a) is np.ndarray:
        return "cpu", 0
    return "cuda", int(a.device.id)


def _pointer(a) -> int:
    return a.ctypes.data if type(a) is np.ndarray else int(a.data.ptr)


def _as_cupy(value, device: int):
    """A CuPy view of an OrtValue on the GPU (zero copy; the view keeps the OrtValue alive)."""
    import cupy

    dtype = np.dtype(_ORT_TYPES.get(value.data_type(), "float32"))
    shape = tuple(value.shape())
    nbytes = int(np.prod(shape)) * dtype.itemsize
    memory = cupy.cuda.UnownedMemory(value.data_ptr(), nbytes, value, device)
    return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(memory, 0))


# sys.stdout and the default logger severity are process-wide: sessions are created one at a time, or two
# threads loading pipelines would each restore the other's redirect and leave sys.stdout captured for good
_SESSION_LOCK = threading.Lock()


def _create_session(path: str, options, providers, provider_opts):
    """An InferenceSession with onnxruntime's fallback chatter captured instead of printed."""
    ort = _ort()
    quiet = tuple(providers) != (CPU,)
    out = io.StringIO()
    with _SESSION_LOCK:
        if quiet:
            ort.set_default_logger_severity(4)
        try:
            with contextlib.redirect_stdout(out):
                session = ort.InferenceSession(path, options, providers=list(providers),
                                               provider_options=list(provider_opts))
            # a provider failing at run time raises (BackendError) instead of onnxruntime quietly moving the session
            # to its fallback providers without their options: what runs stays what get_providers() reported
            session.disable_fallback()
        except Exception as e:
            raise BackendError(f"onnxruntime could not load {path} with {list(providers)}: {str(e)[:500]}") from e
        finally:
            if quiet:
                ort.set_default_logger_severity(2)
    return session, out.getvalue()
