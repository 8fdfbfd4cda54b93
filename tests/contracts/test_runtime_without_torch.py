"""The runtime's own tests pass in a process where `import torch` fails (VDT_BLOCK_TORCH=1, see tests/conftest.py):
they run on the committed tiny bundle and the shipped default bundle, as a runtime-only install would. Only the
tests on an int8 copy of the tiny bundle skip: vdt-export quantize, which makes it, is the torch side."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FILES = ["tests/runtime/test_pipeline.py", "tests/runtime/test_requests.py", "tests/runtime/test_selftest.py",
         "tests/runtime/test_bundle.py"]


@pytest.mark.slow
def test_runtime_tests_pass_with_torch_blocked(tmp_path):
    env = {**os.environ, "VDT_BLOCK_TORCH": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", "-rs",
                           "--basetemp", str(tmp_path / "t"), *FILES], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    tail = proc.stdout[-3000:]
    assert proc.returncode == 0, tail + proc.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", tail).group(1))
    skipped = int(m.group(1)) if (m := re.search(r"(\d+) skipped", tail)) else 0
    assert passed >= 100 and skipped <= 2, tail  # the 2: tests on an int8 copy, made by the (torch-side) quantizer
