"""OpenVINO backend: the bundle's standard fp32 ONNX read directly, on any OpenVINO device (CPU by default).

Precisions: fp32 (inference precision f32, set explicitly: OpenVINO would pick bf16 by itself on CPUs with AMX),
bf16 (inference precision hint bf16; only where the device reports native BF16 in OPTIMIZATION_CAPABILITIES,
e.g. CPUs with AVX512_BF16 or AMX; elsewhere refused by name) and int8 (denoiser only: weight compression,
every large MatMul/Convolution weight stored as int8 per output channel, symmetric, dequantized inside the
kernels; activations stay fp32). What really runs is read back from the compiled model.
Only the CPU device is tested here; GPU and NPU (Intel edge boxes) are accepted by name but untested.
"""
from __future__ import annotations

import dataclasses
import threading
import warnings
from pathlib import Path

import numpy as np

from vdt_runtime.backends.base import Backend, cache_folder, check_io, folder_or_none
from vdt_runtime.checks import check_int_or_none
from vdt_runtime.bundle import Bundle
from vdt_runtime.errors import BackendError, InputError
from vdt_runtime.limits import check_threads

INT8_STAGES = ("denoiser",)
_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # compute precision -> INFERENCE_PRECISION_HINT
_REAL = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}  # compiled model's hint -> compute precision
_VIRTUAL = ("AUTO", "HETERO", "MULTI", "BATCH")  # device names that dispatch to others
_MIN_WEIGHTS = 1024  # smaller weight tensors stay fp32 under int8 (biases of a kind, tiny projections)
_CORE = None
_CORE_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class OvOptions:
    """OpenVINO settings."""

    device: str = "CPU"  # an OpenVINO device name ("CPU", "GPU", "GPU.1", "NPU", "AUTO", ...)
    threads: int | None = None  # INFERENCE_NUM_THREADS
    cache_dir: Path | None = None  # compiled-model cache (CACHE_DIR), outside the bundle
    num_streams: int | None = None  # NUM_STREAMS

    def __post_init__(self):
        if not isinstance(self.device, str) or not self.device.strip():
            raise InputError(f"openvino option device must be a device name such as 'CPU' or 'GPU', "
                             f"got {self.device!r}")
        check_threads(self.threads)
        check_int_or_none("num_streams", self.num_streams)
        object.__setattr__(self, "cache_dir", folder_or_none("openvino option cache_dir", self.cache_dir))


def native_bf16(device: str) -> bool:
    """Whether an OpenVINO device reports BF16 among its OPTIMIZATION_CAPABILITIES."""
    try:
        return "BF16" in _core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    except Exception:  # a virtual device or one that does not report capabilities
        return False


class OpenVINOBackend(Backend):
    """One compiled OpenVINO model for one bundle stage; one infer request per calling thread."""

    name = "openvino"
    graph = "standard"
    PRECISIONS = ("fp32", "bf16", "int8")
    Options = OvOptions

    @classmethod
    def available(cls, choice: str = "openvino") -> str | None:
        """None when the openvino package imports, else how to install it."""
        try:
            import openvino  # noqa: F401
        except Exception as e:  # ImportError, or a broken install
            return f"openvino is not installed ({type(e).__name__}): pip install 'vdt[openvino]'"
        return None

    @classmethod
    def precisions(cls, bundle: Bundle, stage: str, choice: str = "openvino") -> tuple[str, ...]:
        """fp32 for a stage with an fp32 file; bf16 where the CPU runs it natively; int8 for the denoiser."""
        if "fp32" not in bundle.precisions(stage):
            return ()
        out = ["fp32"]
        if native_bf16("CPU"):
            out.append("bf16")
        if stage in INT8_STAGES:
            out.append("int8")
        return tuple(out)

    def __init__(self, bundle: Bundle, stage: str, plan):
        precision, options = plan.precisions[stage], plan.options
        spec = bundle.stage(stage)
        self.stage, self.inputs, self.outputs = stage, spec.inputs, spec.outputs
        device, config = _config(bundle, options)
        if precision == "bf16" and not native_bf16(device.split(":")[0]):
            raise InputError(f"backend 'openvino' cannot run precision 'bf16' on device {device!r}: it does not "
                             "report native BF16 (OPTIMIZATION_CAPABILITIES); use fp32 or int8")
        config["INFERENCE_PRECISION_HINT"] = _HINT[precision]
        core = _core()
        path = bundle.file_path(stage, "fp32")
        try:
            model = core.read_model(str(path))
        except Exception as e:
            raise BackendError(f"openvino could not read {path}: {_first_line(e)}") from e
        self._check_io(model, path.name)
        if precision == "int8":
            compress_weights(model)
        try:
            self.compiled = core.compile_model(model, device, config)
        except Exception as e:
            raise BackendError(f"openvino could not compile {path.name} for device {device!r}: {_first_line(e)}") from e
        self.precision = "int8" if precision == "int8" else _real_precision(self.compiled, config)
        if self.precision != precision:
            warnings.warn(f"backend 'openvino' asked for {precision} but stage {stage!r} runs at {self.precision} "
                          f"on {device}", RuntimeWarning, stacklevel=3)
        try:
            devices = self.compiled.get_property("EXECUTION_DEVICES")
        except Exception as e:
            raise BackendError(f"openvino device {device!r} does not say where it runs: {_first_line(e)}") from e
        self.providers = tuple(f"OpenVINO:{d}" for d in devices)
        self._names = [o.name for o in self.outputs]
        self._local = threading.local()

    def _check_io(self, model, fname: str) -> None:
        for kind, declared, ports in (("inputs", self.inputs, model.inputs), ("outputs", self.outputs, model.outputs)):
            got = [(p.get_any_name(), str(np.dtype(p.get_element_type().to_dtype()))) for p in ports]
            check_io(self.stage, fname, kind, declared, got)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on this thread's infer request; outputs are copies (the request reuses its buffers)."""
        feed = self._feed(inputs)
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        try:
            results = request.infer(feed)
        except Exception as e:
            shapes = {k: v.shape for k, v in feed.items()}
            raise BackendError(f"stage {self.stage!r} failed on inputs {shapes}: {_first_line(e)}") from e
        return {name: np.array(results[i]) for i, name in enumerate(self._names)}

    def _release(self) -> None:
        self.compiled, self._local = None, threading.local()


