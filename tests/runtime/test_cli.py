"""`vdt` CLI: every task through main(), info, bench, and one-line typed errors with exit code 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vdt_runtime.cli import main
from vdt_runtime.video import read_video, write_video

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    frames = np.random.default_rng(5).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("cli") / "in", frames)  # PNG folder: lossless


@pytest.mark.parametrize("task,flags,frames", [
    ("predict", ["--cond", "3", "--total", "5"], 5),
    ("backward", ["--cond", "2", "--total", "4"], 4),
    ("interpolate", ["--stride", "2", "--total", "5"], 5),  # frames 0, 2, 4 of the 6-frame clip
    ("image_to_video", ["--total", "3"], 3),
    ("unconditional", ["--total", "3"], 3),
    ("complete", ["--given", "0,2", "--total", "4"], 4),
    ("inpaint", ["--box", "0,0,8,8", "--box-frames", "1,2"], 6),
    ("rollout", ["--cond", "2", "--total", "11", "--window", "5"], 11),
])
def test_run_every_task(tiny_bundle, clip_path, tmp_path, capsys, task, flags, frames):
    out = tmp_path / "out.gif"
    args = ["run", "--task", task, "--bundle", str(tiny_bundle), "--out", str(out), "--steps", "2",
            "--no-progress", "--backend", "cpu", *flags]
    if task != "unconditional":
        args += ["--input", str(clip_path)]
    assert main(args) == 0, capsys.readouterr().err
    assert read_video(out).shape == (frames, 16, 16, 3)
    assert f"wrote {out}" in capsys.readouterr().out


def test_given_frames_exact_through_cli(tiny_bundle, clip_path, tmp_path):
    out = tmp_path / "png"
    assert main(["run", "--task", "predict", "--bundle", str(tiny_bundle), "--input", str(clip_path),
                 "--out", str(out), "--cond", "2", "--total", "4", "--steps", "2", "--no-progress",
                 "--timings", "--seed", "7"]) == 0
    np.testing.assert_array_equal(read_video(out)[:2], read_video(clip_path)[:2])


def test_info_and_verify(tiny_bundle, capsys):
    assert main(["info", str(tiny_bundle), "--verify", "--backend", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "sha256     all 6 files match" in out and "\n  cpu          fp32\n" in out
    assert "denoiser     fp32  fused    graph, runs on CPUExecutionProvider" in out
    for stage in ("vae_encoder", "vae_decoder"):
        assert f"{stage:<12} fp32  standard graph, runs on CPUExecutionProvider" in out
    assert main(["info", str(tiny_bundle), "--backend", "cpu", "--no-fused"]) == 0
    assert "denoiser     fp32  standard graph" in capsys.readouterr().out


def test_bench_prints_a_table(tiny_bundle, capsys):
    assert main(["bench", str(tiny_bundle), "--steps", "2", "--repeat", "1", "--backend", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["stage", "providers", "precision", "batch"]
    stages = [line.split()[0] for line in lines[2:]]
    assert stages == ["vae_encoder", "denoiser", "sampler", "vae_decoder", "total"]
    assert all(float(line.split()[-1]) >= 0 for line in lines[2:])


@pytest.mark.parametrize("args,match", [
    (["--task", "predict", "--out", "OUT/x.avi"], "'.avi'"),
    (["--task", "predict", "--out", "OUT/missing/x.gif"], "does not exist"),
    (["--task", "predict", "--out", "OUT/x.gif", "--stride", "2"], "does not take stride=2"),
    (["--task", "unconditional", "--out", "OUT/x.gif", "--steps", "0"], "steps"),
    (["--task", "predict", "--out", "OUT/x.gif", "--cond", "2", "--total", "20"], "max_frames"),
    (["--task", "rollout", "--out", "OUT/x.gif", "--cond", "2"], "rollout' needs total"),
    (["--task", "inpaint", "--out", "OUT/x.gif", "--box", "-1,0,8,8"], "box coordinate must be >= 0, got -1"),
    (["--task", "predict", "--out", "OUT/x.gif", "--fps", "0.001"], "fps must be a number in [0.01, 1000]"),
    (["--task", "complete", "--out", "OUT/x.gif", "--given", "2,2", "--total", "4"], "[2] more than once"),
    (["--task", "predict", "--out", "OUT/x.gif", "--total", "4.5"], "parameter 'total' must be an integer"),
])
def test_typed_errors_exit_2_with_one_line(tiny_bundle, clip_path, tmp_path, capsys, args, match):
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    if "unconditional" not in args:
        args += ["--input", str(clip_path)]
    assert main(["run", "--bundle", str(tiny_bundle), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0]
    assert list(tmp_path.iterdir()) == []


def test_module_entry_point_and_missing_bundle(tiny_bundle, clip_path, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "vdt_runtime.cli"]
    ok = subprocess.run([*run, "run", "--task", "predict", "--bundle", str(tiny_bundle), "--input", str(clip_path),
                         "--out", str(tmp_path / "o.mp4"), "--cond", "2", "--total", "4", "--steps", "2"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert read_video(tmp_path / "o.mp4").shape == (4, 16, 16, 3)
    bad = subprocess.run([*run, "info", str(tmp_path / "nope")], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: bundle folder") and "Traceback" not in bad.stderr


def test_info_lists_backends_and_auto_choice(tiny_bundle, capsys):
    assert main(["info", str(tiny_bundle), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "backends   precisions each can run for this bundle" in out
    for choice in ("cpu", "cuda", "ort-tensorrt"):
        assert f"\n  {choice:<12} " in out
    assert "(auto chose '" in out


def test_backend_options_from_flags(tiny_bundle, capsys):
    assert main(["info", str(tiny_bundle), "--backend", "cpu", "-o", "fused=false", "-o", "threads=1"]) == 0
    assert "denoiser     fp32  standard graph" in capsys.readouterr().out
    assert main(["info", str(tiny_bundle), "--backend", "cpu", "-o", "device=GPU"]) == 2
    assert "backend 'cpu' does not take option(s) 'device'" in capsys.readouterr().err
    assert main(["info", str(tiny_bundle), "--backend", "cpu", "-o", "threads=1", "--threads", "2"]) == 2
    assert "'threads' given twice" in capsys.readouterr().err
    assert main(["info", str(tiny_bundle), "--backend", "cpu", "--precision", "bf16"]) == 2
    assert "backend 'cpu' cannot run precision 'bf16'; it runs: fp32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["info", str(tiny_bundle), "-o", "novalue"])


def test_run_prints_what_auto_chose(tiny_bundle, tmp_path, capsys):
    assert main(["run", "--task", "unconditional", "--bundle", str(tiny_bundle), "--out", str(tmp_path / "u.gif"),
                 "--steps", "1", "--total", "2", "--no-progress"]) == 0
    assert "chosen     auto chose '" in capsys.readouterr().out


def _run(tiny_bundle, *args) -> list[str]:
    return ["run", "--bundle", str(tiny_bundle), "--no-progress", "--steps", "1", "--backend", "cpu", *args]


def test_out_never_destroys_user_files(tiny_bundle, clip_path, tmp_path, capsys):
    """--out = --input, --out inside the bundle, --out a folder of someone's files: refused, nothing touched."""
    clip = write_video(tmp_path / "clip.gif", read_video(clip_path))
    before = clip.read_bytes()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    bundle_files = sorted(p.name for p in Path(tiny_bundle).iterdir())
    for out, match in ((clip, "is the input"), (Path(tiny_bundle) / "x.gif", "lies inside the bundle"),
                       (Path(tiny_bundle), "is the bundle"), (mine, "'notes.txt'"),
                       (tmp_path, "contains the input")):
        assert main(_run(tiny_bundle, "--task", "predict", "--input", str(clip), "--out", str(out))) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
    for out, match in ((clip_path, "is the input"), (clip_path / "x.gif", "lies inside the input")):
        assert main(_run(tiny_bundle, "--task", "predict", "--input", str(clip_path), "--out", str(out))) == 2
        assert match in capsys.readouterr().err
    assert clip.read_bytes() == before and (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in Path(tiny_bundle).iterdir()) == bundle_files


