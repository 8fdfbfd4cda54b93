"""Ray Data batch job: outputs equal the single-process pipeline's for the same seeds; bad rows do not stop it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vdt_runtime import Pipeline, Request
from vdt_runtime.batch import GenerateBatch, clip_rows
from vdt_runtime.errors import InputError
from vdt_runtime.video import read_video, write_video

sys.path.insert(0, str(Path(__file__).parent))
from listening import Sampler  # noqa: E402

REQUEST = dict(task="predict", cond=2, total=5, steps=2)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(4)
    for i in range(5):
        write_video(folder / f"clip{i}.gif", rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    write_video(folder / "short.gif", rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8))  # 1 frame < cond
    return folder


def expected(tiny_bundle, row) -> np.ndarray:
    pipe = Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1})
    return pipe.generate([Request(frames=row["input"], seed=row["seed"], **REQUEST)])[0].frames


def test_rows_give_the_single_process_frames(tiny_bundle, clips, tmp_path):
    rows = clip_rows(clips, tmp_path / "out", suffix="", seed=100, **REQUEST)
    assert [r["seed"] for r in rows] == list(range(100, 106))
    gen = GenerateBatch(tiny_bundle, backend="cpu", options={"threads": 1})
    batch = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    out = gen(batch)
    assert list(out["error"][:5]) == [""] * 5 and "needs 2 input frame(s), got 1" in out["error"][5]
    assert list(out["frames"]) == [5] * 5 + [0]
    for row in rows[:5]:
        np.testing.assert_array_equal(read_video(row["output"]), expected(tiny_bundle, row))
    assert not (tmp_path / "out" / "short").exists()



def test_writing_a_row_looks_up_its_own_output_not_the_whole_folder(tiny_bundle, clips, tmp_path, monkeypatch):
    """Each row listed the whole output folder before writing its output: N rows, N listings of up to N entries (on
    S3, each listing is paged requests). The job's plan lists it once; a row looks up its own name."""
    from vdt_runtime.storage import Folder

    rows = clip_rows(clips, tmp_path / "out", suffix=".gif", seed=1, **REQUEST)[:3]
    listings, entries = [], Folder.entries
    monkeypatch.setattr(Folder, "entries", lambda self: (listings.append(str(self)), entries(self))[1])
    out = GenerateBatch(tiny_bundle, backend="cpu", options={"threads": 1})({k: np.array([r[k] for r in rows])
                                                                             for k in rows[0]})
    assert list(out["error"]) == [""] * 3 and list(out["frames"]) == [5] * 3
    assert listings == [], listings

def test_long_and_wrong_size_clips(tiny_bundle, tmp_path):
    """A clip longer than the bundle's window is decoded only as far as a request can use (its first frames give
    the same video); one of another frame size is that row's error, refused from the header."""
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(5)
    long = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    write_video(src / "long.gif", long)
    write_video(src / "big.gif", rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8))
    rows = clip_rows(src, tmp_path / "out", suffix=".gif", seed=7, **REQUEST)
    out = GenerateBatch(tiny_bundle, backend="cpu", options={"threads": 1})({k: np.array([r[k] for r in rows])
                                                                            for k in rows[0]})
    assert "24x24" in out["error"][0] and out["frames"][0] == 0  # big.gif sorts first
    assert out["error"][1] == "" and out["frames"][1] == REQUEST["total"]
    pipe = Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1})
    want = pipe.generate([Request(frames=read_video(src / "long.gif")[:8], seed=8, **REQUEST)])[0].frames
    np.testing.assert_array_equal(read_video(tmp_path / "out" / "long.gif"), want)


def test_a_user_mask_for_every_row(tiny_bundle, tmp_path, capsys):
    """`mask` (vdt batch --task inpaint --mask m.npy): every row regenerates the masked cells of its own clip, as a
    single-process Request with that mask does; a mask that does not fit is refused before any clip is read."""
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(6)
    for i in range(2):
        write_video(src / f"c{i}.gif", rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    mask = np.zeros((4, 8, 8), np.float32)
    mask[1:, 2:6, 2:6] = 1  # a square hole in frames 1..3 (latent cells)
    rows = clip_rows(src, tmp_path / "out", suffix="", seed=3, mask=mask, steps=2)
    out = GenerateBatch(tiny_bundle, backend="cpu", options={"threads": 1}, mask=mask)(
        {k: np.array([r[k] for r in rows]) for k in rows[0]})
    assert list(out["error"]) == ["", ""] and list(out["frames"]) == [4, 4]
    pipe = Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1})
    for row in rows:
        clip = read_video(row["input"])
        want = pipe.generate([Request(frames=clip, mask=mask, seed=row["seed"], steps=2)])[0].frames
        got = read_video(row["output"])
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got[0], clip[0])  # no cell of frame 0 is masked: given as is
        assert not np.array_equal(got[1:, 4:12, 4:12], clip[1:, 4:12, 4:12])  # the hole was generated
    pytest.importorskip("ray")
    from vdt_runtime.batch import run_folder

    with pytest.raises(InputError, match="mask"):  # refused before Ray starts
        run_folder(src, tmp_path / "out2", bundle=tiny_bundle, mask=np.ones((4, 3, 3), np.float32), steps=2)
    assert not (tmp_path / "out2").exists()

    from vdt_runtime.cli import main

    np.save(tmp_path / "m.npy", mask)
    assert main(["batch", str(src), str(tmp_path / "o"), "--task", "predict", "--mask", str(tmp_path / "m.npy")]) == 2
    assert "mask is for task 'inpaint'" in capsys.readouterr().err


