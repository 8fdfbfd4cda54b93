"""Self-test (issue 22): every CPU backend and precision passes its own bundle's golden cases; each planted fault
(a corrupted stage file re-listed with its new hash, a file of the wrong precision, a backend returning perturbed or
NaN outputs) fails it naming the stage, the error and the tolerance; a bundle without golden cases says so and is
otherwise unaffected."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vdt_runtime import Pipeline
from vdt_runtime.backends import available, runnable
from vdt_runtime.bundle import Bundle, default_bundle_path, sha256_file
from vdt_runtime.cli import main
from vdt_runtime.errors import BackendError, BundleError, SelfTestError
from vdt_runtime.selftest import load_golden, run_selftest

CPU_RUNS = (("cpu", {}), ("cpu", {"fused": False}), ("openvino", {}))


def _runs(bundle_path):
    bundle = Bundle.load(bundle_path)
    out = []
    for backend, options in CPU_RUNS:
        if available(backend) is None:
            for precision in dict.fromkeys(p for ps in runnable(bundle, backend).values() for p in ps):
                out.append((backend, precision, options))
    return out


def _all_pass(path):
    ran = []
    for backend, precision, options in _runs(path):
        with Pipeline.load(path, backend=backend, precision=precision, options=options, selftest=True) as pipe:
            report = run_selftest(pipe.bundle, pipe.backends)
        assert report.passed and len(report.checks) == 4, report.table()
        ran.append((backend, precision))
    return ran


def test_every_cpu_backend_and_precision_passes_on_the_default_bundle():
    ran = _all_pass(default_bundle_path())
    want = {("cpu", "fp32"), ("cpu", "int8"), ("cpu", "fp16")}
    if available("openvino") is None:
        want |= {("openvino", "fp32"), ("openvino", "int8")}
    assert want <= set(ran)


def test_every_cpu_backend_and_precision_passes_on_the_tiny_bundles(tiny_bundle, int8_bundle):
    assert ("cpu", "fp32") in _all_pass(tiny_bundle)
    assert ("cpu", "int8") in _all_pass(int8_bundle)  # tolerances re-measured when quantize added int8


def _copy(src, tmp_path, name="b"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _relist(bundle, edit=None):
    """Rehash every listed file (after a change on disk), optionally editing the manifest first."""
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    if edit:
        edit(m)
    for fname, entry in m["files"].items():
        entry.update(sha256=sha256_file(bundle / fname), size=(bundle / fname).stat().st_size)
    path.write_text(json.dumps(m))


def test_corrupted_stage_file_relisted_fails_the_stage(tiny_bundle, tmp_path):
    """vae_decoder.onnx's largest weight tensor given 5 % noise (a scale change alone would vanish in its GroupNorm),
    hashes updated: the bundle verifies, the self-test does not."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    b = _copy(tiny_bundle, tmp_path)
    model = onnx.load(str(b / "vae_decoder.onnx"))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init)
    noise = np.random.default_rng(0).normal(0, 0.05 * w.std(), w.shape).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(w + noise, init.name))
    onnx.save(model, str(b / "vae_decoder.onnx"))
    _relist(b)
    Bundle.load(b, verify=True)  # the hashes cannot tell
    with pytest.raises(SelfTestError, match=r"vae_decoder \(fp32\): max abs error \S+ \(tolerance \S+\)") as e:
        Pipeline.load(b, backend="cpu", selftest=True)
    assert "denoiser" not in str(e.value) and isinstance(e.value, BackendError)


def test_wrong_precision_file_fails_the_fp32_self_test(tmp_path):
    """The default bundle's fp16 VAE encoder and int8 denoiser listed as its fp32 files."""
    b = _copy(default_bundle_path(), tmp_path)

    def swap(m):
        m["stages"]["vae_encoder"]["files"]["fp32"] = "vae_encoder.fp16.onnx"
        m["stages"]["denoiser"]["fused"]["fp32"] = "denoiser.int8.onnx"

    _relist(b, swap)
    with pytest.raises(SelfTestError) as e:
        Pipeline.load(b, backend="cpu", precision="fp32", selftest=True)
    msg = str(e.value)
    for stage in ("denoiser (fp32)", "vae_encoder (fp32)", "end_to_end (fp32)"):
        assert f"{stage}: max abs error" in msg
    assert "vae_decoder" not in msg


class _Double:
    """A test double of a stage backend: the real one's outputs, changed by `change`."""

    def __init__(self, real, change):
        self.real, self.change = real, change
        for key in ("stage", "precision", "inputs", "outputs", "providers"):
            setattr(self, key, getattr(real, key))

    def run(self, inputs):
        return {k: self.change(v) for k, v in self.real.run(inputs).items()}


