"""The committed default bundle: intact, torch-free, and the README's first command works as written."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "engines" / "default"

SCRIPT = """
import sys
for name in ("torch", "onnx", "onnxscript", "diffusers", "vdt_export"):
    sys.modules[name] = None
from vdt_runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""


def readme_run_command() -> list[str]:
    """The `vdt run ...` part of the README's first set-up command."""
    setup = re.search(r"## Set-up\s+```bash\n(.*?)\n", (REPO / "README.md").read_text()).group(1)
    run = setup[setup.index("vdt run"):]
    return shlex.split(run)[1:]


def test_default_bundle_hashes_match_and_it_describes_the_physics_model():
    from vdt_runtime import Bundle

    bundle = Bundle.load(DEFAULT, verify=True)
    assert bundle.image_size == 32 and bundle.num_frames == 16
    assert bundle.diffusion["prediction_type"] in ("epsilon", "v")
    assert "bouncing" in str(bundle.manifest.get("training", {}))
    assert bundle.recommended_sampling is not None  # chosen by the eval, BENCHMARKS.md §4


def test_readme_first_command_runs_without_torch(tmp_path):
    args = readme_run_command()
    assert args[:3] == ["run", "--task", "predict"]
    out = tmp_path / "predicted.gif"
    args[args.index("--out") + 1] = str(out)
    args[args.index("--input") + 1] = str(REPO / args[args.index("--input") + 1])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *args, "--steps", "4", "--no-progress"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from vdt_runtime import read_video

    given, frames = read_video(args[args.index("--input") + 1]), read_video(out)
    assert frames.shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(frames[: len(given)], given)  # given frames come back exactly


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python block, as written, against the default bundle (outputs go to a temp folder)."""
    import shutil

    block = re.search(r"## Python API\s+```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    shutil.copytree(REPO / "samples", tmp_path / "samples", ignore=shutil.ignore_patterns("tasks"))
    monkeypatch.chdir(tmp_path)
    mask = np.zeros((16, 16, 16), np.float32)
    mask[10:, 4:12, 4:12] = 1
    namespace = {"my_mask": mask}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["out"].frames.shape == (16, 32, 32, 3)
    assert (tmp_path / "predicted.mp4").stat().st_size > 0
