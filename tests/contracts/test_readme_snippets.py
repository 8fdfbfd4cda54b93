"""Every ```python block of the README runs as written (issue 21, class 6: `my_mask` was undefined).

The blocks run in README order in one fresh interpreter, as a reader following along would (a later block uses the
`pipe` and `clip` of an earlier one), in a scratch folder where `samples/` is the repo's: the relative paths are
the README's and its outputs (predicted.mp4, long.mp4) land in the scratch folder, not in the checkout. A block
that needs what CI cannot have (a running server, a cluster, downloaded weights) says so on the line before its
fence, `<!-- snippet not run: REASON -->`; this test lists those and runs all the others.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SKIP = re.compile(r"<!-- snippet not run: (.+?) -->")


def snippets() -> list[tuple[int, str, str | None]]:
    """(line number, code, reason it is not run or None) of each ```python block."""
    lines = README.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            skip = SKIP.search(lines[start - 1]) if start else None
            out.append((start + 1, "\n".join(lines[start + 1: end]), skip.group(1) if skip else None))
            i = end
        i += 1
    return out


def test_blocks_that_are_not_run_say_why():
    blocks = snippets()
    assert len(blocks) >= 2
    for line, _, reason in blocks:
        assert reason is None or len(reason) > 10, f"README.md:{line}: say what the block needs"
    assert sum(reason is None for _, _, reason in blocks) >= 2, "the API and Requests blocks must run"


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(tmp_path):
    pytest.importorskip("onnxruntime")
    (tmp_path / "samples").symlink_to(REPO / "samples", target_is_directory=True)
    parts = []
    for line, code, reason in snippets():
        if reason is None:
            parts.append(f"# --- README.md:{line}\n{code}\n")
    script = tmp_path / "readme_snippets.py"
    script.write_text("\n".join(parts), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "predicted.mp4").is_file() and (tmp_path / "long.mp4").is_file()
