"""vdt_runtime runs with torch, onnx and diffusers unimportable (the deployment wall)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "torchvision", "onnx", "onnxscript", "diffusers", "vdt_export")

SCRIPT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of these now raises ImportError
import numpy as np
import vdt_runtime
from vdt_runtime.cli import main
pipe = vdt_runtime.Pipeline.load(sys.argv[1])
result = pipe.predict(np.full((2, 16, 16, 3), 90, np.uint8), cond=2, total=4, steps=2)
assert result.frames.shape == (4, 16, 16, 3) and result.frames.dtype == np.uint8
assert (result.frames[:2] == 90).all()
assert main(["info", sys.argv[1]]) == 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None)
print("LOADED", loaded)
"""


def test_runtime_runs_without_torch_onnx_diffusers(tiny_bundle, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(blocked=BLOCKED), str(tiny_bundle)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout
