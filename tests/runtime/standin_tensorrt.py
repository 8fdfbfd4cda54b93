"""A stand-in `tensorrt` module for running the native TensorRT backend's CUDA side on a GPU that has no TensorRT.

Everything in `vdt_runtime.backends.tensorrt` except the engine itself is real here: cuda.bindings device buffers
per profile, host↔device and device↔device copies on the backend's stream, profile switching, CUDA graph capture
and replay, the engine cache (write, find, key) and CuPy sampler state. The "engine" is one CUDA kernel, launched
by CuPy on the stream the backend hands to `execute_async_v3`, that reads the input buffers and writes the output
buffer at the addresses the backend set:

    out[i] = tanh(0.7 * x[i mod x.size] + t[i // (out.size / B)] / 999)      (t: the denoiser's timestep only)

`reference()` is the same function in NumPy. It is not a model, so none of this says anything about TensorRT's
numerics or speed (tests/runtime/test_tensorrt_logic.py's gpu test and benchmarks/gpu_check.py do that where TensorRT is
installed)."""
from __future__ import annotations

import json
import types

import numpy as np

KERNEL = r"""
extern "C" __global__ void standin(unsigned long long x_ptr, long long nx, unsigned long long t_ptr, long long per,
                                   unsigned long long y_ptr, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* x = (const float*)x_ptr;
    float v = 0.7f * x[i % nx];
    if (t_ptr) v += ((const float*)t_ptr)[i / per] / 999.0f;
    ((float*)y_ptr)[i] = tanhf(v);
}
"""


def output_shape(plan: dict, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The output's shape from the manifest's symbolic shapes and the set input shapes."""
    first = plan["inputs"][0]
    sizes = dict(zip(first["shape"], shapes[first["name"]]))
    f = plan["downsample"]
    if "height" in sizes:
        sizes.update(latent_height=sizes["height"] // f, latent_width=sizes["width"] // f)
    if "latent_height" in sizes:
        sizes.setdefault("height", sizes["latent_height"] * f)
        sizes.setdefault("width", sizes["latent_width"] * f)
    return tuple(d if isinstance(d, int) else sizes[d] for d in plan["outputs"][0]["shape"])


def reference(plan: dict, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """What the stand-in engine computes, in NumPy (float32 in, float32 out)."""
    names = [s["name"] for s in plan["inputs"]]
    x = np.asarray(inputs[names[0]], np.float32).ravel()
    shape = output_shape(plan, {n: np.shape(inputs[n]) for n in names})
    n = int(np.prod(shape))
    i = np.arange(n)
    v = np.float32(0.7) * x[i % x.size]
    if len(names) > 1:
        t = np.asarray(inputs[names[1]], np.float32)
        v = v + t[i // (n // shape[0])] / np.float32(999.0)
    return np.tanh(v).astype(np.float32).reshape(shape)


def plan_for(bundle, stage: str) -> dict:
    """The stand-in "serialized engine" of a bundle stage: its I/O contract and the VAE's downsample."""
    spec = bundle.stage(stage)
    io = lambda ts: [{"name": t.name, "shape": list(t.shape)} for t in ts]  # noqa: E731
    return {"stage": stage, "inputs": io(spec.inputs), "outputs": io(spec.outputs),
            "downsample": bundle.vae["downsample"]}


def builder(bundle, calls: list):
    """A replacement for vdt_runtime.backends.trt_engines.build_engine: records the call, returns the stand-in plan bytes."""
    def build_engine(onnx_path, spec, *, timing_cache=None, log=print) -> bytes:
        calls.append((spec.stage, spec.precision))
        return json.dumps(plan_for(bundle, spec.stage)).encode()
    return build_engine


class _Context:
    def __init__(self, plan: dict):
        import cupy

        self.plan, self.cp = plan, cupy
        self.kernel = cupy.RawKernel(KERNEL, "standin")
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.profile = None
        self.launches = 0

    def set_optimization_profile_async(self, profile: int, stream: int) -> bool:
        self.profile, self.addresses = profile, {}  # TensorRT forgets the addresses when the profile changes
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        self.shapes[name] = tuple(int(d) for d in shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.shapes:
            return self.shapes[name]
        return output_shape(self.plan, self.shapes)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream: int) -> bool:
        names = [s["name"] for s in self.plan["inputs"]]
        out = self.plan["outputs"][0]["name"]
        if self.profile is None or any(n not in self.addresses for n in names + [out]):
            return False  # as TensorRT does when an address is missing
        shape = output_shape(self.plan, self.shapes)
        n = int(np.prod(shape))
        nx = int(np.prod(self.shapes[names[0]]))
        t = self.addresses[names[1]] if len(names) > 1 else 0
        with self.cp.cuda.ExternalStream(stream):
            self.kernel(((n + 255) // 256,), (256,), (np.uint64(self.addresses[names[0]]), np.int64(nx), np.uint64(t),
                                                       np.int64(n // shape[0]), np.uint64(self.addresses[out]),
                                                       np.int64(n)))
        self.launches += 1
        return True


class _Engine:
    def __init__(self, plan: dict):
        self.plan = plan
        self.names = [s["name"] for s in plan["inputs"]] + [s["name"] for s in plan["outputs"]]
        self.num_io_tensors = len(self.names)
        self.contexts: list[_Context] = []

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str):
        return "INPUT" if name in [s["name"] for s in self.plan["inputs"]] else "OUTPUT"

    def get_tensor_dtype(self, name: str):
        return "FLOAT"

    def create_execution_context(self) -> _Context:
        self.contexts.append(_Context(self.plan))
        return self.contexts[-1]


class _Runtime:
    engine_host_code_allowed = False

    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, blob: bytes) -> _Engine:
        return _Engine(json.loads(blob))


def module() -> types.ModuleType:
    """The stand-in, to put at sys.modules["tensorrt"]."""
    m = types.ModuleType("tensorrt")
    m.__version__ = "0.0.0-standin"
    m.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    m.Runtime = _Runtime
    m.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    m.DataType = types.SimpleNamespace(FLOAT="FLOAT")
    return m
