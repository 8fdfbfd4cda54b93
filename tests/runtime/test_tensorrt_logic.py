"""The TensorRT path's plain logic, which runs without TensorRT or a GPU: profiles from the manifest, profile choice,
the engine cache key, what makes a cached engine unusable, the cache itself, the precision policy, options, and
the typed error when the backend is chosen on a machine without it. GPU parts are at the end, marked `gpu`."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vdt_runtime.backends import trt_engines as te
from vdt_runtime.errors import BackendError, InputError

H100 = te.Device("NVIDIA H100 80GB HBM3", (9, 0), "10.13.0.35")


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    from vdt_runtime.bundle import Bundle

    return Bundle.load(tiny_bundle)


def test_profile_from_manifest_min_opt_max(bundle):
    (p,) = te.profiles(bundle.stage("denoiser"))
    axes = bundle.stage("denoiser").dynamic_axes
    b, t = axes["batch"], axes["frames"]
    assert p.shapes["latents"] == ((b["min"], t["min"], 4, 8, 8), (b["opt"], t["opt"], 4, 8, 8),
                                   (b["max"], t["max"], 4, 8, 8))
    assert p.shapes["timestep"] == ((b["min"],), (b["opt"],), (b["max"],))
    enc = te.profiles(bundle.stage("vae_encoder"))[0].shapes["images"]
    assert enc[2] == (64, 3, 16, 16) and enc[0][1] == 3


def test_frame_buckets_split_the_frames_axis(bundle):
    ps = te.profiles(bundle.stage("denoiser"), (2, 4))  # max frames 8 → buckets 1..2, 3..4, 5..8
    assert [(p.shapes["latents"][0][1], p.shapes["latents"][1][1], p.shapes["latents"][2][1]) for p in ps] == \
        [(1, 2, 2), (3, 4, 4), (5, 8, 8)]
    assert te.select_profile(ps, {"latents": (1, 3, 4, 8, 8), "timestep": (1,)}, "denoiser") == 1
    assert te.select_profile(ps, {"latents": (2, 8, 4, 8, 8), "timestep": (2,)}, "denoiser") == 2
    with pytest.raises(InputError, match="frame_buckets must be integers in 1..8"):
        te.profiles(bundle.stage("denoiser"), (0, 9))
    with pytest.raises(InputError, match="no frames axis"):
        te.profiles(bundle.stage("vae_decoder"), (2,))


def test_shapes_outside_every_profile_refused(bundle):
    ps = te.profiles(bundle.stage("denoiser"))
    for shapes in ({"latents": (1, 9, 4, 8, 8), "timestep": (1,)},  # T past max
                   {"latents": (1, 2, 4, 16, 16), "timestep": (1,)},  # wrong h, w
                   {"latents": (1, 2, 4, 8), "timestep": (1,)}):  # wrong rank
        with pytest.raises(InputError, match="fit no optimization profile"):
            te.select_profile(ps, shapes, "denoiser")


def _spec(bundle, **kw):
    return te.build_spec(bundle, "denoiser", "fp32", **kw)


def test_key_covers_external_weights(tmp_path):
    """engines/default's denoiser graphs read one shared denoiser.data: new weights there, with denoiser.onnx
    byte-identical, must give another engine key (a stale engine is never reused)."""
    import shutil

    from vdt_runtime.bundle import Bundle, default_bundle_path, sha256_file

    copy = tmp_path / "default"
    shutil.copytree(default_bundle_path(), copy)
    before = te.build_spec(Bundle.load(copy), "denoiser", "fp32")
    assert before.onnx_sha256 != Bundle.load(copy).manifest["files"]["denoiser.onnx"]["sha256"]
    data = copy / "denoiser.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF  # one weight byte
    data.write_bytes(bytes(raw))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["denoiser.data"]["sha256"] = sha256_file(data)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    after = te.build_spec(Bundle.load(copy), "denoiser", "fp32")
    assert after.onnx_sha256 != before.onnx_sha256 and after.key(H100) != before.key(H100)


def test_key_depends_on_everything_that_built_the_engine(bundle):
    base = _spec(bundle)
    k = base.key(H100)
    assert k == _spec(bundle).key(H100) and len(k) == 16
    variants = [replace(base, onnx_sha256="0" * 64), replace(base, precision="fp16"),
                _spec(bundle, frame_buckets=(4,)), _spec(bundle, workspace_gb=2.0), replace(base, tf32=True),
                replace(base, version_compatible=True), replace(base, hardware_compat="ampere+")]
    keys = {v.key(H100) for v in variants}
    assert k not in keys and len(keys) == len(variants)
    for device in (replace(H100, tensorrt="10.13.1.0"), replace(H100, name="NVIDIA L4", compute_capability=(8, 9))):
        assert base.key(device) != k


def test_compatible_engines_ignore_what_they_are_compatible_across(bundle):
    vc = replace(_spec(bundle), version_compatible=True, hardware_compat="ampere+")
    l4 = te.Device("NVIDIA L4", (8, 9), "10.14.2.1")
    assert vc.key(H100) == vc.key(l4)  # same TensorRT major, any Ampere+ GPU
    assert vc.key(H100) != vc.key(replace(l4, tensorrt="11.0.0"))


def test_why_unusable_names_each_mismatch(bundle):
    spec = _spec(bundle)
    meta = spec.meta(H100)
    assert te.why_unusable(meta, spec, H100) == []
    other = te.Device("NVIDIA L4", (8, 9), "10.13.0.35")
    assert any("GPU: engine built for NVIDIA H100" in r for r in te.why_unusable(meta, spec, other))
    newer = replace(H100, tensorrt="10.14.0.0")
    assert te.why_unusable(meta, spec, newer) == ["TensorRT: engine built with 10.13.0.35, this is 10.14.0.0"]
    assert any("onnx_sha256" in r for r in te.why_unusable(meta, replace(spec, onnx_sha256="f" * 64), H100))
    assert any("flag tf32" in r for r in te.why_unusable(meta, replace(spec, tf32=True), H100))
    assert te.why_unusable(meta, replace(spec, workspace_gb=1.0), H100) == []  # how it was built, not what it computes
    shipped = replace(spec, version_compatible=True, hardware_compat="ampere+")
    m2 = shipped.meta(H100)
    assert te.why_unusable(m2, shipped, te.Device("NVIDIA L4", (8, 9), "10.14.0.0")) == []
    assert te.why_unusable(m2, shipped, te.Device("Tesla T4", (7, 5), "10.14.0.0")) == \
        ["GPU: ampere+ engine needs compute capability ≥ 8.0, this is 7.5"]
    assert "same major" in te.why_unusable(m2, shipped, replace(H100, tensorrt="10.12.0.0"))[0]  # older runtime


def test_cache_finds_checks_and_refuses(bundle, tmp_path):
    spec = _spec(bundle)
    assert te.find_engine(tmp_path, spec, H100) == (None, [])
    path = te.write_engine(tmp_path, spec, H100, b"plan bytes")
    assert path.parent == tmp_path and path.name.startswith("tiny.denoiser.fp32.")
    assert not list(tmp_path.glob(".*")), "temp files left behind"
    assert te.find_engine(tmp_path, spec, H100) == (path, [])
    assert te.ensure_engine(bundle, spec, H100, tmp_path, build=False) == path
    # another machine: the engine is a candidate but is rejected, with the reason
    plan, rejected = te.find_engine(tmp_path, spec, replace(H100, tensorrt="10.14.0.0"))
    assert plan is None and "TensorRT: engine built with 10.13.0.35" in rejected[0]
    # a plan whose bytes changed after the build is never used
    path.write_bytes(b"other bytes")
    plan, rejected = te.find_engine(tmp_path, spec, H100)
    assert plan is None and "does not match the sha256" in rejected[0]
    with pytest.raises(BackendError, match="no usable TensorRT engine.*does not match"):
        te.ensure_engine(bundle, spec, H100, tmp_path, build=False)
    path.with_suffix(".json").unlink()
    assert "no readable" in te.find_engine(tmp_path, spec, H100)[1][0]


@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', "3", "null",
                                  '{"flags": [1], "compute_capability": 9}', '{"compute_capability": "9.0"}'])
def test_engine_json_of_the_wrong_shape_is_a_rejection_not_a_crash(bundle, tmp_path, meta):
    """issue 21 class 5: an engine-cache .json that is not an object (or whose fields are of the wrong type) is a
    rejected candidate, refused with a typed BackendError naming it — never an AttributeError from inside."""
    spec = _spec(bundle)
    path = te.write_engine(tmp_path, spec, H100, b"plan bytes")
    path.with_suffix(".json").write_text(meta)
    plan, rejected = te.find_engine(tmp_path, spec, H100)
    assert plan is None and rejected[0].startswith(path.name)
    with pytest.raises(BackendError, match=f"no usable TensorRT engine.*{path.name}"):
        te.ensure_engine(bundle, spec, H100, tmp_path, build=False)


def test_missing_engine_build_without_tensorrt_is_a_typed_error(bundle, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without it
    with pytest.raises(BackendError, match="tensorrt package"):
        te.ensure_engine(bundle, _spec(bundle), H100, tmp_path)


def test_precision_policy(bundle):
    with pytest.raises(InputError, match="backend 'tensorrt' cannot run precision 'int8'; it runs: fp32, fp16"):
        te.build_spec(bundle, "denoiser", "int8")
    with pytest.raises(InputError, match="vdt-export fp16"):
        te.build_spec(bundle, "denoiser", "fp16")  # the tiny bundle has no fp16 ONNX
    from vdt_runtime.backends.tensorrt import TensorRTBackend

    assert TensorRTBackend.precisions(bundle, "denoiser", "tensorrt") == ("fp32",)
    with pytest.raises(InputError, match="hardware_compat"):
        replace(_spec(bundle), hardware_compat="turing+")
    with pytest.raises(InputError, match="workspace_gb"):
        _spec(bundle, workspace_gb=0)


def test_options_checked(bundle):
    from vdt_runtime.backends.base import check_options
    from vdt_runtime.backends.tensorrt import TensorRTBackend, TrtOptions

    with pytest.raises(InputError, match="does not take option.*'threads'.*cache_dir"):
        check_options("tensorrt", {"threads": 2}, TensorRTBackend)
    ok = check_options("tensorrt", {"frame_buckets": [4, 8], "cache_dir": "x", "workspace_gb": "2.5"}, TensorRTBackend)
    assert ok.frame_buckets == (4, 8) and str(ok.cache_dir) == "x" and ok.workspace_gb == 2.5
    assert TrtOptions(frame_buckets="4,8").frame_buckets == (4, 8)
    for bad in ({"cuda_graph": "yes"}, {"device_id": -1}, {"frame_buckets": "4,x"}, {"frame_buckets": 4},
                {"cache_dir": 3}, {"workspace_gb": "lots"}):
        with pytest.raises(InputError):
            TrtOptions(**bad)


def test_engine_cache_inside_the_bundle_is_refused_before_anything_is_built(bundle):
    """The rule every build cache keeps (onnxruntime-TensorRT, OpenVINO): engines never go into the hashed bundle."""
    from vdt_runtime.backends import Plan
    from vdt_runtime.backends.tensorrt import TensorRTBackend, TrtOptions

    inside = bundle.path / "trt"
    plan = Plan("tensorrt", {"denoiser": "fp32"}, TrtOptions(cache_dir=inside))
    with pytest.raises(InputError, match="tensorrt cache_dir .* is inside the bundle"):
        TensorRTBackend.open(bundle, "denoiser", plan)
    assert not inside.exists()


def test_default_cache_dir_outside_the_bundle(monkeypatch, tmp_path):
    monkeypatch.delenv("VDT_TRT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert te.default_cache_dir() == tmp_path / "vdt" / "tensorrt"
    monkeypatch.setenv("VDT_TRT_CACHE", str(tmp_path / "engines"))
    assert te.default_cache_dir() == tmp_path / "engines"


def test_choosing_tensorrt_without_it_is_a_typed_error(tiny_bundle, monkeypatch):
    """Here there is no tensorrt (or it is hidden): Pipeline.load names what is missing."""
    from vdt_runtime import Pipeline
    from vdt_runtime.backends import available

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert "tensorrt package" in available("tensorrt")
    with pytest.raises(BackendError, match="backend 'tensorrt' is not available here: .*tensorrt package"):
        Pipeline.load(tiny_bundle, backend="tensorrt")


def test_importing_the_runtime_imports_no_gpu_package():
    code = ("import sys, vdt_runtime, vdt_runtime.backends, vdt_runtime.backends.trt_engines, vdt_runtime.backends.tensorrt; "
            "bad = [m for m in ('tensorrt', 'cuda', 'cupy', 'torch') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class _EngineStandIn:
    """What TensorRTBackend._selftest reads of a new engine's backend: the stage's I/O, a run() (here onnxruntime's,
    optionally perturbed) and the plan path in the cache."""

    def __init__(self, bundle, stage, plan_path, change=lambda v: v):
        from vdt_runtime.backends import open_backend

        self.real = open_backend(bundle, stage, "cpu", "fp32")
        for key in ("stage", "precision", "inputs", "outputs", "providers"):
            setattr(self, key, getattr(self.real, key))
        self.plan_path, self.change, self.closed = plan_path, change, False

    def run(self, inputs):
        return {k: self.change(v) for k, v in self.real.run(inputs).items()}

    def close(self):
        self.closed = True


def test_new_engine_self_test_recorded_or_engine_not_cached(bundle, tmp_path):
    """A freshly built engine runs the bundle's golden cases once: a pass is recorded in its .json (and the cache
    still finds it); a failure removes the plan and its .json and raises SelfTestError naming the stage."""
    from vdt_runtime.backends.tensorrt import TensorRTBackend
    from vdt_runtime.errors import SelfTestError

    spec = _spec(bundle)
    path = te.write_engine(tmp_path, spec, H100, b"plan bytes")
    good = _EngineStandIn(bundle, "denoiser", path)
    TensorRTBackend._selftest(good, bundle)
    record = json.loads(path.with_suffix(".json").read_text())["selftest"]
    assert record["passed"] and [c["stage"] for c in record["checks"]] == ["denoiser", "end_to_end"]
    assert te.find_engine(tmp_path, spec, H100) == (path, []) and not good.closed

    bad = _EngineStandIn(bundle, "denoiser", path, lambda v: v * 1.05)
    with pytest.raises(SelfTestError, match=r"new TensorRT engine tiny\.denoiser\.fp32\.\w+\.plan failed the self-test "
                                            r"and was not cached: denoiser \(fp32\): max abs error"):
        TensorRTBackend._selftest(bad, bundle)
    assert bad.closed and not path.exists() and not path.with_suffix(".json").exists()
    assert te.find_engine(tmp_path, spec, H100) == (None, [])


def test_engine_of_a_bundle_without_golden_cases_records_the_skip(tmp_path):
    path = te.write_engine(tmp_path, te.BuildSpec("b", "denoiser", "fp32", "0" * 64, ()), H100, b"plan")
    assert te.record_selftest(path, None) == {"skipped": "the bundle has no golden cases"}
    assert json.loads(path.with_suffix(".json").read_text())["selftest"]["skipped"]
    assert path.is_file()


# --- on a GPU with TensorRT (deselected by default; skip cleanly elsewhere) ------------------------------------


def _gpu_or_skip():
    pytest.importorskip("tensorrt")
    pytest.importorskip("cuda.bindings")
    from vdt_runtime.backends import available

    reason = available("tensorrt")
    if reason:
        pytest.skip(reason)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_engine_matches_onnxruntime(tiny_bundle, bundle, tmp_path, cuda_graph):
    _gpu_or_skip()
    from vdt_runtime.backends import open_backend

    opts = {"cache_dir": str(tmp_path), "cuda_graph": cuda_graph, "frame_buckets": [4]}
    trt = open_backend(bundle, "denoiser", "tensorrt", "fp32", opts)
    ref = open_backend(bundle, "denoiser", "cpu", "fp32")
    rng = np.random.default_rng(0)
    for b, t in ((1, 1), (2, 3), (1, 8), (2, 3)):
        feed = {"latents": rng.standard_normal((b, t, 4, 8, 8), dtype=np.float32),
                "timestep": np.full(b, 321.0, np.float32)}
        got, want = trt.run(feed)["model_out"], ref.run(feed)["model_out"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["precision"] == "fp32"
    trt.close()
    trt.close()


def test_api_check_finds_what_the_code_uses_and_what_an_api_lacks(tmp_path, capsys):
    """benchmarks/check_trt_api.py: the TensorRT names read by the code, checked against an API's names."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import check_trt_api

    names = check_trt_api.used_names(check_trt_api.ROOT / s for s in check_trt_api.SOURCES)
    assert {"execute_async_v3", "set_tensor_address", "set_input_shape", "build_serialized_network",
            "STRONGLY_TYPED", "deserialize_cuda_engine"} <= set(names)
    assert not {"read_bytes", "shapes", "cudaMalloc", "_engine"} & set(names)  # Path, our own, cuda.bindings
    stub = tmp_path / "tensorrt.pyi"
    stub.write_text("\n".join(n for n in names if n != "execute_async_v3"))
    assert check_trt_api.main(["--api", str(stub)]) == 1
    assert "missing: execute_async_v3 (tensorrt.py:" in capsys.readouterr().out
    stub.write_text("\n".join(names))
    assert check_trt_api.main(["--api", str(stub)]) == 0
