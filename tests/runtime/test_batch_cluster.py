"""`vdt batch` beyond one machine: a two-node Ray cluster (ray.cluster_utils.Cluster, as Ray tests itself) on this
machine, clips and outputs on a local S3 server (moto), everything on 127.0.0.1.

The cluster's nodes are sized so that each can hold exactly one 2-CPU actor (head 3 CPUs: one actor and Ray Data's
reading task; worker 2 CPUs): a job of two such actors runs on both nodes. Slow (a cluster start, two pipeline
loads per job): run with -m slow.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vdt_runtime import Pipeline, Request
from vdt_runtime.errors import InputError
from vdt_runtime.video import read_video, write_video

sys.path.insert(0, str(Path(__file__).parent))
from listening import Sampler, descendants  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
# 400 steps make a row take ~0.3 s on the tiny model (2 steps: ~4 ms), far longer than Ray Data takes to hand the
# next block to an idle actor: a job cannot end on one actor, or before the kill test's kill, by a race
REQUEST = dict(task="predict", cond=2, total=5, steps=400)
FLAGS = ["--task", "predict", "--cond", "2", "--total", "5", "--steps", "400"]
N_CLIPS = 4


@pytest.fixture(autouse=True)
def pool_starts_whole(monkeypatch):
    """The jobs here start once both actors have loaded: a pool that begins on its first ready actor can finish
    four rows before the second actor is up, and "both nodes did work" would then depend on start-up times."""
    monkeypatch.setattr(ray.data.DataContext.get_current(), "wait_for_min_actors_s", 120)


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with a bucket; yields the query that points pyarrow at it. The credentials
    are made up here and set in the environment, which the cluster's processes inherit."""
    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    env = {"AWS_ACCESS_KEY_ID": "vdt-test", "AWS_SECRET_ACCESS_KEY": "vdt-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "http://%s:%d" % server.get_host_and_port()
    fs.S3FileSystem(endpoint_override=endpoint, region="us-east-1", allow_bucket_creation=True).create_dir("vdt")
    yield f"?endpoint_override={endpoint}&region=us-east-1"
    server.stop()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def clips(s3):
    """N_CLIPS GIF clips in s3://vdt/in; returns {name: frames as read back}."""
    from vdt_runtime.storage import Folder

    folder, rng, frames = Folder("s3://vdt/in" + s3), np.random.default_rng(11), {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(N_CLIPS):
            path = write_video(Path(tmp) / f"c{i}.gif", rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
            folder.write(path.name, path.read_bytes())
            frames[path.name] = read_video(path)
    return frames


@pytest.fixture(scope="module")
def cluster(s3):
    """Two Ray nodes on 127.0.0.1, dashboard off; the driver connects only through the job under test."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=3, node_ip_address="127.0.0.1",
                                                          include_dashboard=False))
    c.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def direct(tiny_bundle, clip: np.ndarray, seed: int) -> np.ndarray:
    pipe = Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1})
    return pipe.generate([Request(frames=clip, seed=seed, **REQUEST)])[0].frames


def test_two_node_job_with_s3_folders_equals_direct_runs(tiny_bundle, clips, cluster, s3, monkeypatch, capsys):
    """RAY_ADDRESS → the cluster; clips read from S3 by Ray Data, outputs written to S3 by the actors; each output
    byte-identical to writing a direct Pipeline run's frames; both nodes made outputs; nothing listened beyond
    loopback; a rerun skips every finished output; impossible jobs are refused with what the cluster has."""
    from vdt_runtime.cli import main
    from vdt_runtime.storage import Folder

    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    out_uri = "s3://vdt/out" + s3
    args = ["batch", "s3://vdt/in" + s3, out_uri, *FLAGS, "--suffix", ".gif", "--seed", "5", "--bundle",
            str(tiny_bundle), "--backend", "cpu", "--threads", "2", "--actors", "2",
            "--batch-size", "1"]
    with Sampler() as sockets:
        assert main(args) == 0, capsys.readouterr().err
    assert sockets.beyond_loopback() == set(), sockets.seen
    assert {a for a, _ in sockets.seen}, "the sampler saw no sockets at all"
    out = Folder(out_uri)
    results = [json.loads(line) for line in out.read("results.jsonl").decode().splitlines()]
    assert [r["error"] for r in results] == [""] * N_CLIPS
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, clip) in enumerate(sorted(clips.items())):
            want = write_video(Path(tmp) / name, direct(tiny_bundle, clip, 5 + i))
            assert out.read(name) == want.read_bytes(), f"{name} differs from a direct Pipeline run"
    nodes = {node.node_id for node in cluster.list_all_nodes()}
    assert len(nodes) == 2 and {r["node"] for r in results} == nodes, "both nodes should have made outputs"

    assert main(args) == 0  # resumable: everything is finished, nothing runs again
    assert all(json.loads(line)["skipped"] for line in out.read("results.jsonl").decode().splitlines())

    for flags, words in [(["--actors", "3"], "3 actor(s) × 2 CPUs (threads) + 1 CPU for Ray Data's own tasks cannot "
                                             "be placed: Ray has 5 CPUs and 0 GPUs on 2 node(s) (3 CPUs/0 GPUs, 2 "
                                             "CPUs/0 GPUs), room for 2 such actor(s)"),
                         (["--num-cpus", "2"], "--num-cpus sizes the local Ray vdt batch starts; the cluster at")]:
        capsys.readouterr()
        assert main([*args[:2], "s3://vdt/other" + s3, *args[3:], *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert "other" not in Folder("s3://vdt" + s3).entries()


def test_an_s3_object_vdt_did_not_write_is_never_replaced(tiny_bundle, clips, cluster, s3):
    from vdt_runtime.batch import run_folder
    from vdt_runtime.storage import Folder

    out = Folder("s3://vdt/users" + s3)
    out.write("c2.gif", b"someone else's")
    with pytest.raises(InputError, match="already holds 'c2.gif', which vdt batch did not write"):
        run_folder("s3://vdt/in" + s3, "s3://vdt/users" + s3, bundle=tiny_bundle, address=cluster.address,
                   suffix=".gif", **REQUEST)
    assert out.entries() == {"c2.gif": False} and out.read("c2.gif") == b"someone else's"
    with pytest.raises(InputError, match="output suffix '' is not one of '.mp4', '.webm', '.gif' \\(a folder of PNGs"):
        run_folder("s3://vdt/in" + s3, "s3://vdt/pngs" + s3, bundle=tiny_bundle, suffix="", **REQUEST)


def test_a_killed_actor_is_restarted_and_every_row_is_written(tiny_bundle, clips, cluster, s3, tmp_path):
    """SIGKILL one GenerateBatch actor once the first output is finished: Ray Data's actor pool restarts it
    (max_restarts=-1) and retries the batch it held (max_task_retries=-1), so every row still ends written."""
    from vdt_runtime.batch import RECORDS, run_folder

    out = tmp_path / "out"  # a local folder: the cluster's nodes are all this machine
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(rows=run_folder(
        "s3://vdt/in" + s3, out, bundle=tiny_bundle, backend="cpu", options={"threads": 1}, actors=2,
        cpus_per_actor=2, address=cluster.address, batch_size=1, suffix=".gif", seed=9, **REQUEST)))
    job.start()
    killed, deadline = None, time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and job.is_alive():
        finished = [p for p in (out / RECORDS).glob("*.json") if json.loads(p.read_text()).get("frames")]
        actors = [pid for pid in descendants() if b"GenerateBatch" in _cmdline(pid)]
        if finished and actors:
            written_before = len(finished)
            os.kill(actors[0], signal.SIGKILL)
            killed = actors[0]
        time.sleep(0.05)
    job.join(180)
    assert killed is not None, "no actor was found to kill while the job ran"
    assert written_before < N_CLIPS, "the job had finished before the kill"
    rows = result["rows"]
    assert [r["error"] for r in rows] == [""] * N_CLIPS
    for i, (name, clip) in enumerate(sorted(clips.items())):
        np.testing.assert_array_equal(read_video(out / name), direct(tiny_bundle, clip, 9 + i))


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
