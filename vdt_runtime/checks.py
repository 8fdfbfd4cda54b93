"""Small value checks shared by every layer (bundle reader, Request, backends, exporter).

Each returns the value (normalised) or raises a typed error naming the value and what is allowed. `error` picks
the type: InputError for a caller's argument, BundleError when the value came from a bundle's manifest.
"""
from __future__ import annotations

import numbers
from typing import Any

from vdt_runtime.errors import InputError
from vdt_runtime.limits import shorten

_HUGE = 2**62  # no count or index is this large; later messages may print it whole


def check_int(name: str, value: Any, lo: int, hi: int | None = None, *, error: type[Exception] = InputError,
              low: str | None = None) -> int:
    """An integer (not bool) in lo..hi (hi None: no upper bound but below 2**62); `low` names lo in the message
    when it comes from another setting (e.g. "model.num_frames=8")."""
    allowed = f"in {low or lo}..{hi}" if hi is not None else f">= {low or lo}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an integer {allowed}, got {shorten(value)}")
    if value < lo or (hi is not None and value > hi):
        raise error(f"{name} must be {allowed}, got {shorten(value)}")
    if hi is None and value >= _HUGE:
        raise error(f"{name} must be {allowed} and below 2**62, got {shorten(value)}")
    return int(value)


def check_int_or_none(name: str, value: Any, lo: int = 1, hi: int | None = None) -> int | None:
    """None, or an integer (not bool) in lo..hi."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo or \
            (hi is not None and value > hi):
        allowed = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise InputError(f"{name} must be an integer {allowed} or None, got {shorten(value)}")
    return int(value)


def check_choice(name: str, value: Any, allowed: tuple[str, ...], *, error: type[Exception] = InputError) -> str:
    """One of the strings in `allowed`."""
    if not isinstance(value, str) or value not in allowed:
        raise error(f"{name} must be one of {', '.join(allowed)}, got {shorten(value)}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """True or False (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {shorten(value)}")
    return value


__all__ = ["check_bool", "check_choice", "check_int", "check_int_or_none"]
