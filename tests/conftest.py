"""Shared fixtures: a tiny randomised VDT + VAE and the bundle exported from them (torch imported lazily)."""
from __future__ import annotations

import pytest

TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_models():
    """(vdt, vae): VDT-tiny (input_size 8, patch 2, 8 frames, 4 channels) + a /2 VAE, all weights randomised."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from vdt_export.sources import randomize_
    from vdt_export.models import VDT, config_from_name
    from vdt_export.sources import build_vae, tiny_vae_config

    vdt = VDT(config_from_name("VDT-tiny", input_size=8, num_frames=8, in_channels=4))
    randomize_(vdt, seed=TINY_SEED)
    vae = randomize_(build_vae(tiny_vae_config()), seed=TINY_SEED + 1)
    return vdt.eval(), vae.eval()


@pytest.fixture(scope="session")
def tiny_bundle(tiny_models, tmp_path_factory):
    """Path of a bundle (image_size 16, T ≤ 8) exported from `tiny_models`."""
    pytest.importorskip("onnx")
    from vdt_export.bundle import export_bundle

    vdt, vae = tiny_models
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    training = {"source": "random-init", "seed": TINY_SEED}
    return export_bundle(vdt, vae, out, name="tiny", image_size=16, training=training)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_bundle):
    """One CPU Pipeline (1 intra-op thread) on `tiny_bundle`, shared: Pipeline calls keep no state between them."""
    from vdt_runtime import Pipeline

    return Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1})


@pytest.fixture(scope="session")
def int8_bundle(tiny_bundle, tmp_path_factory):
    """A copy of `tiny_bundle` with an INT8 denoiser (onnxruntime dynamic quantization) added."""
    pytest.importorskip("onnxruntime.quantization")
    import shutil

    from vdt_export.quantize import quantize_bundle

    out = tmp_path_factory.mktemp("quantized") / "tiny"
    shutil.copytree(tiny_bundle, out)
    quantize_bundle(out)
    return out
