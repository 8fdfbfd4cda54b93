"""The native TensorRT backend's CUDA side on a real GPU, with a stand-in engine (tests/runtime/standin_tensorrt.py) where
TensorRT is not installed: device buffers, copies, profiles, CUDA graphs, the engine cache and CuPy sampler state.
All `gpu` (deselected by default); each skips cleanly without CuPy, cuda.bindings or a CUDA device."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

sys.path.insert(0, str(Path(__file__).parent))
import standin_tensorrt as standin  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "engines" / "default"


@pytest.fixture
def cuda(monkeypatch):
    """cupy + cuda.bindings on a CUDA device, the stand-in at sys.modules["tensorrt"] and its builder; yields the
    list of (stage, precision) builds."""
    cp = pytest.importorskip("cupy")
    pytest.importorskip("cuda.bindings")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cp.cuda.runtime.CUDARuntimeError as e:
        pytest.skip(f"no CUDA device ({e})")
    from vdt_runtime.backends import trt_engines as te
    from vdt_runtime.bundle import Bundle

    builds: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", standin.module())
    monkeypatch.setattr(te, "build_engine", standin.builder(Bundle.load(DEFAULT), builds))
    return builds


def _feeds(xp, rng, shapes):
    for b, t in shapes:
        yield {"latents": xp.asarray(rng.standard_normal((b, t, 4, 16, 16), dtype=np.float32)),
               "timestep": xp.asarray(rng.uniform(0, 999, b).astype(np.float32))}


@pytest.mark.parametrize("cuda_graph", [False, True])
@pytest.mark.parametrize("on_device", [False, True])
def test_calls_match_the_reference_across_shapes_and_profiles(cuda, tmp_path, cuda_graph, on_device):
    import cupy as cp

    from vdt_runtime._xp import to_numpy
    from vdt_runtime.backends import open_backend
    from vdt_runtime.bundle import Bundle

    bundle = Bundle.load(DEFAULT)
    plan = standin.plan_for(bundle, "denoiser")
    opts = {"cache_dir": str(tmp_path), "cuda_graph": cuda_graph, "frame_buckets": [4]}
    be = open_backend(bundle, "denoiser", "tensorrt", "fp32", opts)
    assert len(be.profiles) == 2 and be.providers[0].startswith("TensorRT:")
    xp = cp if on_device else np
    rng = np.random.default_rng(0)
    # profile 0, profile 1, back to 0, and the same shapes again (a replayed graph must read the NEW inputs)
    shapes = [(1, 1), (2, 3), (1, 8), (2, 3), (2, 3), (2, 3), (1, 8), (1, 8)]
    for feed in _feeds(xp, rng, shapes):
        out = be.run(feed)["model_out"]
        assert isinstance(out, cp.ndarray) == on_device
        host = {k: to_numpy(v) for k, v in feed.items()}
        np.testing.assert_allclose(to_numpy(out), standin.reference(plan, host), atol=2e-6, rtol=0)
    launches = sum(c.launches for c in be._engine.contexts)
    assert set(be._buffers) == {0, 1}  # buffers allocated once per profile, kept
    if cuda_graph:  # each shape runs eagerly once, is captured at its second call, then replays: 2 shapes repeat
        assert len(be._graphs) == 2 and launches == 3 + 2
    else:
        assert not be._graphs and launches == len(shapes)
    be.close()
    be.close()


def test_engine_cache_builds_once_and_reuses(cuda, tmp_path):
    from vdt_runtime.backends import open_backend
    from vdt_runtime.bundle import Bundle

    bundle = Bundle.load(DEFAULT)
    for _ in range(2):
        open_backend(bundle, "denoiser", "tensorrt", "fp32", {"cache_dir": str(tmp_path)}).close()
    assert cuda == [("denoiser", "fp32")]
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_sampler_state_on_the_gpu_gives_the_host_result(cuda, tmp_path):
    """The whole predict pipeline through the backend: sampler state in CuPy (device_state) vs NumPy."""
    import cupy as cp

    from vdt_runtime import Pipeline

    frames = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    outs = {}
    for device_state in (True, False):
        opts = {"cache_dir": str(tmp_path), "device_state": device_state}
        with Pipeline.load(DEFAULT, backend="tensorrt", precision="fp32", options=opts) as pipe:
            assert (pipe.backends["denoiser"].array_namespace() is cp) == device_state
            for sampler in ("ddpm", "ddim", "dpmpp"):
                outs[device_state, sampler] = pipe.predict(frames, cond=4, total=8, steps=10, sampler=sampler,
                                                           seed=3).frames
    for sampler in ("ddpm", "ddim", "dpmpp"):
        gpu, host = outs[True, sampler].astype(int), outs[False, sampler].astype(int)
        assert np.abs(gpu - host).max() <= 1, sampler  # float rounding of CuPy vs NumPy may flip a pixel's rounding
        assert (gpu != host).mean() < 1e-3, sampler
        assert np.array_equal(gpu[:4], host[:4])  # the given frames are the input's
