"""Same seed, bundle and backend → byte-identical frames: twice in one process, in fresh processes, from threads."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vdt_runtime import Pipeline

ROOT = Path(__file__).resolve().parents[2]
KW = dict(cond=3, total=6, steps=2, sampler="ddpm")  # ddpm draws fresh noise every step
CLIP = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)  # as in CHILD

CHILD = """
import sys
import numpy as np
from vdt_runtime import Pipeline
bundle, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
CLIP = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
pipe = Pipeline.load(bundle, backend="cpu", options={"threads": 1})
np.save(out, pipe.predict(CLIP, seed=seed, cond=3, total=6, steps=2, sampler="ddpm").frames, allow_pickle=False)
"""


@pytest.fixture(scope="module")
def pipe(tiny_pipeline):
    return tiny_pipeline


def test_same_seed_same_bytes_in_one_process(pipe, tiny_bundle):
    a = pipe.predict(CLIP, seed=11, **KW).frames
    b = pipe.predict(CLIP, seed=11, **KW).frames
    c = Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1}).predict(CLIP, seed=11, **KW).frames  # a fresh load
    assert a.tobytes() == b.tobytes() == c.tobytes()


def test_different_seeds_differ(pipe):
    a, b = (pipe.predict(CLIP, seed=s, **KW).frames for s in (11, 12))
    assert (a[3:] != b[3:]).any()  # the generated frames differ
    np.testing.assert_array_equal(a[:3], b[:3])  # the given frames do not


def test_same_seed_same_bytes_across_processes(pipe, tiny_bundle, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outs = [tmp_path / f"run{i}.npy" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_bundle), "11", str(out)], env=env,
                              stderr=subprocess.PIPE) for out in outs]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    here = pipe.predict(CLIP, seed=11, **KW).frames
    first, second = (np.load(out, allow_pickle=False) for out in outs)
    assert first.tobytes() == second.tobytes() == here.tobytes()


def test_shared_pipeline_is_thread_safe(pipe):
    """Concurrent calls on one Pipeline give exactly what the same calls give one after another."""
    seeds = list(range(8))
    sequential = [pipe.predict(CLIP, seed=s, **KW).frames for s in seeds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda s: pipe.predict(CLIP, seed=s, **KW).frames, seeds))
    for s, a, b in zip(seeds, sequential, concurrent):
        assert a.tobytes() == b.tobytes(), f"seed {s}"


def test_loading_pipelines_from_threads_leaves_stdout_alone(tiny_bundle):
    """Session creation captures onnxruntime's chatter via sys.stdout; concurrent loads must not leave it captured."""
    before = sys.stdout
    for _ in range(3):  # without the lock, one round of 8 racing loads left it captured about 40 % of the time
        with ThreadPoolExecutor(max_workers=4) as pool:
            pipes = list(pool.map(lambda _: Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1}), range(8)))
        assert sys.stdout is before
    assert all(p.providers["denoiser"] == ("CPUExecutionProvider",) for p in pipes)
