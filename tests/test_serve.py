"""`vdt serve` end to end (tests/serve_check.py) under an interpreter PyTriton's Triton stub can load.

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

import pytest

REPO = Path(__file__).resolve().parents[1]


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
    proc = subprocess.run([python, str(REPO / "tests" / "serve_check.py"), str(tiny_bundle)], capture_output=True,
                          text=True, timeout=900, cwd=REPO)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("ok:") == 5, proc.stdout
