"""The shipped default model end to end: its torch weights (checkpoints/default) and its bundle (engines/default)
are the same denoiser."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT, BUNDLE = REPO / "checkpoints" / "default", REPO / "engines" / "default"
TOL = 1e-4  # max abs error, fp32 torch vs fp32 onnxruntime (measured up to 6.2e-6 on outputs of mean |x| 0.6-0.9)


@pytest.fixture(scope="module")
def torch_vdt():
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from vdt_export.checkpoint import load_vdt

    heads = json.loads((CHECKPOINT / "vdt_config.json").read_text())["num_heads"]
    return load_vdt(CHECKPOINT / "vdt.safetensors", num_heads=heads)


def _inputs(frames: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"latents": rng.standard_normal((2, frames, 4, 16, 16)).astype(np.float32),
            "timestep": rng.uniform(0, 999, size=2).astype(np.float32)}


def _torch_out(vdt, feeds) -> np.ndarray:
    import torch

    with torch.no_grad():
        return vdt(torch.from_numpy(feeds["latents"]), torch.from_numpy(feeds["timestep"])).numpy()


def _compare(got, want):
    assert got.shape == want.shape
    assert np.abs(want).mean() > 0.1  # a trained model: far from zero
    err = np.abs(got - want).max()
    assert err <= TOL, f"max abs err {err:.3e}"


@pytest.mark.parametrize("frames", [5, 16])
def test_bundle_denoiser_as_the_runtime_loads_it_matches_the_checkpoint(torch_vdt, frames):
    from vdt_runtime import Pipeline

    pipe = Pipeline.load(BUNDLE, backend="cpu")
    feeds = _inputs(frames, seed=frames)
    den = pipe.backends["denoiser"]
    got = den.run(feeds)[den.outputs[0].name]
    _compare(got, _torch_out(torch_vdt, feeds))


def test_bundle_standard_onnx_matches_the_checkpoint(torch_vdt):
    """The portable graph (what TensorRT and other runtimes build from), run by onnxruntime directly."""
    import onnxruntime as ort

    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    sess = ort.InferenceSession(str(BUNDLE / manifest["stages"]["denoiser"]["files"]["fp32"]),
                                providers=["CPUExecutionProvider"])
    feeds = _inputs(16, seed=1)
    (got,) = sess.run(None, feeds)
    _compare(got, _torch_out(torch_vdt, feeds))
