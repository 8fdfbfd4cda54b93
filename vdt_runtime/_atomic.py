"""Atomic outputs: write to a hidden temp path inside the target folder, then os.replace onto the target.

A reader never sees a half-written target: it is the old complete file (or folder), or absent, or the new
complete one. A writer killed mid-write leaves only hidden `.<target name>.<random>.tmp` (or `.old`) entries
beside the target; nothing that looks like an output (they never end in the target's extension).
Finished outputs get ordinary permissions (0666 / 0777 minus the umask), not mkstemp's private 0600 / 0700.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    """The process umask (read once: setting it to probe is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def temp_prefix(target: Path) -> str:
    """Every temp entry for `target` starts with this (hidden) prefix."""
    return f".{target.name}."


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp file path next to `target`; on success it is fsynced and replaces `target`, else removed."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target), suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the data reaches the disk before the name does
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder next to `target`; on success it takes `target`'s place (an old folder is removed).

    Replacing an existing folder takes two renames; a kill between them leaves `target` absent (the old one
    sits in a hidden `.old` folder), never a mix of old and new files.
    """
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target), suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if target.is_dir():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target), suffix=".old"))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
