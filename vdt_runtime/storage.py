"""Folders for batch jobs: a local folder, or any filesystem URI pyarrow reads (s3://, gs://, abfs://, hdfs://, …).

    out = Folder("s3://bucket/out?endpoint_override=http://127.0.0.1:9000")   # credentials: the usual env/config
    out.write("results.jsonl", data)          # local: temp name + rename (_atomic); elsewhere: one upload, written once

A Folder pickles (its pyarrow filesystem does), so Ray workers write through the same layer as the driver without
sharing its disk. `uri(name)` names an entry for people and results.jsonl: scheme and path, never the query or
credentials.
"""
from __future__ import annotations

import os
import posixpath
import tempfile
from pathlib import Path, PurePosixPath

from vdt_runtime.errors import InputError
from vdt_runtime.limits import shorten


class Folder:
    """One folder, local or behind a pyarrow filesystem URI."""

    def __init__(self, location: str | os.PathLike):
        from pyarrow import fs

        text = str(location)
        self.scheme = text.split("://", 1)[0].lower() if "://" in text else ""
        if self.scheme in ("", "file"):
            self.fs = fs.LocalFileSystem()
            self.path = str(Path(text.split("://", 1)[-1]).resolve())
        else:
            try:
                self.fs, path = fs.FileSystem.from_uri(text)
            except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid/ValueError/OSError by scheme
                raise InputError(f"cannot open {shorten(_public(text))}: {shorten(str(e))}") from None
            self.path = path.rstrip("/")
        self.local = self.scheme in ("", "file")

    def __str__(self) -> str:
        return self.path if self.local else f"{self.scheme}://{self.path}"

    def join(self, name: str) -> str:
        """The filesystem path of entry `name` (what pyarrow and Ray Data take with this folder's filesystem)."""
        return os.path.join(self.path, name) if self.local else posixpath.join(self.path, name)

    def uri(self, name: str) -> str:
        return self.join(name) if self.local else f"{self.scheme}://{self.join(name)}"

    def exists(self) -> bool:
        from pyarrow import fs

        return self._info(self.path).type == fs.FileType.Directory

    def entries(self) -> dict[str, bool]:
        """{name: is a folder} for the entries directly in this folder (hidden names too)."""
        from pyarrow import fs

        try:
            infos = self.fs.get_file_info(fs.FileSelector(self.path, allow_not_found=True))
        except OSError as e:
            raise InputError(f"cannot list {shorten(str(self))}: {shorten(str(e))}") from None
        return {i.base_name: i.type == fs.FileType.Directory for i in infos}

    def has(self, name: str) -> bool:
        """Whether entry `name` exists (a file or a folder): one lookup, where entries() lists the whole folder."""
        from pyarrow import fs

        return self._info(self.join(name)).type != fs.FileType.NotFound

    def read(self, name: str) -> bytes | None:
        """Entry `name`'s bytes, or None if there is none."""
        from pyarrow import fs

        if self._info(self.join(name)).type != fs.FileType.File:
            return None
        with self.fs.open_input_stream(self.join(name)) as f:
            return f.read()

    def makedirs(self, name: str = "") -> None:
        self.fs.create_dir(self.join(name) if name else self.path, recursive=True)

    def write(self, name: str, data: bytes) -> None:
        """Write entry `name` whole: locally to a temp name then renamed (_atomic.atomic_path), elsewhere as one
        upload (an object store shows an object only once its upload completes)."""
        if self.local:
            from vdt_runtime._atomic import atomic_path

            with atomic_path(self.join(name)) as tmp:
                tmp.write_bytes(data)
            return
        with self.fs.open_output_stream(self.join(name)) as f:
            f.write(data)

    def write_video(self, name: str, frames, fps: float, protect=None) -> None:
        """video.write_video to entry `name` (a file type, or a PNG folder when local)."""
        from vdt_runtime.video import write_video

        if self.local:
            write_video(self.join(name), frames, fps=fps, protect=protect)
            return
        with tempfile.TemporaryDirectory(prefix="vdt-out-") as tmp:
            path = write_video(Path(tmp) / name, frames, fps=fps)
            self.write(name, path.read_bytes())

    def relation(self, other: "Folder") -> str | None:
        """"is" / "lies inside" / "contains" when the two folders overlap on one filesystem, else None."""
        if self.local != other.local or (not self.local and self.scheme != other.scheme):
            return None
        from vdt_runtime.video import overlap

        a, b = (Path(self.path), Path(other.path)) if self.local else (PurePosixPath("/" + self.path),
                                                                       PurePosixPath("/" + other.path))
        return overlap(a, b)

    def _info(self, path: str):
        try:
            return self.fs.get_file_info(path)
        except OSError as e:
            raise InputError(f"cannot reach {shorten(str(self))}: {shorten(str(e))}") from None


def _public(text: str) -> str:
    """A URI without its query (endpoints, options) or user info (credentials), for messages."""
    scheme, sep, rest = text.partition("://")
    return scheme + sep + rest.split("?", 1)[0].rsplit("@", 1)[-1]
