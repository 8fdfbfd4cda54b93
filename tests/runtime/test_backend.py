"""onnxruntime backend: provider choice, session options, I/O contract checks, what really runs."""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from vdt_runtime.backends import BACKENDS, available, open_backend, plan, runnable
from vdt_runtime.backends import ort as ort_backend
from vdt_runtime.backends.base import nvidia_gpus
from vdt_runtime.backends.tensorrt import TensorRTBackend
from vdt_runtime.bundle import STAGES, Bundle
from vdt_runtime.errors import BackendError, BundleError, InputError

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return Bundle.load(tiny_bundle)


def test_cpu_backend_runs_and_reports_providers(bundle):
    b = open_backend(bundle, "denoiser", "cpu", options={"threads": 1})
    assert b.providers == (CPU,) and b.name == "onnxruntime" and b.precision == "fp32"
    assert [s.name for s in b.inputs] == ["latents", "timestep"]
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 8, 8)).astype(np.float32)
    out = b.run({"latents": x, "timestep": np.array([500.0], np.float32)})
    assert out["model_out"].shape == (1, 3, 8, 8, 8) and out["model_out"].dtype == np.float32
    assert np.isfinite(out["model_out"]).all()


def test_fused_graph_on_cpu_and_standard_on_request(bundle):
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 8, 8)).astype(np.float32)
    feed = {"latents": x, "timestep": np.array([5.0, 900.0], np.float32)}
    fused = open_backend(bundle, "denoiser", "cpu", options={"threads": 1})
    standard = open_backend(bundle, "denoiser", "cpu", options={"threads": 1, "fused": False})
    assert (fused.graph, standard.graph) == ("fused", "standard") and "(fused)" in repr(fused)
    assert open_backend(bundle, "vae_decoder", "cpu").graph == "standard"  # no fused file for the VAE
    np.testing.assert_allclose(fused.run(feed)["model_out"], standard.run(feed)["model_out"], atol=1e-4, rtol=0)


def test_auto_that_lands_on_cpu_alone_gets_the_fused_graph(bundle):
    b = open_backend(bundle, "denoiser", "auto")
    if b.name != "onnxruntime":  # auto chose another CPU backend (e.g. OpenVINO)
        assert b.graph == "standard"
    elif b.providers == (CPU,):  # no usable GPU here, whatever onnxruntime lists
        assert b.graph == "fused"
    else:  # a GPU provider really runs: contrib operators stay out of it
        assert b.graph == "standard"


def test_cpu_plan_asks_for_the_cpu_provider_only(bundle):
    p = plan(bundle, "cpu")
    assert p.providers == (CPU,) and p.options.io_binding is False and p.chosen is None


def test_unknown_backend_lists_choices(bundle):
    with pytest.raises(InputError, match="'metal'.*auto, cpu, cuda, ort-tensorrt"):
        open_backend(bundle, "denoiser", "metal")
    # "tensorrt" is the native TensorRT backend; onnxruntime's TensorRT provider is "ort-tensorrt"
    assert BACKENDS["tensorrt"] is TensorRTBackend and BACKENDS["ort-tensorrt"] is ort_backend.OrtBackend
    assert {"cpu", "cuda", "ort-tensorrt"} <= set(BACKENDS)


