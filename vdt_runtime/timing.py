"""Per-stage wall-clock accounting: a dict of stage -> seconds that timed blocks add to."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Timer:
    """Accumulates seconds per stage name; `timer.seconds` is the plain dict."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the wall time of the `with` block to `seconds[name]`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        """Add `seconds` to stage `name`."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds