"""onnxruntime's CUDA provider on a real GPU (marker gpu; skips cleanly where onnxruntime-gpu's CUDA provider does
not really load). The simulated-GPU layer (test_gpu_simulated.py) runs every branch around it in CI; this confirms
the device side: I/O binding with CuPy arrays in and out (no host copy), CUDA graphs, parity with the CPU."""
from __future__ import annotations

import numpy as np
import pytest

from vdt_runtime.bundle import Bundle

pytestmark = pytest.mark.gpu
DEFAULT = Bundle.load(None)


def _cuda(stage="denoiser", **options):
    from vdt_runtime.backends import available, open_backend

    if available("cuda"):
        pytest.skip(available("cuda"))
    b = open_backend(DEFAULT, stage, "cuda", options=options)
    if b.providers[0] != "CUDAExecutionProvider":
        pytest.skip(f"the CUDA provider did not load here; sessions got {b.providers}")
    return b


def _feed(n=2, t=4):
    rng = np.random.default_rng(0)
    return {"latents": rng.standard_normal((n, t, 4, 16, 16), dtype=np.float32),
            "timestep": np.array([10.0, 900.0][:n], np.float32)}


@pytest.mark.parametrize("options", [{"io_binding": False}, {}, {"cuda_graph": True}])
def test_cuda_matches_the_cpu(options):
    from vdt_runtime.backends import open_backend

    gpu, cpu = _cuda(**options), open_backend(DEFAULT, "denoiser", "cpu", options={"fused": False})
    for _ in range(3):  # CUDA graphs: capture, then replays
        np.testing.assert_allclose(gpu.run(_feed())["model_out"], cpu.run(_feed())["model_out"], atol=2e-3, rtol=1e-3)


def test_cupy_in_cupy_out_without_a_host_copy():
    cupy = pytest.importorskip("cupy")
    gpu = _cuda()
    assert gpu.array_namespace() is cupy
    feed = {k: cupy.asarray(v) for k, v in _feed().items()}
    out = gpu.run(feed)["model_out"]
    assert isinstance(out, cupy.ndarray)
    np.testing.assert_array_equal(out.get(), gpu.run(_feed())["model_out"])


def test_default_load_uses_the_gpu():
    from vdt_runtime import Pipeline

    _cuda().close()
    with Pipeline.load() as pipe:
        assert pipe.backend == "cuda" and pipe.providers["denoiser"][0] == "CUDAExecutionProvider"
        frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        with Pipeline.load(backend="cpu") as ref:
            a = pipe.predict(frames, cond=2, total=4, steps=2, seed=0).frames
            b = ref.predict(frames, cond=2, total=4, steps=2, seed=0).frames
        assert np.abs(a.astype(int) - b).max() <= 2  # fp32 with TF32 off: the CPU's frames within rounding