def test_cuda_request_falls_back_loudly(bundle, monkeypatch):
    """Where the driver reports a GPU but the CUDA provider cannot load, the stage runs on the CPU with a
    RuntimeWarning saying so (simulated here by a driver that reports one GPU when this machine has none)."""
    if CUDA not in ort_backend.available_providers():
        with pytest.raises(BackendError, match="CUDAExecutionProvider"):
            open_backend(bundle, "vae_decoder", "cuda")
        return
    monkeypatch.setattr(ort_backend, "nvidia_gpus", lambda: max(1, nvidia_gpus()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = open_backend(bundle, "vae_decoder", "cuda")
    if b.providers[0] == CUDA:  # a real GPU: nothing to warn about
        assert not [w for w in caught if "asked for" in str(w.message)]
    else:
        assert b.providers == (CPU,)
        assert any(issubclass(w.category, RuntimeWarning) and "runs on CPUExecutionProvider" in str(w.message)
                   for w in caught)


def test_gpu_providers_without_a_gpu_are_unavailable(bundle, monkeypatch):
    """onnxruntime-gpu offers CUDA and TensorRT providers on any machine; without a GPU the choice is refused by
    name (and `vdt info` says why) instead of running on the CPU."""
    monkeypatch.setattr(ort_backend, "available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(ort_backend, "nvidia_gpus", lambda: 0)
    for choice, provider in (("cuda", CUDA), ("ort-tensorrt", TRT)):
        assert available(choice) == (f"onnxruntime offers {provider}, but this machine has no NVIDIA GPU "
                                     "(the driver reports none)")
        with pytest.raises(BackendError, match=f"backend '{choice}' is not available here.*no NVIDIA GPU"):
            open_backend(bundle, "denoiser", choice)
    assert available("cpu") is None and runnable(bundle, "cuda") == {}


def test_cuda_missing_from_onnxruntime_is_an_error(bundle, monkeypatch):
    monkeypatch.setattr(ort_backend, "available_providers", lambda: [CPU])
    with pytest.raises(BackendError, match="backend 'cuda' is not available here.*does not offer CUDAExecutionProvider"):
        open_backend(bundle, "denoiser", "cuda")


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_graph_optimization_levels(bundle, level):
    b = open_backend(bundle, "vae_decoder", "cpu", options={"graph_optimization": level})
    out = b.run({"latents": np.zeros((2, 4, 8, 8), np.float32)})["images"]
    assert out.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("opts,match", [({"graph_optimization": "max"}, "graph_optimization must be one of disable, basic, extended, all, got 'max'"),
                                        ({"threads": 0}, "threads"), ({"threads": 1.5}, "threads"),
                                        ({"fused": "no"}, "fused must be True or False"),
                                        ({"device": "GPU"}, "'cpu' does not take option.*'device'.*threads, "
                                                            "graph_optimization, spinning, fused"),
                                        (["threads"], "options must be a dict")])
def test_bad_session_options(bundle, opts, match):
    with pytest.raises(InputError, match=match):
        open_backend(bundle, "vae_decoder", "cpu", options=opts)


def test_precisions_refused_by_name(bundle):
    with pytest.raises(InputError, match="backend 'cpu' cannot run precision 'int8'; it runs: fp32 "):
        open_backend(bundle, "denoiser", "cpu", "int8")  # the tiny bundle has no int8 file
    with pytest.raises(InputError, match="backend 'cpu' cannot run precision 'bf16'; it runs: fp32 "):
        open_backend(bundle, "denoiser", "cpu", "bf16")
    with pytest.raises(InputError, match="unknown precision 'int4'; choose one of fp32, fp16, bf16, int8"):
        open_backend(bundle, "denoiser", "cpu", "int4")


def test_runnable_and_available(bundle):
    assert available("cpu") is None and runnable(bundle, "cpu") == {s: ("fp32",) for s in STAGES}
    assert set(runnable(bundle, "auto")["denoiser"]) >= {"fp32"}


def test_close_is_idempotent_and_stops_runs(bundle):
    b = open_backend(bundle, "vae_decoder", "cpu")
    b.close()
    b.close()
    with pytest.raises(BackendError, match="vae_decoder.*closed"):
        b.run({"latents": np.zeros((1, 4, 8, 8), np.float32)})


def test_io_names_checked_against_manifest(tiny_bundle, tmp_path):
    path = shutil.copytree(tiny_bundle, tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["stages"]["vae_encoder"]["inputs"][0]["name"] = "pixels"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"'images'.*'pixels'"):
        open_backend(Bundle.load(path), "vae_encoder", "cpu")


def test_run_checks_input_names_and_wraps_failures(bundle):
    b = open_backend(bundle, "vae_decoder", "cpu")
    with pytest.raises(InputError, match="latents"):
        b.run({"x": np.zeros((1, 4, 8, 8), np.float32)})
    with pytest.raises(BackendError, match="vae_decoder"):
        b.run({"latents": np.zeros((1, 5, 8, 8), np.float32)})


def test_spinning_option_reaches_the_session_and_is_validated(tiny_bundle):
    from vdt_runtime.backends.ort import session_options

    assert session_options(spinning=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(InputError, match="spinning must be True or False"):
        session_options(spinning="no")
