"""Shared fixtures: a tiny randomised VDT + VAE (torch, imported lazily) and its committed bundle (no torch).

VDT_BLOCK_TORCH=1 makes `import torch` fail in this test process, as on a runtime-only install
(tests/contracts/test_runtime_without_torch.py runs the runtime tests that way).
"""
from __future__ import annotations

import os
import shutil
import sys

import pytest

if os.environ.get("VDT_BLOCK_TORCH") == "1":
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError

import tiny_fixture


@pytest.fixture(scope="session")
def tiny_models():
    """(vdt, vae) of tests/tiny_fixture.py: the models the committed tiny bundle was exported from."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    return tiny_fixture.make_models()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Path of a private copy of the committed tiny bundle (image_size 16, T <= 8; tests/data/tiny_bundle)."""
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    shutil.copytree(tiny_fixture.BUNDLE, out)
    return out


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_bundle):
    """One CPU Pipeline (1 intra-op thread) on `tiny_bundle`, shared: Pipeline calls keep no state between them."""
    from vdt_runtime import Pipeline

    return Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1})


@pytest.fixture(scope="session")
def int8_bundle(tiny_bundle, tmp_path_factory):
    """A copy of `tiny_bundle` with an INT8 denoiser (onnxruntime dynamic quantization) added."""
    pytest.importorskip("torch")  # vdt_export, the quantizer's home, is the torch side
    pytest.importorskip("onnxruntime.quantization")
    from vdt_export.quantize import quantize_bundle

    out = tmp_path_factory.mktemp("quantized") / "tiny"
    shutil.copytree(tiny_bundle, out)
    quantize_bundle(out)
    return out
