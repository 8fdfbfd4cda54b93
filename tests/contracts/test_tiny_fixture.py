"""The committed tiny bundle (tests/data/tiny_bundle) is the export of tests/tiny_fixture.py's models, not a drifted copy.

The runtime tests use the committed bundle and the export tests the torch models; both stand for the same model only
while the bundle's graphs compute what the models compute. Regenerate with `python tests/tiny_fixture.py`.
"""
from __future__ import annotations

import numpy as np
import pytest

import tiny_fixture
from vdt_runtime import Pipeline
from vdt_runtime.bundle import Bundle


def test_committed_bundle_loads_with_every_hash_checked():
    bundle = Bundle.load(tiny_fixture.BUNDLE, verify=True)
    assert bundle.image_size == tiny_fixture.IMAGE_SIZE and "golden" in bundle.manifest


def test_committed_bundle_computes_what_the_fixture_models_compute(tiny_models):
    torch = pytest.importorskip("torch")
    from vdt_export.vae import VAEEncoder

    vdt, vae = tiny_models
    encoder = VAEEncoder(vae, Bundle.load(tiny_fixture.BUNDLE).vae["scale_factor"]).eval()
    rng = np.random.default_rng(3)
    latents = rng.standard_normal((2, 5, 4, 8, 8)).astype(np.float32)
    t = np.array([17.0, 803.0], np.float32)
    image = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = {"denoiser": vdt(torch.from_numpy(latents), torch.from_numpy(t)).numpy(),
                "vae_encoder": encoder(torch.from_numpy(image)).numpy()}
    with Pipeline.load(tiny_fixture.BUNDLE, backend="cpu", options={"threads": 1}) as pipe:
        den, enc = pipe.backends["denoiser"], pipe.backends["vae_encoder"]
        got = {"denoiser": den.run({den.inputs[0].name: latents, den.inputs[1].name: t})[den.outputs[0].name],
               "vae_encoder": enc.run({enc.inputs[0].name: image})[enc.outputs[0].name]}
    for stage in want:
        assert np.std(want[stage]) > 1e-2, f"{stage}: the randomised model must not output ~zeros"
        np.testing.assert_allclose(got[stage], want[stage], atol=1e-4 * max(1.0, np.abs(want[stage]).max()),
                                   err_msg=f"{stage} of tests/data/tiny_bundle drifted from tests/tiny_fixture.py")
