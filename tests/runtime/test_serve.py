"""`vdt serve` end to end (tests/runtime/serve_check.py) under an interpreter PyTriton's Triton stub can load.

PyTriton's Python-backend stub links the system libpython; an interpreter of another build (e.g. pyenv's, without a
shared libpython) fails inside the stub. So the check runs under $VDT_SERVE_PYTHON (a venv made from the system
python3 with `pip install -e '.[serve]'`; .ci/run makes one), or under this interpreter when it is the system's
own with PyTriton installed. PyTriton needs numpy < 2, which is one more reason for a venv of its own.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def serve_python() -> tuple[str | None, str]:
    """(interpreter, "") or (None, why there is none)."""
    explicit = os.environ.get("VDT_SERVE_PYTHON")
    if explicit:
        return explicit, ""
    if sys.base_prefix != "/usr":
        return None, (f"{sys.executable} is not built on the system python (base {sys.base_prefix}); "
                      "set VDT_SERVE_PYTHON to a venv made from /usr/bin/python3 with .[serve]")
    try:
        import pytriton  # noqa: F401
    except ImportError:
        return None, "PyTriton is not installed here (pip install -e '.[serve]') and VDT_SERVE_PYTHON is not set"
    return sys.executable, ""


def test_serve_http_and_grpc_match_the_pipeline(tiny_bundle):
    python, why = serve_python()
    if python is None:
        pytest.skip(why)
    proc = subprocess.run([python, str(REPO / "tests" / "runtime" / "serve_check.py"), str(tiny_bundle)], capture_output=True,
                          text=True, timeout=900, cwd=REPO)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("ok:") == 7, proc.stdout


class FakeRequest:
    """What PyTriton hands the callable: input arrays (with the batch axis) and the request parameters."""

    def __init__(self, task: bytes, frames=None, **parameters):
        self.data = {"task": np.array([[task]], dtype=object)}
        if frames is not None:
            self.data["frames"] = frames[None]
        self.parameters = parameters


def test_callable_serves_good_requests_next_to_refused_ones(tiny_pipeline):
    from vdt_runtime import Request
    from vdt_runtime.serve import InferCallable

    clip = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    requests = [FakeRequest(b"predict", clip, total=5, steps=2, seed=4),
                FakeRequest(b"zoom", clip, total=5),
                FakeRequest(b"complete", clip[:2], given="3,0", total=5, steps=2, seed=5, sampler="ddim", eta="0.5"),
                FakeRequest(b"predict", clip, total="five"),
                FakeRequest(b"predict", clip, colour="red")]
    out = InferCallable(tiny_pipeline)(requests)
    want = tiny_pipeline.generate([Request(task="predict", frames=clip, total=5, steps=2, seed=4),
                                   Request(task="complete", frames=clip[:2], given=[3, 0], total=5, steps=2, seed=5,
                                           sampler="ddim", eta=0.5)])
    np.testing.assert_array_equal(out[0]["frames"][0], want[0].frames)
    np.testing.assert_array_equal(out[2]["frames"][0], want[1].frames)
    assert out[0]["error"][0, 0] == b"" and "frames" not in out[1]
    errors = [r["error"][0, 0].decode() for r in out[1::2]] + [out[4]["error"][0, 0].decode()]
    for error, words in zip(errors, ["unknown task 'zoom'", "parameter 'total' must be an integer",
                                     "unknown parameter(s) 'colour'"]):
        assert error.startswith("InputError: ") and words in error, error


def test_serve_without_pytriton_says_how_to_get_it(tiny_bundle, capsys):
    import importlib.util

    from vdt_runtime.cli import main

    if importlib.util.find_spec("pytriton") is not None:
        pytest.skip("PyTriton is installed here (the refusal is for installs without it)")
    assert main(["serve", str(tiny_bundle), "--backend", "cpu"]) == 2
    assert "pip install 'vdt[serve]'" in capsys.readouterr().err


def test_a_refusal_of_one_request_never_fails_its_batch_mates(tiny_pipeline, monkeypatch):
    """Issue 19/21: an in-memory rollout over 1,024 frames passed the plan, then generate refused it and PyTriton failed
    the whole batch. The plan refuses it now; and a failure generate still raises is answered request by request."""
    from vdt_runtime import Request
    from vdt_runtime.errors import BackendError
    from vdt_runtime.serve import InferCallable

    clip = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    batch = [FakeRequest(b"predict", clip, total=5, steps=2, seed=1),
             FakeRequest(b"rollout", clip, cond=2, total=100_000, steps=2, seed=2),
             FakeRequest(b"complete", clip[:2], given="", total=5, steps=2, seed=3),
             FakeRequest(b"interpolate", clip, stride=2, total="5", steps="2", seed="4"),
             FakeRequest(b"inpaint", clip, box="-1,0,8,8", total=3, steps=2)]
    out = InferCallable(tiny_pipeline)(batch)
    want = tiny_pipeline.generate([Request(task="predict", frames=clip, total=5, steps=2, seed=1),
                                   Request(task="interpolate", frames=clip, stride=2, total=5, steps=2, seed=4)])
    np.testing.assert_array_equal(out[0]["frames"][0], want[0].frames)
    np.testing.assert_array_equal(out[3]["frames"][0], want[1].frames)
    errors = {i: out[i]["error"][0, 0].decode() for i in (1, 2, 4)}
    assert all("frames" not in out[i] for i in errors)
    assert "rollout total=100000 frames is above the maximum 1024 returned in memory" in errors[1], errors[1]
    assert "given is empty" in errors[2], errors[2]
    assert "box coordinate" in errors[4] and "-1" in errors[4], errors[4]

    run = tiny_pipeline._generate  # what the callable runs its plans with

    def failing(plans):  # a backend failure that only one request's run meets
        if any(p.seed == 13 for p in plans):
            raise BackendError("the denoiser failed on this one")
        return run(plans)

    monkeypatch.setattr(tiny_pipeline, "_generate", failing)
    out = InferCallable(tiny_pipeline)([FakeRequest(b"predict", clip, total=5, steps=2, seed=1),
                                        FakeRequest(b"predict", clip, total=5, steps=2, seed=13)])
    np.testing.assert_array_equal(out[0]["frames"][0], want[0].frames)
    assert out[1]["error"][0, 0].decode() == "BackendError: the denoiser failed on this one"


def test_serve_under_another_python_build_prints_the_fix(tiny_bundle, tmp_path):
    """A pyenv/conda interpreter with PyTriton importable used to fail inside Triton's stub, reported as an internal
    error; it is refused before Triton starts, with the README's fix. The stand-in PyTriton below fails as the
    stub does, so the old path is visible if the check is skipped."""
    import subprocess
    import sys

    if sys.base_prefix == "/usr":
        pytest.skip("this interpreter is the system's: the check passes here")
    fake = tmp_path / "pytriton"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "model_config.py").write_text("DynamicBatcher = ModelConfig = Tensor = lambda *a, **k: None\n")
    (fake / "triton.py").write_text(
        "class TritonConfig:\n    def __init__(self, **kw): pass\n"
        "class Triton:\n    def __init__(self, **kw): pass\n"
        "    def __enter__(self): raise AttributeError(\"'_thread.RLock' object has no attribute '_recursion_count'\")\n"
        "    def __exit__(self, *a): return False\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    env.pop("VDT_SERVE_ANY_PYTHON", None)
    proc = subprocess.run([sys.executable, "-m", "vdt_runtime.cli", "serve", str(tiny_bundle), "--backend", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "internal error" not in proc.stderr and "Fix (README, Serving): /usr/bin/python3 -m venv .venv-serve" in \
        proc.stderr, proc.stderr


def test_the_callable_plans_each_request_once(tiny_pipeline, monkeypatch):
    """The callable planned each request to refuse it alone, then generate planned them all a second time (twice the
    work per batch, and every plan warning logged twice)."""
    from vdt_runtime import Request
    from vdt_runtime.serve import InferCallable

    clip = np.random.default_rng(2).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    seeds, plan = [], Request.plan
    monkeypatch.setattr(Request, "plan", lambda self, *a, **k: (seeds.append(self.seed), plan(self, *a, **k))[1])
    out = InferCallable(tiny_pipeline)([FakeRequest(b"predict", clip, total=5, steps=2, seed=s) for s in (1, 2)])
    assert all(o["error"][0, 0] == b"" and "frames" in o for o in out)
    assert sorted(seeds) == [1, 2], seeds
