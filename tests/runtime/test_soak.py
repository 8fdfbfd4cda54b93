"""Soak (slow): many sequential runs and concurrent runs from threads in one process; RSS must stay bounded.

Pipeline is thread-safe for concurrent calls: each call keeps its state (Generator, schedule, timer,
buffers) in locals, and onnxruntime's InferenceSession.run may be called from several threads at once.
Both sharing one Pipeline and one Pipeline per thread are exercised. RSS is read from /proc/self/status.

    pytest -m slow tests/runtime/test_soak.py -s      # prints the numbers
"""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vdt_runtime import Pipeline

pytestmark = pytest.mark.slow

SEQUENTIAL = int(os.environ.get("VDT_SOAK_RUNS", "2000"))
THREADS = int(os.environ.get("VDT_SOAK_THREADS", "4"))
PER_THREAD = int(os.environ.get("VDT_SOAK_PER_THREAD", "250"))
MAX_GROWTH_MIB = 50.0

CLIP = np.random.default_rng(3).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
WORK = [  # (name, call) — a mix of tasks, samplers and lengths, all with 2 steps
    ("predict-ddpm", lambda p, s: p.predict(CLIP, cond=3, total=8, steps=2, seed=s)),
    ("interpolate-ddim", lambda p, s: p.interpolate(CLIP[:4], stride=2, steps=2, sampler="ddim", eta=0.5, seed=s)),
    ("inpaint-dpmpp", lambda p, s: p.inpaint(CLIP[:4], box=(2, 2, 10, 12), steps=2, sampler="dpmpp", seed=s)),
    ("unconditional", lambda p, s: p.unconditional(total=6, steps=2, seed=s)),
    ("rollout", lambda p, s: p.rollout(CLIP, total=14, cond=3, steps=2, seed=s)),
]


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no VmRSS in /proc/self/status")


def run_one(pipe: Pipeline, i: int) -> bytes:
    """Run work item i (task i mod len(WORK), seed i); the sha256 of its frames."""
    name, call = WORK[i % len(WORK)]
    frames = call(pipe, i).frames
    assert frames.dtype == np.uint8 and frames.ndim == 4, name
    return hashlib.sha256(frames.tobytes()).digest()


def test_soak_bounded_memory_and_thread_safety(tiny_bundle):
    shared = Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1})
    own = threading.local()

    def per_thread(i: int) -> bytes:
        if not hasattr(own, "pipe"):
            own.pipe = Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1})
        return run_one(own.pipe, i)

    with ThreadPoolExecutor(THREADS) as pool:  # warm-up: allocator arenas for every worker thread
        list(pool.map(lambda i: run_one(shared, i), range(4 * THREADS)))
        list(pool.map(per_thread, range(4 * THREADS)))
    start = rss_mib()

    indices = range(THREADS * PER_THREAD)
    sequential = [run_one(shared, i) for i in range(max(SEQUENTIAL, len(indices)))]  # every threaded run's twin
    after_sequential = rss_mib()

    mismatches = []
    with ThreadPoolExecutor(THREADS) as pool:
        for fn, label in ((lambda i: run_one(shared, i), "shared"), (per_thread, "per-thread")):
            for i, digest in zip(indices, pool.map(fn, indices)):
                if digest != sequential[i]:
                    mismatches.append((label, i))
    end = rss_mib()

    runs = len(sequential) + 2 * len(indices)
    print(f"\nsoak: {runs} runs ({len(sequential)} sequential, {THREADS} threads x {PER_THREAD} shared + "
          f"{THREADS} x {PER_THREAD} per-thread Pipelines, each compared with its sequential twin); "
          f"VmRSS after warm-up {start:.1f} MiB, after sequential {after_sequential:.1f} MiB, end {end:.1f} MiB, "
          f"growth {end - start:+.1f} MiB")
    assert not mismatches, f"{len(mismatches)} threaded runs differ from their sequential twins: {mismatches[:5]}"
    assert end - start < MAX_GROWTH_MIB, f"RSS grew {end - start:.1f} MiB over {runs} runs"


def test_rss_reader_sees_an_allocation():
    """The probe measures what it claims: touching 64 MiB raises VmRSS by about that much."""
    before = rss_mib()
    block = np.ones(64 << 20, np.uint8)
    grown = rss_mib() - before
    del block
    assert 48 < grown < 80, grown
