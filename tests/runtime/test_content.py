"""Content, not just shapes: what the pipeline generates depends on the given frames and on the sampling settings.

On the tiny randomised bundle (tests/conftest.py), with a fixed seed: the noise is then the same in both runs of a
pair, so any difference comes from the input or setting that changed.
"""
from __future__ import annotations

import numpy as np
import pytest

from vdt_runtime.cli import main
from vdt_runtime.video import read_video, write_video

STEPS = 3
CLIP = np.random.default_rng(11).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)


def _changed(frames: np.ndarray, index: int) -> np.ndarray:
    out = frames.copy()
    out[index] = 255 - out[index]
    return out


def _differ(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


TASKS = {  # name -> (call with frames, the input frame to change, the output frames that are generated)
    "predict": (lambda p, f, **kw: p.predict(f[:3], cond=3, total=6, **kw), 1, slice(3, 6)),
    "backward": (lambda p, f, **kw: p.backward(f[:2], cond=2, total=5, **kw), 0, slice(0, 3)),
    "interpolate": (lambda p, f, **kw: p.interpolate(f[:3], stride=3, **kw), 2, [1, 2, 4, 5]),
    "complete": (lambda p, f, **kw: p.complete(f[:2], given=[0, 4], total=6, **kw), 1, [1, 2, 3, 5]),
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_changed_given_frame_changes_the_generated_frames(tiny_pipeline, task):
    """The denoiser sees the condition: a different given frame, same seed, gives different generated frames."""
    call, index, generated = TASKS[task]
    a = call(tiny_pipeline, CLIP, steps=STEPS, seed=0).frames
    b = call(tiny_pipeline, _changed(CLIP, index), steps=STEPS, seed=0).frames
    assert _differ(a[generated], b[generated]) > 1.0, task
    again = call(tiny_pipeline, CLIP, steps=STEPS, seed=0).frames
    assert a.tobytes() == again.tobytes()  # and the difference is not run-to-run noise


def test_inpainted_box_depends_on_the_other_frames(tiny_pipeline):
    """The box regenerated on frame 1 changes when the (wholly given) frames beside it change. A change on frame 1
    itself would also reach the box through the VAE decoder, so it would not show the denoiser saw it."""
    box, frame = (4, 4, 12, 12), 1
    a = tiny_pipeline.inpaint(CLIP[:3], box=box, box_frames=[frame], steps=STEPS, seed=0).frames
    b = tiny_pipeline.inpaint(_changed(CLIP[:3], 0), box=box, box_frames=[frame], steps=STEPS, seed=0).frames
    np.testing.assert_array_equal(a[frame, :4], b[frame, :4])  # outside the box: the input pixels, unchanged
    assert _differ(a[frame, 4:12, 4:12], b[frame, 4:12, 4:12]) > 1.0


SETTINGS = [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("dpmpp", 0.0), ("dpmpp", 1.0)]


def test_sampler_and_eta_change_the_output(tiny_pipeline):
    outs = {s: tiny_pipeline.predict(CLIP[:3], cond=3, total=6, steps=STEPS, sampler=s[0], eta=s[1], seed=0).frames
            for s in SETTINGS}
    for i, a in enumerate(SETTINGS):
        for b in SETTINGS[i + 1:]:
            assert _differ(outs[a][3:], outs[b][3:]) > 0.5, (a, b)
    for s in SETTINGS:  # and each is reproducible
        again = tiny_pipeline.predict(CLIP[:3], cond=3, total=6, steps=STEPS, sampler=s[0], eta=s[1], seed=0)
        assert again.frames.tobytes() == outs[s].tobytes(), s


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("dpmpp", 1.0)])
def test_cli_sampler_and_eta_reach_the_sampler(tiny_bundle, tiny_pipeline, tmp_path, sampler, eta):
    """`vdt run --sampler S --eta E` gives the API's frames for (S, E), and differs from the CLI's default DDPM."""
    clip = write_video(tmp_path / "in", CLIP[:3])  # PNG folders: lossless both ways
    common = ["run", "--task", "predict", "--bundle", str(tiny_bundle), "--input", str(clip), "--cond", "3",
              "--total", "6", "--steps", str(STEPS), "--seed", "0", "--no-progress", "--backend", "cpu",
              "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "set"), "--sampler", sampler, "--eta", str(eta)]) == 0
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    got, default = read_video(tmp_path / "set"), read_video(tmp_path / "default")
    api = tiny_pipeline.predict(CLIP[:3], cond=3, total=6, steps=STEPS, sampler=sampler, eta=eta, seed=0).frames
    np.testing.assert_array_equal(got, api)
    assert _differ(got[3:], default[3:]) > 0.5
