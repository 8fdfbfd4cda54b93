"""Atomic outputs: write to a hidden temp path inside the target folder, then os.replace onto the target.

A reader never sees a half-written target: it is the old complete file (or folder), or absent, or the new
complete one. A writer killed mid-write leaves only hidden `.<target name>.<random>.tmp` (or `.old`) entries
beside the target; nothing that looks like an output (they never end in the target's extension).
Finished outputs get ordinary permissions (0666 / 0777 minus the umask), not mkstemp's private 0600 / 0700.

Nothing the caller did not write is ever deleted: a folder target is replaced only when every entry in it
is one the caller's `owned` test recognises as its own output (checked before the work and again, after
the old folder has been moved aside, just before it is removed).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from vdt_runtime.errors import InputError
from vdt_runtime.limits import shorten


def _umask() -> int:
    """The process umask (read once: setting it to probe is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def temp_prefix(target: Path) -> str:
    """Every temp entry for `target` starts with this (hidden) prefix."""
    return f".{target.name}."


def is_regular_file(path: Path) -> bool:
    """A plain file, not a symlink, folder, device or pipe."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def foreign_entry(folder: Path, owned: Callable[[Path], bool]) -> str | None:
    """The name of one entry of `folder` that `owned` does not recognise, or None if all are owned."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if not owned(Path(entry.path)):
                return entry.name
    return None


def check_replaceable(target: Path, owned: Callable[[Path], bool], what: str) -> None:
    """InputError unless `target` is absent, or a real folder (not a symlink) whose entries are all owned."""
    if not os.path.lexists(target):
        return
    if not stat.S_ISDIR(os.lstat(target).st_mode):
        raise InputError(f"{what} {shorten(str(target))} exists and is not a folder; it is left alone")
    foreign = foreign_entry(target, owned)
    if foreign is not None:
        raise InputError(f"{what} {shorten(str(target))} holds {shorten(foreign)}, which this tool did not write; "
                         "give a new or empty folder (nothing else is ever deleted)")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp file path next to `target`; on success it is fsynced and replaces `target`, else removed.

    `target`, if it exists, must be a regular file: a folder, symlink or device there is refused (InputError).
    """
    target = Path(target)
    if os.path.lexists(target) and not is_regular_file(target):
        raise InputError(f"{shorten(str(target))} exists and is not a regular file; only a file is ever replaced")
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
def atomic_dir(target: str | os.PathLike, owned: Callable[[Path], bool], what: str = "output folder") -> Iterator[Path]:
    """Yield a fresh temp folder next to `target`; on success it takes `target`'s place.

    An existing folder at `target` is replaced only if `owned(entry)` holds for every entry in it (else
    InputError, before the work and again at the swap, when the old folder is put back untouched).
    Replacing takes two renames; a kill between them leaves `target` absent (the old one sits in a hidden
    `.old` folder), never a mix of old and new files.
    """
    target = Path(target)
    check_replaceable(target, owned, what)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target), suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if os.path.lexists(target):
            check_replaceable(target, owned, what)
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target), suffix=".old"))
            os.replace(target, old / "x")
            if foreign_entry(old / "x", owned) is not None:  # something appeared meanwhile: put it all back
                os.replace(old / "x", target)
                os.rmdir(old)
                check_replaceable(target, owned, what)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
