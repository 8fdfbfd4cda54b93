"""Atomic outputs: a writer SIGKILLed mid-write leaves the old complete output (or none), never a torn one.

tests/runtime/atomic_writer.py rewrites one output in a loop through a slowed writer and prints "mark" at points
where the new data sits only in the temp file; we SIGKILL it right after a randomly chosen mark.
"""
from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vdt_runtime._atomic import atomic_path
from vdt_runtime.errors import InputError
from vdt_runtime.video import read_video, write_video

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("atomic_writer.py")
sys.path.insert(0, str(CHILD.parent))
from atomic_writer import video_version  # noqa: E402


def kill_mid_write(kind: str, target: Path, *extra: str, completed: int, marks: int) -> tuple[int, int]:
    """Run the child until `completed` versions are saved, then SIGKILL it after `marks` more marks.

    Returns (versions saved, marks seen in the interrupted write)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(CHILD), kind, str(target), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=ROOT)
    saved, seen = 0, 0
    try:
        while True:
            line = proc.stdout.readline().decode().strip()
            if not line:
                proc.wait(timeout=30)
                raise AssertionError(f"writer exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
            if line.startswith("saved"):
                saved, seen = int(line.split()[1]) + 1, 0
            elif line == "mark" and saved >= completed:
                seen += 1
                if seen == marks:
                    os.kill(proc.pid, signal.SIGKILL)  # mid-write: the writer now pauses after this mark
                    break
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return saved, seen


def check_leftovers(target: Path) -> list[Path]:
    """Beside the target there are only hidden temp entries, never named like an output."""
    others = [p for p in target.parent.iterdir() if p != target]
    assert others, "the kill should have left the writer's temp entry behind"
    for p in others:
        assert p.name.startswith(f".{target.name}.") and p.name.endswith((".tmp", ".old")), p.name
        assert not p.name.endswith(target.suffix or ".png"), p.name
    return others


def _rng() -> random.Random:
    seed = random.SystemRandom().randrange(2**32)
    print(f"kill-point seed {seed}")
    return random.Random(seed)


@pytest.mark.parametrize("kind,name,marks_per_write", [("gif", "out.gif", 2), ("mp4", "out.mp4", 2),
                                                      ("pngs", "frames", 12)])
@pytest.mark.parametrize("first", [True, False], ids=["first-write", "rewrite"])
def test_killed_video_writer_leaves_old_file_or_none(tmp_path, kind, name, marks_per_write, first):
    target = tmp_path / name
    rng = _rng()
    saved, _ = kill_mid_write(kind, target, completed=0 if first else 1, marks=rng.randint(1, marks_per_write))
    leftovers = check_leftovers(target)
    if first:
        assert saved == 0 and not target.exists()
        return
    want = video_version(saved - 1)  # the last complete version, exactly (GIF and PNG are lossless)
    got = read_video(target)
    assert got.shape == want.shape
    if kind == "mp4":
        errors = [np.abs(got.astype(int) - video_version(k)).mean() for k in range(saved + 1)]
        assert int(np.argmin(errors)) == saved - 1 and errors[saved - 1] < 8, errors
    else:
        np.testing.assert_array_equal(got, want)
    for p in leftovers:  # a leftover temp file is not readable as a video
        if p.is_file():
            with pytest.raises(InputError, match="'.tmp'"):
                read_video(p)


def test_killed_checkpoint_writer_leaves_old_file_or_none(tmp_path):
    torch = pytest.importorskip("torch")
    from vdt_export.checkpoint import load_state_dict

    target = tmp_path / "weights.pt"
    saved, _ = kill_mid_write("checkpoint", target, completed=1, marks=_rng().randint(1, 4))
    check_leftovers(target)
    state = load_state_dict(target)
    assert torch.equal(state["w"], torch.full((4, 1 << 14), float(saved - 1)))


def test_killed_bundle_export_leaves_old_bundle_or_none(tmp_path, tiny_bundle):
    from vdt_runtime.bundle import Bundle

    target = tmp_path / "bundle"
    saved, _ = kill_mid_write("bundle", target, str(tiny_bundle), completed=1, marks=_rng().randint(1, 9))
    check_leftovers(target)
    bundle = Bundle.load(target, verify=True)  # complete and consistent: every hash matches
    assert bundle.name == f"v{saved - 1}"


def test_outputs_get_ordinary_permissions(tmp_path):
    """Not mkstemp's private 0600 / 0700: outputs are as readable as the umask allows."""
    umask = os.umask(0o022)
    os.umask(umask)
    gif = write_video(tmp_path / "v.gif", video_version(0))
    folder = write_video(tmp_path / "frames", video_version(0))
    assert stat.S_IMODE(gif.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


def test_failed_write_removes_temp_and_keeps_old(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
