"""Native TensorRT backend (backend="tensorrt"): one engine per stage from the engine cache, no onnxruntime and no
torch. TensorRT 10/11 name-based I/O (set_input_shape, set_tensor_address, execute_async_v3) with cuda-python
(cuda.bindings) for device memory and one stream; device buffers are allocated once per optimization profile at
its max shapes and reused by every call; with cuda_graph=True each (profile, shapes) is captured once as a CUDA
graph and replayed. run() takes NumPy arrays (copied to and from the device) or CuPy arrays (device to device,
returned as CuPy), so a sampler on CuPy arrays keeps its state on the GPU (`array_namespace`).

Nothing here has run against real TensorRT (README "FP16 and TensorRT"). The option checks, profile choice and
engine cache logic are tested on the CPU; the CUDA side (buffers, copies, profile switches, CUDA graphs, CuPy
state) ran on an H200 with a stand-in engine (tests/runtime/test_tensorrt_cuda_side.py, BENCHMARKS.md §9).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from vdt_runtime.backends import trt_engines as engines
from vdt_runtime._xp import namespace
from vdt_runtime.backends.base import Backend, cache_folder, check_io, folder_or_none, number
from vdt_runtime.checks import check_bool, check_int
from vdt_runtime.bundle import Bundle
from vdt_runtime.errors import BackendError, InputError


@dataclasses.dataclass(frozen=True)
class TrtOptions:
    """Native TensorRT settings."""

    cache_dir: Path | None = None  # engine cache (None: vdt_runtime.backends.trt_engines.default_cache_dir())
    cuda_graph: bool = False  # capture one CUDA graph per (profile, shapes) and replay it
    workspace_gb: float = 4.0  # builder workspace limit
    device_id: int = 0  # CUDA device
    frame_buckets: tuple[int, ...] = ()  # one profile per frame bucket, e.g. (4, 8, 16); the CLI's "4,8,16"
    build: bool = True  # build a missing engine at load (False: refuse)
    device_state: bool = True  # hand CuPy arrays to the sampler

    def __post_init__(self):
        for key in ("cuda_graph", "build", "device_state"):
            check_bool(key, getattr(self, key))
        check_int("device_id", self.device_id, 0)
        buckets = self.frame_buckets
        if isinstance(buckets, str):  # the CLI's -o frame_buckets=4,8,16
            try:
                buckets = [int(b) for b in buckets.split(",") if b.strip()]
            except ValueError:
                raise InputError(f"frame_buckets must be frame counts like 4,8,16, got {buckets!r}") from None
        if not isinstance(buckets, (tuple, list)) or any(isinstance(b, bool) or not isinstance(b, int) for b in buckets):
            raise InputError(f"frame_buckets must be a list of frame counts, e.g. [4, 8, 16], got {buckets!r}")
        object.__setattr__(self, "frame_buckets", tuple(buckets))
        object.__setattr__(self, "workspace_gb", engines.check_workspace(number("workspace_gb", self.workspace_gb)))
        object.__setattr__(self, "cache_dir", folder_or_none("cache_dir", self.cache_dir))


class TensorRTBackend(Backend):
    """One deserialized engine, its execution context, one CUDA stream and per-profile device buffers."""

    name = "tensorrt"
    graph = "engine"
    PRECISIONS = engines.PRECISIONS
    Options = TrtOptions

    @classmethod
    def available(cls, choice: str = "tensorrt") -> str | None:
        """None when tensorrt, cuda-python and a CUDA device are all here, else the first thing missing."""
        try:
            engines.device_info(0)
        except BackendError as e:
            return str(e)
        return None

    @classmethod
    def precisions(cls, bundle: Bundle, stage: str, choice: str = "tensorrt") -> tuple[str, ...]:
        """fp32 (from the standard ONNX) and fp16 (from the bundle's fp16 ONNX, if it has one), fp32 first."""
        return tuple(p for p in cls.PRECISIONS if p in bundle.stage(stage).files)

    @classmethod
    def resolve(cls, choice: str, o: TrtOptions) -> TrtOptions:
        return o if o.cache_dir is not None else dataclasses.replace(o, cache_dir=engines.default_cache_dir())

    def __init__(self, bundle: Bundle, stage: str, plan):
        o: TrtOptions = plan.options
        precision = plan.precisions[stage]
        cache_dir = cache_folder(bundle, o.cache_dir, "tensorrt")  # outside the hashed bundle, as every build cache
        trt = engines.import_tensorrt()
        self._cudart = cudart = engines.import_cudart()
        spec = bundle.stage(stage)
        self.stage, self.precision, self.inputs, self.outputs = stage, precision, spec.inputs, spec.outputs
        device = engines.device_info(o.device_id)
        engines.cuda_check(cudart.cudaSetDevice(o.device_id), "cudaSetDevice")
        build = engines.build_spec(bundle, stage, precision, frame_buckets=o.frame_buckets,
                                   workspace_gb=o.workspace_gb)
        cached = engines.find_engine(cache_dir, build, device)[0]  # checks (hashes) the plan: done once
        fresh = cached is None  # built now: self-tested below
        self.plan_path = cached or engines.ensure_engine(bundle, build, device, cache_dir, build=o.build)
        self.profiles = list(build.profiles)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._runtime.engine_host_code_allowed = True  # version-compatible engines carry their lean runtime
        self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self._engine is None:
            raise BackendError(f"TensorRT {trt.__version__} could not deserialize {self.plan_path}; delete it to rebuild")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        dtype = {n: "float32" if self._engine.get_tensor_dtype(n) == trt.DataType.FLOAT else
                 str(self._engine.get_tensor_dtype(n)) for n in names}
        check_io(stage, self.plan_path.name, "inputs", self.inputs, [(n, dtype[n]) for n in names if mode[n]])
        check_io(stage, self.plan_path.name, "outputs", self.outputs, [(n, dtype[n]) for n in names if not mode[n]])
        self._context = self._engine.create_execution_context()
        self._stream = engines.cuda_check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                                          "cudaStreamCreateWithFlags")
        self._handle = int(self._stream)  # TensorRT takes the raw cudaStream_t; cuda.bindings takes the object
        self._buffers: dict[int, dict[str, int]] = {}  # profile -> tensor name -> device pointer (max shape)
        self._graphs: dict[tuple, Any] = {}  # (profile, input shapes) -> CUDA graph exec
        self._seen: set[tuple] = set()
        self._profile = None
        self._cuda_graph, self._device_state = o.cuda_graph, o.device_state
        self.providers = (f"TensorRT:{device.name}",)
        if fresh:
            self._selftest(bundle)

    def _selftest(self, bundle: Bundle) -> None:
        """Replay this stage's golden cases (and the denoiser's end-to-end case) once on the new engine; its result
        goes into the engine's .json, and an engine that fails is removed (trt_engines.record_selftest)."""
        from vdt_runtime.selftest import load_golden, run_selftest

        try:
            golden = load_golden(bundle)
            report = None if golden is None else run_selftest(bundle, {self.stage: self}, golden=golden)
            engines.record_selftest(self.plan_path, report)
        except BaseException:
            self.close()
            raise

    # --- one call ------------------------------------------------------------------------------------------
    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        feed = self._feed(inputs)
        xp = namespace(*feed.values())
        shapes = {k: tuple(int(d) for d in v.shape) for k, v in feed.items()}
        profile = engines.select_profile(self.profiles, shapes, self.stage)
        buffers = self._use_profile(profile)
        for name, shape in shapes.items():
            if not self._context.set_input_shape(name, shape):
                raise BackendError(f"TensorRT refused input {name} shape {list(shape)} for stage {self.stage!r}")
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()  # the caller's device work on the inputs is done
        for name, array in feed.items():
            self._copy(buffers[name], array, array.nbytes, to_device=True)
        self._execute(profile, shapes)
        out = {}
        for spec in self.outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            out[spec.name] = xp.empty(shape, dtype=xp.float32)
            self._copy(buffers[spec.name], out[spec.name], out[spec.name].nbytes, to_device=False)
        engines.cuda_check(self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out

    def _use_profile(self, profile: int) -> dict[str, int]:
        """Switch the context to `profile`, allocating its buffers (max shapes) the first time."""
        if profile not in self._buffers:
            sizes = {}
            for name, (_, _, hi) in self.profiles[profile].shapes.items():
                sizes[name] = int(np.prod(hi)) * 4
            self._context.set_optimization_profile_async(profile, self._handle)
            for name, (_, _, hi) in self.profiles[profile].shapes.items():
                self._context.set_input_shape(name, hi)
            for spec in self.outputs:  # output size at the profile's max input shapes
                sizes[spec.name] = int(np.prod(tuple(self._context.get_tensor_shape(spec.name)))) * 4
            self._buffers[profile] = {n: engines.cuda_check(self._cudart.cudaMalloc(max(s, 4)), "cudaMalloc")
                                      for n, s in sizes.items()}
            self._profile = None
        if self._profile != profile:
            self._context.set_optimization_profile_async(profile, self._handle)
            for name, ptr in self._buffers[profile].items():
                self._context.set_tensor_address(name, ptr)
            self._profile = profile
        return self._buffers[profile]

    def _execute(self, profile: int, shapes: dict[str, tuple[int, ...]]) -> None:
        """execute_async_v3 on the stream; with cuda_graph, the second call at the same shapes captures a graph
        (the first lets TensorRT finish its shape-dependent set-up outside the capture) and later ones replay it."""
        cudart = self._cudart
        key = (profile, tuple(sorted(shapes.items())))
        graph = self._graphs.get(key)
        if graph is not None:
            engines.cuda_check(cudart.cudaGraphLaunch(graph[1], self._stream), "cudaGraphLaunch")
            return
        if not self._cuda_graph or key not in self._seen:
            self._seen.add(key)
            if not self._context.execute_async_v3(self._handle):
                raise BackendError(f"TensorRT execute_async_v3 failed for stage {self.stage!r} at {dict(shapes)}")
            return
        engines.cuda_check(cudart.cudaStreamBeginCapture(
            self._stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture")
        ok = self._context.execute_async_v3(self._handle)
        g = engines.cuda_check(cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
        if not ok:
            cudart.cudaGraphDestroy(g)
            raise BackendError(f"TensorRT execute_async_v3 failed during CUDA graph capture for {dict(shapes)}")
        exe = engines.cuda_check(cudart.cudaGraphInstantiate(g, 0), "cudaGraphInstantiate")
        self._graphs[key] = (g, exe)
        engines.cuda_check(cudart.cudaGraphLaunch(exe, self._stream), "cudaGraphLaunch")

    def _copy(self, device_ptr: int, array, nbytes: int, *, to_device: bool) -> None:
        """Async copy between a buffer and a NumPy (host) or CuPy (device) array on the backend's stream."""
        cudart = self._cudart
        on_device = hasattr(array, "__cuda_array_interface__")
        ptr = array.__cuda_array_interface__["data"][0] if on_device else array.ctypes.data
        kind = (cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice if on_device else
                cudart.cudaMemcpyKind.cudaMemcpyHostToDevice if to_device else
                cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        dst, src = (device_ptr, ptr) if to_device else (ptr, device_ptr)
        engines.cuda_check(cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream), "cudaMemcpyAsync")

    def _release(self) -> None:
        cudart = self._cudart
        for g, exe in self._graphs.values():
            cudart.cudaGraphExecDestroy(exe)
            cudart.cudaGraphDestroy(g)
        for buffers in self._buffers.values():
            for ptr in buffers.values():
                cudart.cudaFree(ptr)
        self._graphs, self._buffers = {}, {}
        cudart.cudaStreamDestroy(self._stream)
        self._context = self._engine = self._runtime = None