def compress_weights(model) -> int:
    """int8 weight compression in place: each large constant weight of a MatMul or Convolution becomes int8 with
    one fp32 scale per output channel (max |w| / 127), dequantized by Convert + Multiply, the pattern OpenVINO's
    CPU kernels run on int8 weights. Returns how many weights were compressed."""
    import openvino as ov
    from openvino import opset13 as ops

    count = 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Convolution"):
            continue
        source = op.input_value(1).get_node()
        if source.get_type_name() != "Constant" or source.get_element_type() != ov.Type.f32:
            continue
        w = source.get_data()
        if w.ndim < 2 or w.size < _MIN_WEIGHTS:
            continue
        if kind == "MatMul" and not op.get_attributes().get("transpose_b", False):
            axes = (w.ndim - 2,)  # [..., K, N]: one scale per output column N
        else:
            axes = tuple(range(1, w.ndim))  # [N, K] or [O, I, kh, kw]: one scale per output row
        scale = np.abs(w).max(axis=axes, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        dequant = ops.multiply(ops.convert(ops.constant(q, dtype=ov.Type.i8), ov.Type.f32),
                               ops.constant(scale.astype(np.float32)))
        op.input(1).replace_source_output(dequant.output(0))
        count += 1
    return count


def _config(bundle: Bundle, o: OvOptions) -> tuple[str, dict]:
    """(device, compile config) from the checked options; the device must be on this machine."""
    device = o.device
    have = _core().available_devices
    if device.split(":")[0] not in _VIRTUAL and device.split(".")[0] not in {d.split(".")[0] for d in have}:
        raise BackendError(f"openvino device {device!r} is not on this machine; it has: {', '.join(have)}")
    config = {}
    if o.threads is not None:
        config["INFERENCE_NUM_THREADS"] = o.threads
    if o.num_streams is not None:
        config["NUM_STREAMS"] = o.num_streams
    if o.cache_dir is not None:
        config["CACHE_DIR"] = str(cache_folder(bundle, o.cache_dir, "openvino"))
    return device, config


def _real_precision(compiled, config: dict) -> str:
    """The compute precision the compiled model reports. A virtual device (AUTO, MULTI, ...) does not report
    INFERENCE_PRECISION_HINT; it passed on the hint we set, which only fp32 (f32) and int8 reach (bf16 needs a
    device that reports native BF16), so that hint is what runs."""
    try:
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type
    except Exception:
        hint = config["INFERENCE_PRECISION_HINT"]
    name = getattr(hint, "get_type_name", lambda: str(hint))()
    return _REAL.get(name, name)


def _core():
    """One process-wide ov.Core (it holds the plugins); openvino imported only here."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            try:
                import openvino as ov
            except ImportError as e:
                raise BackendError(f"openvino is not installed ({e}): pip install 'vdt[openvino]'") from None
            _CORE = ov.Core()
        return _CORE


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


