"""Installed as a package, not a checkout: build the wheel, install it in a fresh venv (no torch) and run the
default predict from an empty folder, as a new user would. Slow (it installs onnxruntime and numpy): .ci/run runs it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=1800, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_runs_the_default_bundle_from_an_empty_folder(tmp_path):
    from vdt_runtime.video import read_video

    run([sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "-w", tmp_path / "dist"], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("vdt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vdt_runtime/bundles/default/manifest.json" in names and "vdt_runtime/bundles/default/denoiser.onnx" in names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", wheel])
    work = tmp_path / "empty"
    work.mkdir()
    clip = REPO / "samples" / "bounce.gif"
    out = run([venv / "bin" / "vdt", "run", "--task", "predict", "--input", clip, "--out", "out", "--steps", "4",
               "--no-progress"], cwd=work)  # "out": a folder of PNGs, lossless
    assert "(16 frames 32x32" in out.stdout, out.stdout
    frames, given = read_video(work / "out"), read_video(clip)
    assert frames.shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(frames[:8], given)  # given frames come back bit for bit
    info = run([venv / "bin" / "vdt", "info", "default"], cwd=work).stdout
    assert "site-packages/vdt_runtime/bundles/default" in info
    probe = run([python, "-c", "import importlib.util as u, vdt_runtime; "
                 "print(u.find_spec('torch') is None, vdt_runtime.__file__)"], cwd=work).stdout.split()
    assert probe[0] == "True" and "site-packages" in probe[1]  # no torch; the installed package, not the checkout
