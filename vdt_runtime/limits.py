"""Every resource bound the runtime enforces, in one place (docs/reliability.md explains each).

Inputs above a bound are refused with an InputError (BundleError for bundles) before the work starts, so
a hostile file or argument costs milliseconds, never gigabytes or hours.
"""
from __future__ import annotations

from vdt_runtime.errors import InputError

MAX_MANIFEST_BYTES = 1 << 20  # manifest.json is a few kB; 1 MiB leaves room for long file lists
MAX_BUNDLE_FILES = 1000  # entries in manifest["files"]
MAX_AXIS = 1 << 16  # any declared dimension or dynamic-axis bound
MAX_IMAGE_SIDE = 8192  # pixels, height or width, of a bundle's image_size or an input frame
MAX_DECODED_PIXELS = 1 << 27  # frames × H × W decoded from one input (134 M pixels: 384 MiB as uint8 RGB)
MAX_THREADS = 256  # intra-op threads of a backend session
MAX_ROLLOUT_FRAMES = 1024  # Pipeline.rollout(): every frame is returned in memory
MAX_STREAMED_FRAMES = 100_000  # Pipeline.rollout_stream() / `vdt run --task rollout`: written window by window
DEFAULT_VAE_SLICE_PIXELS = 256 * 256  # pixels per VAE call by default: 1 frame at 256 px (BENCHMARKS.md §8)
MAX_ECHO = 120  # characters of a caller's or a bundle's value echoed in an error message


def shorten(value, limit: int = MAX_ECHO) -> str:
    """repr(value), cut to `limit` characters (with a note of the full length) for error messages. Never
    raises: a huge int (which Python refuses to print past 4300 digits) is described by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a caller's object whose repr fails
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_threads(threads) -> int | None:
    """None (the backend's default) or an int in 1..MAX_THREADS."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise InputError(f"threads must be an integer in 1..{MAX_THREADS} or None, got {shorten(threads)}")
    return threads
