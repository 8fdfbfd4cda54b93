"""torch vs onnxruntime parity for the exported stages (one ONNX file serves every B and T)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-4


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=["denoiser.onnx", "denoiser.fused.onnx"])
def denoiser(tiny_bundle, request):
    """The standard graph and the onnxruntime-fused one: both must match torch."""
    return _session(tiny_bundle / request.param)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("frames", [1, 3, 8])
def test_denoiser_matches_torch(tiny_models, denoiser, batch, frames):
    vdt, _ = tiny_models
    rng = np.random.default_rng(batch * 10 + frames)
    latents = rng.standard_normal((batch, frames, 4, 8, 8)).astype(np.float32)
    timestep = rng.uniform(0, 999, size=batch).astype(np.float32)
    (got,) = denoiser.run(None, {"latents": latents, "timestep": timestep})
    with torch.no_grad():
        want = vdt(torch.from_numpy(latents), torch.from_numpy(timestep)).numpy()
    assert got.shape == (batch, frames, 8, 8, 8)
    assert np.abs(want).mean() > 1e-2  # randomised weights: the output is not trivially zero
    assert np.abs(got - want).max() <= TOL


def test_vae_encoder_and_decoder_match_torch(tiny_models, tiny_bundle):
    from vdt_export.vae import VAEDecoder, VAEEncoder

    _, vae = tiny_models
    rng = np.random.default_rng(0)
    cases = [("vae_encoder.onnx", "images", VAEEncoder(vae), (2, 3, 16, 16)),
             ("vae_encoder.onnx", "images", VAEEncoder(vae), (3, 3, 24, 8)),  # dynamic batch, height, width
             ("vae_decoder.onnx", "latents", VAEDecoder(vae), (2, 4, 8, 8)),
             ("vae_decoder.onnx", "latents", VAEDecoder(vae), (1, 4, 4, 6))]
    for filename, name, module, shape in cases:
        x = rng.uniform(-1, 1, size=shape).astype(np.float32)
        (got,) = _session(tiny_bundle / filename).run(None, {name: x})
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        assert got.shape == want.shape
        assert np.abs(want).mean() > 1e-3
        assert np.abs(got - want).max() <= TOL, (filename, shape)


def test_encoder_returns_scaled_posterior_mean(tiny_models):
    from vdt_export.vae import VAEEncoder

    _, vae = tiny_models
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        want = vae.encode(images).latent_dist.mean * 0.5
        got = VAEEncoder(vae, scale_factor=0.5)(images)
    torch.testing.assert_close(got, want)


def test_onnx_checker_and_io_names(tiny_bundle):
    for filename in ("denoiser.onnx", "vae_encoder.onnx", "vae_decoder.onnx"):
        onnx.checker.check_model(str(tiny_bundle / filename))
    model = onnx.load(str(tiny_bundle / "denoiser.onnx"))
    assert [i.name for i in model.graph.input] == ["latents", "timestep"]
    assert [o.name for o in model.graph.output] == ["model_out"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[1], str) and dims[2:] == [4, 8, 8]
    assert model.opset_import[0].version == 18


def test_torch_model_refuses_too_many_frames(tiny_models):
    vdt, _ = tiny_models
    with pytest.raises(ValueError, match="T=9"):
        vdt(torch.zeros(1, 9, 4, 8, 8), torch.zeros(1))


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True], ids=["standard", "fused"])
def test_vdt_s2_export_parity(tmp_path, fused):
    """A random VDT-S/2 (16 frames, 32×32 latents) exported once, checked at T = 1, 4, 8, 16."""
    from vdt_export.sources import randomize_
    from vdt_export.models import VDT, config_from_name
    from vdt_export.onnx_export import export_denoiser

    vdt = randomize_(VDT(config_from_name("VDT-S/2", input_size=32, num_frames=16)), seed=3).eval()
    sess = _session(export_denoiser(vdt, tmp_path / "denoiser.onnx", max_batch=2, fused=fused))
    rng = np.random.default_rng(0)
    for frames in (1, 4, 8, 16):
        latents = rng.standard_normal((1, frames, 4, 32, 32)).astype(np.float32)
        timestep = rng.uniform(0, 999, size=1).astype(np.float32)
        (got,) = sess.run(None, {"latents": latents, "timestep": timestep})
        with torch.no_grad():
            want = vdt(torch.from_numpy(latents), torch.from_numpy(timestep)).numpy()
        err = np.abs(got - want)
        print(f"VDT-S/2 {'fused' if fused else 'standard'} T={frames}: max abs err {err.max():.3e}, mean {err.mean():.3e}, "
              f"|out| {np.abs(want).mean():.3f}")
        assert err.max() <= TOL
