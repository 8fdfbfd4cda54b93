"""A bundle's recommended sampler (manifest "sampling"): validated at load, the default of the API and CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vdt_runtime import Pipeline
from vdt_runtime.bundle import Bundle
from vdt_runtime.cli import main
from vdt_runtime.errors import BundleError, InputError
from vdt_runtime.settings import DEFAULT_SAMPLING, Sampling, parse_sampling


def _with_sampling(src: Path, dst: Path, sampling) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["sampling"] = sampling
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.fixture(scope="module")
def ddim_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle, recommending DDIM with 3 steps."""
    return _with_sampling(tiny_bundle, tmp_path_factory.mktemp("rec") / "b",
                          {"sampler": "ddim", "steps": 3, "eta": 0.0, "note": "test"})


@pytest.fixture(scope="module")
def ddim_pipe(ddim_bundle):
    return Pipeline.load(ddim_bundle, backend="cpu", options={"threads": 1})


@pytest.fixture(scope="module")
def clip():
    return np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)


def test_bundle_reports_its_recommendation_or_the_runtime_default(tiny_bundle, ddim_bundle):
    plain, rec = Bundle.load(tiny_bundle), Bundle.load(ddim_bundle)
    assert plain.recommended_sampling is None and plain.sampling == DEFAULT_SAMPLING == ("ddpm", 50, 0.0)
    assert rec.recommended_sampling == rec.sampling == Sampling("ddim", 3, 0.0)
    assert "sampling   ddim, 3 steps, eta 0 (recommended by the manifest)" in rec.describe()
    assert "sampling   ddpm, 50 steps (runtime default" in plain.describe()


@pytest.mark.parametrize("sampling,match", [
    ({"sampler": "euler", "steps": 10}, "unknown sampler 'euler'"),
    ({"sampler": "ddim", "steps": 0}, r"steps must be in 1\.\.1000, got 0"),
    ({"sampler": "ddim", "steps": "10"}, "steps must be an integer"),
    ({"sampler": "ddpm", "steps": 10, "eta": 1.0}, "applies only to samplers"),
    ({"sampler": "ddim", "steps": 10, "eta": -1}, "eta must be a finite number >= 0"),
    ({"sampler": "ddim"}, "sampling must be an object with sampler, steps"),
    ({"sampler": "ddim", "steps": 10, "speed": 2}, "sampling must be an object"),
    ("ddim:10", "sampling must be an object"),
])
def test_bad_recommendation_refused_at_load(tiny_bundle, tmp_path, sampling, match):
    with pytest.raises(BundleError, match=match):
        Bundle.load(_with_sampling(tiny_bundle, tmp_path / "b", sampling))


def test_calls_without_a_sampler_run_the_recommendation(ddim_pipe, clip):
    kw = dict(cond=2, total=4, seed=3)
    default = ddim_pipe.predict(clip, **kw)
    assert default.sampling == Sampling("ddim", 3, 0.0)
    np.testing.assert_array_equal(default.frames, ddim_pipe.predict(clip, sampler="ddim", steps=3, **kw).frames)
    assert ddim_pipe.predict(clip, steps=2, **kw).sampling == Sampling("ddim", 2, 0.0)  # steps alone: same sampler
    assert ddim_pipe.predict(clip, eta=1.0, **kw).sampling == Sampling("ddim", 3, 1.0)
    other = ddim_pipe.predict(clip, sampler="dpmpp", **kw)  # another sampler: the runtime's defaults, not 3 steps
    assert other.sampling == Sampling("dpmpp", DEFAULT_SAMPLING.steps, 0.0)
    roll = ddim_pipe.rollout(clip, total=6, cond=2, window=4, seed=3)
    assert roll.sampling == Sampling("ddim", 3, 0.0)


def test_a_bundle_without_recommendation_runs_ddpm_50(tiny_pipeline, clip):
    assert tiny_pipeline.predict(clip, cond=2, total=3).sampling == DEFAULT_SAMPLING


def test_bad_caller_values_still_refused(ddim_pipe, clip):
    with pytest.raises(InputError, match="applies only to samplers"):
        ddim_pipe.predict(clip, cond=2, total=4, sampler="ddpm", eta=0.5)
    with pytest.raises(InputError, match="unknown sampler"):
        ddim_pipe.predict(clip, cond=2, total=4, sampler="plms")


def test_cli_info_shows_it_and_run_uses_it(ddim_bundle, tmp_path, capsys):
    assert main(["info", str(ddim_bundle), "--backend", "cpu"]) == 0
    assert "sampling   ddim, 3 steps, eta 0 (recommended by the manifest)" in capsys.readouterr().out
    out = tmp_path / "u.gif"
    assert main(["run", "--task", "unconditional", "--total", "2", "--out", str(out), "--bundle", str(ddim_bundle),
                 "--backend", "cpu", "--no-progress"]) == 0
    assert "ddim, 3 steps, eta 0" in capsys.readouterr().out
    assert main(["run", "--task", "unconditional", "--total", "2", "--out", str(out), "--bundle", str(ddim_bundle),
                 "--backend", "cpu", "--no-progress", "--steps", "1"]) == 0
    assert "ddim, 1 steps" in capsys.readouterr().out


def test_parse_sampling():
    assert parse_sampling("ddim:10") == ("ddim", 10, 0.0) and parse_sampling("dpmpp:20:1") == ("dpmpp", 20, 1.0)
    for bad in ("ddim", "ddim:ten", "ddim:10:1:2", "dpmpp:20:x"):
        with pytest.raises(InputError, match="sampler:steps"):
            parse_sampling(bad)


def test_exporter_records_and_checks_the_recommendation(tiny_bundle):
    pytest.importorskip("torch")
    from vdt_export.bundle import recommended_sampling

    diffusion = Bundle.load(tiny_bundle).diffusion
    assert recommended_sampling({"sampler": "dpmpp", "steps": 20, "eta": 1, "note": "eval"}, diffusion) == {
        "sampler": "dpmpp", "steps": 20, "eta": 1.0, "note": "eval"}
    with pytest.raises(InputError, match="steps must be in 1..1000"):
        recommended_sampling({"sampler": "ddim", "steps": 5000}, diffusion)
    with pytest.raises(InputError, match="unknown key"):
        recommended_sampling({"sampler": "ddim", "steps": 5, "speed": 1}, diffusion)


def test_cli_bench_runs_and_names_the_recommendation(ddim_bundle, capsys):
    assert main(["bench", str(ddim_bundle), "--repeat", "1", "--backend", "cpu"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sampler"))
    assert "numpy: ddim" in row and row.split()[-2] == "3"  # steps column


def test_eta_alone_is_checked_against_the_bundles_sampler(tiny_pipeline, ddim_pipe, clip):
    """Without a sampler, eta's validity depends on the bundle: refused where the default is DDPM."""
    with pytest.raises(InputError, match="applies only to samplers"):
        tiny_pipeline.predict(clip, cond=2, total=3, eta=0.5)
    assert ddim_pipe.predict(clip, cond=2, total=3, eta=0.5, steps=1).sampling == Sampling("ddim", 1, 0.5)
