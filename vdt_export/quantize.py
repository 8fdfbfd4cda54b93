"""INT8 denoiser for a bundle: onnxruntime dynamic (or static, calibrated) quantization, added to the manifest.

    vdt-export quantize engines/default               # dynamic INT8 → denoiser.int8.onnx
    vdt-export quantize engines/default --mode static   # static QDQ, calibrated on random latents

Weights are int8 per output channel (lower error than per tensor at the same speed on the VDT-S/2 test).
Only the weight MatMuls (every Linear: qkv, proj, MLP, adaLN, final) are quantized; the activation×activation
attention MatMuls, LayerNorm, softmax and the patch Conv stay fp32. When the bundle has the onnxruntime-fused
denoiser (stages.denoiser.fused), that graph is the source and each com.microsoft.Attention becomes QAttention
(int8 q/k/v projection, fp32 attention); the result is onnxruntime-only either way. The manifest gains
stages.denoiser.files["int8"] and a files entry with sha256 and size; both files are written atomically.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from vdt_runtime.errors import BundleError, InputError

from .bundle import MANIFEST, read_manifest, refresh_golden, write_manifest

INT8_FILE = "denoiser.int8.onnx"
MODES = ("dynamic", "static")


def quantize_bundle(bundle_dir: str | os.PathLike, *, mode: str = "dynamic", calibration_batches: int = 8,
                    seed: int = 0) -> Path:
    """Write `denoiser.int8.onnx` beside the fp32 denoiser and list it in manifest.json; returns its path."""
    if mode not in MODES:
        raise InputError(f"unknown quantization mode {mode!r}; choose one of {', '.join(MODES)}")
    bundle_dir = Path(bundle_dir)
    manifest = _read_manifest(bundle_dir)
    stage = manifest["stages"]["denoiser"]
    fused = "fp32" in stage.get("fused", {})
    fp32 = bundle_dir / (stage["fused"]["fp32"] if fused else stage["files"].get("fp32", ""))
    op_types = ["MatMul", "Attention"] if fused and mode == "dynamic" else ["MatMul"]  # QDQ: Attention stays fp32
    if not fp32.is_file():
        raise BundleError(f"bundle {str(bundle_dir)!r} has no fp32 denoiser file (stages.denoiser.files: {stage['files']})")
    target = bundle_dir / INT8_FILE
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=bundle_dir) as tmp:
        clean = Path(tmp) / "denoiser.clean.onnx"
        out = Path(tmp) / INT8_FILE
        _without_value_info(fp32, clean)
        with _no_preprocess_hint():
            if mode == "dynamic":
                _dynamic(clean, out, op_types)
            else:
                _static(clean, out, _CalibrationReader(stage, calibration_batches, seed), op_types)
        onnx.checker.check_model(str(out))
        os.replace(out, target)
    stage["files"]["int8"] = INT8_FILE
    manifest.setdefault("quantization", {})["int8"] = {"mode": mode, "op_types": op_types, "source": fp32.name,
                                                      "weights": "int8 per channel",
                                                      "activations": "uint8 (per call)" if mode == "dynamic"
                                                      else "uint8 (calibrated on random latents)"}
    write_manifest(bundle_dir, manifest)
    refresh_golden(bundle_dir, manifest)  # golden cases (if any) get tolerances for the new precision
    return target


def precision_error(bundle_dir: str | os.PathLike, *, precision: str = "int8", stage: str = "denoiser",
                    trials: int = 4, seed: int = 0) -> dict:
    """How far a stage's `precision` file is from its fp32 file on the same random stage-shaped inputs (CPU):
    max / mean abs difference, the fp32 output's max / mean |value|, their ratios (rel_max, rel_mean) and the
    providers that really ran."""
    import onnxruntime as ort

    bundle_dir = Path(bundle_dir)
    spec = _read_manifest(bundle_dir)["stages"][stage]
    if precision not in spec["files"]:
        raise InputError(f"bundle has no {precision!r} {stage}; available: {sorted(spec['files'])}")
    sessions = {p: ort.InferenceSession(str(bundle_dir / spec["files"][p]), providers=["CPUExecutionProvider"])
                for p in ("fp32", precision)}
    reader = _CalibrationReader(spec, trials, seed)
    worst, total, count, ref_mean, ref_max = 0.0, 0.0, 0, 0.0, 0.0
    while (feed := reader.get_next()) is not None:
        ref = sessions["fp32"].run(None, feed)[0]
        diff = np.abs(sessions[precision].run(None, feed)[0] - ref)
        worst, total, count = max(worst, float(diff.max())), total + float(diff.sum()), count + diff.size
        ref_mean, ref_max = ref_mean + float(np.abs(ref).mean()) / trials, max(ref_max, float(np.abs(ref).max()))
    mean = total / count
    return {"max_abs": worst, "mean_abs": mean, "fp32_mean_abs": ref_mean, "fp32_max_abs": ref_max,
            "rel_max": worst / ref_max, "rel_mean": mean / ref_mean, "providers": sessions[precision].get_providers()}


def _read_manifest(bundle_dir: Path) -> dict:
    manifest = read_manifest(bundle_dir)
    if "denoiser" not in manifest.get("stages", {}):
        raise BundleError(f"{bundle_dir / MANIFEST} has no stages.denoiser")
    return manifest


def _without_value_info(src: Path, dst: Path) -> None:
    """Copy of the model with its intermediate value_info dropped: the exporter's stored shapes disagree with
    onnx shape inference on some nodes, which makes the quantizer's own inference pass fail."""
    model = onnx.load(str(src))
    del model.graph.value_info[:]
    onnx.save(model, str(dst))


@contextlib.contextmanager
def _no_preprocess_hint():
    """Hide the quantizer's root-logger hint to run its pre-processing (its shape pass fails on this graph)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


# onnx's shape inference knows no com.microsoft operator, so tensors after one have no type: they are float
_EXTRA = {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT}


def _dynamic(src: Path, dst: Path, op_types: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), op_types_to_quantize=op_types, weight_type=QuantType.QInt8,
                     per_channel=True, extra_options=_EXTRA)


def _static(src: Path, dst: Path, reader, op_types: list[str]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, extra_options=_EXTRA)


class _CalibrationReader:
    """onnxruntime CalibrationDataReader: `batches` random feeds shaped like a stage's declared inputs (batch 1,
    other dynamic axes at their declared opt): standard-normal latents, images uniform in [-1, 1], timesteps
    spread over 0…999."""

    def __init__(self, stage: dict, batches: int, seed: int):
        rng = np.random.default_rng(seed)
        axes = {name: 1 if name == "batch" else r["opt"] for name, r in stage["dynamic_axes"].items()}
        shapes = {s["name"]: [axes.get(d, d) if isinstance(d, str) else d for d in s["shape"]] for s in stage["inputs"]}
        self._feeds = iter([{name: _random_input(rng, name, shape, t) for name, shape in shapes.items()}
                            for t in np.linspace(0, 999, batches).round()])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def _random_input(rng: np.random.Generator, name: str, shape: list[int], t: float) -> np.ndarray:
    if name == "timestep":
        return np.full(shape, t, np.float32)
    if name == "images":
        return rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    return rng.standard_normal(shape, dtype=np.float32)

