"""Ray Data batch job: outputs equal the single-process pipeline's for the same seeds; bad rows do not stop it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vdt_runtime import Pipeline, Request
from vdt_runtime.batch import GenerateBatch, clip_rows
from vdt_runtime.errors import InputError
from vdt_runtime.video import read_video, write_video

REQUEST = dict(task="predict", cond=2, total=5, steps=2)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(4)
    for i in range(5):
        write_video(folder / f"clip{i}", rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))  # PNG folders
    (folder / "short").mkdir()
    write_video(folder / "short", rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8))  # 1 frame < cond
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
        write_video(src / f"c{i}", rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
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
        clip_rows(tmp_path / "nope", tmp_path, **REQUEST)
    with pytest.raises(InputError, match="takes no frames"):  # a job over clips gives every row a clip
        clip_rows(clips, tmp_path, task="unconditional")
    with pytest.raises(InputError, match="each row"):
        clip_rows(clips, tmp_path, seed=1, frames=None, **REQUEST)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own settings, not ours
def test_ray_job_on_a_local_ray_matches_single_process(tiny_bundle, clips, tmp_path):
    pytest.importorskip("ray.data")
    from vdt_runtime.batch import run_folder

    out = tmp_path / "out"
    results = run_folder(clips, out, bundle=tiny_bundle, backend="cpu", options={"threads": 1}, actors=2, num_cpus=2,
                         batch_size=2, suffix="", seed=7, **REQUEST)
    assert [r["error"] == "" for r in results] == [True] * 5 + [False]
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["input"] == results[0]["input"]
    for row in results[:5]:
        np.testing.assert_array_equal(read_video(row["output"]), expected(tiny_bundle, row))
    assert sorted(p.name for p in out.iterdir()) == [f"clip{i}" for i in range(5)] + ["results.jsonl"]
