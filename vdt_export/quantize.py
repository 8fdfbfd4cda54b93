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

import onnx
from google.protobuf.message import DecodeError

from vdt_runtime.errors import BundleError, InputError

from .bundle import amend_manifest, write_manifest
from .stage_error import CalibrationReader

INT8_FILE = "denoiser.int8.onnx"
MODES = ("dynamic", "static")


def quantize_bundle(bundle_dir: str | os.PathLike, *, mode: str = "dynamic", calibration_batches: int = 8,
                    seed: int = 0) -> Path:
    """Write `denoiser.int8.onnx` beside the fp32 denoiser and list it in manifest.json; returns its path."""
    if mode not in MODES:
        raise InputError(f"unknown quantization mode {mode!r}; choose one of {', '.join(MODES)}")
    bundle_dir = Path(bundle_dir)
    manifest = amend_manifest(bundle_dir)  # every listed file checked: nothing corrupt is quantized or re-listed
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
                _static(clean, out, CalibrationReader(stage, calibration_batches, seed), op_types)
        onnx.checker.check_model(str(out))
        os.replace(out, target)
    stage["files"]["int8"] = INT8_FILE
    manifest.setdefault("quantization", {})["int8"] = {"mode": mode, "op_types": op_types, "source": fp32.name,
                                                      "weights": "int8 per channel",
                                                      "activations": "uint8 (per call)" if mode == "dynamic"
                                                      else "uint8 (calibrated on random latents)"}
    write_manifest(bundle_dir, manifest, written={INT8_FILE})
    return target


def _without_value_info(src: Path, dst: Path) -> None:
    """Copy of the model with its intermediate value_info dropped: the exporter's stored shapes disagree with
    onnx shape inference on some nodes, which makes the quantizer's own inference pass fail."""
    try:
        model = onnx.load(str(src))
    except DecodeError as e:
        raise BundleError(f"{src.name} is not a readable ONNX model ({e})") from None
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