def test_png_folder_output_replaces_only_its_own_frames(tiny_bundle, clip_path, tmp_path):
    out = tmp_path / "frames"
    args = _run(tiny_bundle, "--task", "predict", "--input", str(clip_path), "--cond", "2", "--out", str(out))
    assert main([*args, "--total", "5"]) == 0
    assert main([*args, "--total", "3"]) == 0  # a folder of our frames: replaced whole
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:05d}.png" for i in range(3)]


@pytest.mark.parametrize("args", [
    ["--task", "predict", "--input", "IN", "--out", "OUT/x.gif", "--fps", "0"],
    ["--task", "predict", "--input", "IN", "--out", "OUT/x.gif", "--fps", "nan"],
    ["--task", "predict", "--input", "IN", "--out", "OUT/x.gif", "--threads", "100000"],
    ["--task", "predict", "--input", "IN", "--out", "OUT/x.gif", "--cond", "-5"],
    ["--task", "predict", "--input", "OUT/junk.webm", "--out", "OUT/x.gif"],
    ["--task", "predict", "--input", "OUT", "--out", "OUT/x.gif"],
    ["--task", "predict", "--input", "/dev/null", "--out", "OUT/x.gif"],
    ["--task", "predict", "--input", "IN", "--out", "/dev/null"],
    ["--task", "predict", "--input", "IN", "--out", "OUT/" + "x" * 5000 + ".gif"],
    ["--task", "inpaint", "--input", "IN", "--out", "OUT/x.gif", "--mask", "OUT/junk.npy"],
    ["--task", "rollout", "--input", "IN", "--out", "OUT/x.gif", "--cond", "2", "--total", "99999999"],
    ["--task", "predict", "--input", "IN", "--out", "OUT/x.gif", "--sampler", "ddim", "--eta", "inf"],
    ["--task", "predict", "--input", "IN", "--out", "OUT/x.gif", "--precision", "x" * 10000],
])
def test_hostile_arguments_give_one_line_never_a_traceback(tiny_bundle, clip_path, tmp_path, capsys, args):
    (tmp_path / "junk.webm").write_bytes(b"\x1aE\xdf\xa3" + b"\x00" * 100)
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY\x01\x00" + b"{" * 50)
    args = [a.replace("IN", str(clip_path)).replace("OUT", str(tmp_path)) for a in args]
    try:
        status = main(_run(tiny_bundle, *args))
    except SystemExit as e:  # argparse's own refusals (a --precision not among its choices)
        status = e.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: " in err[0] and len(err[0]) < 1100, err
    assert "Traceback" not in err[0]
    assert not (tmp_path / "x.gif").exists()


def test_interpolate_takes_the_keyframes_from_a_full_length_clip(tmp_path, capsys):
    """The README's `vdt run --task interpolate --input samples/bounce16.gif --stride 5` (issue 21, class 6): the
    16-frame clip is the full-length video, frames 0, 5, 10, 15 are kept; it used to fail asking for total=76."""
    out = tmp_path / "i.gif"
    assert main(["run", "--task", "interpolate", "--input", str(REPO / "samples" / "bounce16.gif"), "--stride", "5",
                 "--out", str(out), "--steps", "2", "--no-progress", "--backend", "cpu"]) == 0, capsys.readouterr().err
    clip, got = read_video(REPO / "samples" / "bounce16.gif"), read_video(out)
    assert got.shape == clip.shape == (16, 32, 32, 3)
    assert capsys.readouterr().out.count("wrote") == 1


def test_run_reads_the_bundle_and_the_input_once(tiny_bundle, clip_path, tmp_path, monkeypatch):
    """`vdt run` loaded (and checked) the bundle twice, once for its own checks and once in Pipeline.load, and
    decoded its input video twice, once to refuse a bad request before a backend loads and once to run it."""
    from vdt_runtime import video
    from vdt_runtime.bundle import Bundle
    from vdt_runtime.pipeline import Pipeline

    loads, load = [], Bundle.load.__func__
    monkeypatch.setattr(Bundle, "load", classmethod(lambda cls, *a, **k: (loads.append(a), load(cls, *a, **k))[1]))
    reads, read = [], video.read_video
    monkeypatch.setattr(video, "read_video", lambda path, **k: (reads.append(path), read(path, **k))[1])
    for task in (["--task", "predict", "--cond", "2", "--total", "4"],
                 ["--task", "rollout", "--cond", "2", "--total", "11", "--window", "5"]):
        loads.clear(), reads.clear()
        assert main(["run", *task, "--bundle", str(tiny_bundle), "--input", str(clip_path), "--steps", "2",
                     "--out", str(tmp_path / f"{task[1]}.gif"), "--no-progress", "--backend", "cpu"]) == 0
        assert len(loads) == 1, loads
        assert [Path(r) for r in reads] == [clip_path], reads
    bundle = load(Bundle, tiny_bundle)
    with Pipeline.load(bundle, backend="cpu") as pipe:
        assert pipe.bundle is bundle