def test_clip_rows_refuses_bad_jobs_before_reading_clips(clips, tmp_path):
    with pytest.raises(InputError, match="does not take stride"):
        clip_rows(clips, tmp_path, task="predict", stride=2)
    with pytest.raises(InputError, match="does not exist"):
        clip_rows(tmp_path / "nope", tmp_path / "o", **REQUEST)
    with pytest.raises(InputError, match="takes no frames"):  # a job over clips gives every row a clip
        clip_rows(clips, tmp_path, task="unconditional")
    with pytest.raises(InputError, match="each row"):
        clip_rows(clips, tmp_path, seed=1, frames=None, **REQUEST)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own settings, not ours
def test_ray_job_on_a_local_ray_matches_single_process(tiny_bundle, clips, tmp_path):
    pytest.importorskip("ray.data")
    from vdt_runtime.batch import run_folder

    out = tmp_path / "out"
    with Sampler() as sockets:  # the local Ray it starts listens on loopback only (ray-project/ray#59110)
        results = run_folder(clips, out, bundle=tiny_bundle, backend="cpu", options={"threads": 1}, actors=2,
                             num_cpus=3, batch_size=2, suffix="", seed=7, **REQUEST)
    assert sockets.beyond_loopback() == set() and any(name == "gcs_server" for _, name in sockets.seen), sockets.seen
    assert [r["error"] == "" for r in results] == [True] * 5 + [False]
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["input"] == results[0]["input"]
    for row in results[:5]:
        np.testing.assert_array_equal(read_video(row["output"]), expected(tiny_bundle, row))
    assert sorted(p.name for p in out.iterdir()) == [".vdt-batch"] + [f"clip{i}" for i in range(5)] + ["results.jsonl"]


# --- jobs that would destroy or hang (issue 21, class 2): refused before Ray starts work -------------------------

def _tree(folder):
    """{relative path: bytes} of every file under folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_output_folder_that_is_in_or_around_the_input_is_refused(clips, tmp_path, where):
    pytest.importorskip("ray")
    from vdt_runtime.batch import run_folder

    before = _tree(clips)
    out = {"same": clips, "inside": clips / "out", "containing": clips.parent}[where]
    how = {"same": "is", "inside": "lies inside", "containing": "contains"}[where]
    with pytest.raises(InputError, match=f"output folder .* {how} the input folder"):
        run_folder(clips, out, suffix=".gif", **REQUEST)
    assert _tree(clips) == before and not (clips / "out").exists()


def test_an_output_vdt_did_not_write_is_never_replaced_and_reruns_skip_finished_ones(tiny_bundle, clips, tmp_path,
                                                                                    capsys):
    """A user's out/clip1.gif stops the job before Ray starts; a rerun over vdt's own outputs skips them all."""
    pytest.importorskip("ray.data")
    from vdt_runtime.batch import run_folder

    out = tmp_path / "out"
    out.mkdir()
    kw = dict(bundle=tiny_bundle, backend="cpu", options={"threads": 1}, num_cpus=2, suffix=".gif", seed=7, **REQUEST)
    (out / "results.jsonl").write_text("the user's notes")
    with pytest.raises(InputError, match="already holds results.jsonl, which vdt batch did not write"):
        run_folder(clips, out, **kw)
    assert (out / "results.jsonl").read_text() == "the user's notes"
    (out / "results.jsonl").unlink()
    (out / "clip1.gif").write_bytes(b"the user's own file")
    with pytest.raises(InputError, match="already holds 'clip1.gif', which vdt batch did not write"):
        run_folder(clips, out, **kw)
    assert (out / "clip1.gif").read_bytes() == b"the user's own file" and sorted(p.name for p in out.iterdir()) == [
        "clip1.gif"]
    (out / "clip1.gif").unlink()
    first = run_folder(clips, out, **kw)
    assert [r["skipped"] for r in first] == [False] * 6 and sum(r["error"] == "" for r in first) == 5
    written = _tree(out)
    again = run_folder(clips, out, **kw)  # resumable: every finished output is skipped, the refused row retried
    assert [r["skipped"] for r in again] == [True] * 5 + [False] and "needs 2" in again[5]["error"]
    assert {k: v for k, v in _tree(out).items() if k != "results.jsonl"} == {
        k: v for k, v in written.items() if k != "results.jsonl"}
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["skipped"] is True


@pytest.mark.parametrize("flags, words", [
    (["--actors", "0"], "actors must be >= 1, got 0"),
    (["--suffix", ".avi"], "output suffix '.avi' is not one of"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--actors", "100000", "--num-cpus", "2"], "100000 actor(s) × 1 CPUs (threads) + 1 CPU for Ray Data's own tasks "
                                                "cannot be placed: Ray has 2 CPUs"),
    (["--actors", "2", "--threads", "2", "--num-cpus", "3"], "2 actor(s) × 2 CPUs (threads) + 1 CPU for Ray Data's "
                                                             "own tasks cannot be placed: Ray has 3 CPUs"),
    (["--gpus-per-actor", "1", "--num-cpus", "2"], "and 1 GPUs (threads) + 1 CPU for Ray Data's own tasks cannot be "
                                                   "placed: Ray has 2 CPUs and 0 GPUs"),
])
def test_impossible_jobs_are_refused_in_one_line_before_any_work(clips, tmp_path, capsys, flags, words):
    """--actors 0 used to fail inside Ray, --suffix .avi after sampling, and more actors (or threads) than the
    CPUs given to Ray hung forever: each is now one error line and exit status 2, with no output written."""
    pytest.importorskip("ray.data")
    from vdt_runtime.cli import main

    out = tmp_path / "out"
    assert main(["batch", str(clips), str(out), "--task", "predict", "--cond", "2", "--total", "5", "--steps", "2",
                 "--backend", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err
    assert not out.exists() or not any(out.iterdir())
