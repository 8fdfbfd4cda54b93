"""INT8 quantization of a bundle's denoiser: the file runs, is listed with a correct hash, and is close to fp32."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime.quantization")


def test_int8_listed_with_hash(int8_bundle):
    from vdt_runtime.bundle import Bundle, sha256_file

    manifest = json.loads((int8_bundle / "manifest.json").read_text())
    assert manifest["stages"]["denoiser"]["files"]["int8"] == "denoiser.int8.onnx"
    entry = manifest["files"]["denoiser.int8.onnx"]
    path = int8_bundle / "denoiser.int8.onnx"
    assert entry == {"sha256": sha256_file(path), "size": path.stat().st_size}
    assert not list(int8_bundle.glob(".*")), "temp files left behind"
    bundle = Bundle.load(int8_bundle, verify=True)
    assert "int8" in bundle.precisions("denoiser")


def test_int8_comes_from_the_fused_graph(int8_bundle):
    import collections

    import onnx

    manifest = json.loads((int8_bundle / "manifest.json").read_text())
    assert manifest["quantization"]["int8"]["source"] == "denoiser.fused.onnx"
    assert manifest["quantization"]["int8"]["op_types"] == ["MatMul", "Attention"]
    ops = collections.Counter(n.op_type for n in onnx.load(str(int8_bundle / "denoiser.int8.onnx")).graph.node)
    assert ops["QAttention"] == 4 and ops["Attention"] == 0 and ops["MatMulInteger"] > 0
    from vdt_runtime.backends import open_backend
    from vdt_runtime.bundle import Bundle

    assert open_backend(Bundle.load(int8_bundle), "denoiser", "cpu", "int8").graph == "fused"  # says what it runs


def test_int8_close_but_not_identical(int8_bundle):
    import onnxruntime as ort

    stage = json.loads((int8_bundle / "manifest.json").read_text())["stages"]["denoiser"]
    rng = np.random.default_rng(0)
    feed = {"latents": rng.standard_normal((2, 4, 4, 8, 8), dtype=np.float32),
            "timestep": np.array([10.0, 700.0], np.float32)}
    outs = {}
    for precision, name in stage["files"].items():
        session = ort.InferenceSession(str(int8_bundle / name), providers=["CPUExecutionProvider"])
        assert session.get_providers() == ["CPUExecutionProvider"]
        outs[precision] = session.run(None, feed)[0]
    diff = np.abs(outs["int8"] - outs["fp32"])
    scale = np.abs(outs["fp32"]).mean()
    assert outs["int8"].shape == outs["fp32"].shape and np.isfinite(outs["int8"]).all()
    assert diff.max() > 0, "int8 output is identical to fp32: nothing was quantized"
    assert diff.mean() < 0.1 * scale, f"mean abs error {diff.mean():.4g} vs mean |fp32| {scale:.4g}"


def test_int8_runs_in_pipeline(int8_bundle):
    from vdt_runtime import Pipeline

    pipe = Pipeline.load(int8_bundle, backend="cpu", precision="int8")
    assert pipe.backends["denoiser"].precision == "int8"
    frames = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    out = pipe.predict(frames[:2], cond=2, total=4, steps=2, seed=0).frames
    assert out.shape == (4, 16, 16, 3) and out.dtype == np.uint8


def test_unknown_mode_refused(tiny_bundle):
    from vdt_export.quantize import quantize_bundle
    from vdt_runtime.errors import InputError

    with pytest.raises(InputError, match="fp16"):
        quantize_bundle(tiny_bundle, mode="fp16")


def test_static_mode_from_the_fused_graph(tiny_bundle, tmp_path):
    from vdt_export.quantize import quantize_bundle
    from vdt_export.stage_error import precision_error
    from vdt_runtime import Pipeline

    out = tmp_path / "static"
    shutil.copytree(tiny_bundle, out)
    quantize_bundle(out, mode="static", calibration_batches=2)
    q = json.loads((out / "manifest.json").read_text())["quantization"]["int8"]
    assert (q["mode"], q["op_types"], q["source"]) == ("static", ["MatMul"], "denoiser.fused.onnx")  # QDQ: Attention fp32
    err = precision_error(out)
    assert 0 < err["mean_abs"] < 0.1 * err["fp32_mean_abs"]
    pipe = Pipeline.load(out, backend="cpu", precision="int8")
    assert pipe.predict(np.zeros((2, 16, 16, 3), np.uint8), cond=2, total=4, steps=2).frames.shape == (4, 16, 16, 3)