def test_perturbed_backend_fails_naming_stage_error_and_tolerance(tiny_pipeline):
    pipe = tiny_pipeline
    tol = pipe.bundle.manifest["golden"]["tolerances"]["fp32"]
    backends = {**pipe.backends, "denoiser": _Double(pipe.backends["denoiser"], lambda v: v + 0.01)}
    report = run_selftest(pipe.bundle, backends)
    failed = {c.stage: c for c in report.checks if not c.passed}
    assert set(failed) == {"denoiser", "end_to_end"}
    assert abs(failed["denoiser"].max_abs - 0.01) < 1e-3 and failed["denoiser"].tol_max == tol["denoiser"]["max_abs"]
    with pytest.raises(SelfTestError, match=r"denoiser \(fp32\): max abs error 0\.01 \(tolerance "
                                            + f"{tol['denoiser']['max_abs']:.3g}"):
        report.raise_if_failed()
    assert "FAIL" in report.table()


def test_nan_output_is_a_non_finite_failure_before_any_tolerance(tiny_pipeline):
    pipe = tiny_pipeline

    def nan_one(v):
        v = v.copy()
        v.flat[0] = np.nan
        return v

    backends = {**pipe.backends, "vae_decoder": _Double(pipe.backends["vae_decoder"], nan_one)}
    report = run_selftest(pipe.bundle, backends)
    (bad,) = [c for c in report.checks if not c.passed]
    assert bad.stage == "vae_decoder" and bad.nonfinite == 1 and bad.max_abs <= bad.tol_max  # the rest is exact
    assert bad.problem == "vae_decoder (fp32): non-finite output (1 NaN/inf values), before any tolerance"
    assert "NON-FINITE" in report.table()


def _without_golden(src, tmp_path):
    b = _copy(src, tmp_path, "plain")
    (b / "golden.npz").unlink()

    def drop(m):
        del m["golden"]
        del m["files"]["golden.npz"]

    _relist(b, drop)
    return b


def test_bundle_without_golden_cases_says_so_and_is_otherwise_unaffected(tiny_bundle, tmp_path, capsys):
    b = _without_golden(tiny_bundle, tmp_path)
    bundle = Bundle.load(b, verify=True)
    assert load_golden(bundle) is None
    with Pipeline.load(b, backend="cpu") as pipe:
        frames = pipe.predict(np.zeros((2, 16, 16, 3), np.uint8), cond=2, total=3, steps=2, seed=0).frames
        assert frames.shape == (3, 16, 16, 3)
        with pytest.raises(SelfTestError, match="has no golden cases to self-test with; add them with `vdt-export golden"):
            run_selftest(pipe.bundle, pipe.backends)
    with pytest.raises(SelfTestError, match="no golden cases"):
        Pipeline.load(b, backend="cpu", selftest=True)
    assert main(["info", str(b), "--backend", "cpu"]) == 0
    assert "golden     no golden cases" in capsys.readouterr().out
    assert main(["selftest", str(b), "--backend", "cpu"]) == 2
    assert "no golden cases" in capsys.readouterr().err


def test_cli_selftest_prints_the_table_and_fails_with_one_line(tiny_bundle, tmp_path, capsys):
    assert main(["selftest", str(tiny_bundle), "--backend", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "end_to_end   fp32" in out and "self-test passed" in out and "CPUExecutionProvider" in out
    assert main(["info", str(tiny_bundle), "--backend", "cpu"]) == 0
    assert "golden     golden.npz: 4 denoiser" in capsys.readouterr().out
    b = _copy(tiny_bundle, tmp_path)

    def loose_nothing(m):  # tolerances far below any rounding: fp32 must now fail, by name
        for tol in m["golden"]["tolerances"]["fp32"].values():
            tol.update(max_abs=1e-12, mean_abs=1e-12)

    _relist(b, loose_nothing)
    assert main(["selftest", str(b), "--backend", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: self-test of bundle 'tiny' failed: denoiser (fp32): max abs error")
    assert "(tolerance 1e-12)" in err
    # vdt serve --selftest refuses to start on it (before any server is imported or started)
    assert main(["serve", str(b), "--selftest", "--backend", "cpu"]) == 2
    assert "error: self-test of bundle 'tiny' failed: denoiser (fp32)" in capsys.readouterr().err


@pytest.mark.parametrize("edit, match", [
    (lambda g: g.update(file="nope.npz"), "golden.file 'nope.npz' is not listed"),
    (lambda g: g["tolerances"]["fp32"]["denoiser"].update(max_abs=-1), "max_abs must be a finite number > 0"),
    (lambda g: g["tolerances"].update(fp64={}), "must be one of fp32, fp16, bf16, int8"),
    (lambda g: g["end_to_end"].update(frames=99), "golden.end_to_end.frames must be in 1..8, got 99"),
    (lambda g: g["cases"].pop("vae_encoder"), "golden.cases must map each of"),
])
def test_malformed_golden_section_is_a_bundle_error(tiny_bundle, tmp_path, edit, match):
    b = _copy(tiny_bundle, tmp_path)
    _relist(b, lambda m: edit(m["golden"]))
    with pytest.raises(BundleError, match=match):
        Bundle.load(b)
