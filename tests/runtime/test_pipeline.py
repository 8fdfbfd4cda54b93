"""Pipeline end to end on the tiny bundle: every task, determinism, exact given frames, rollout, input errors."""
from __future__ import annotations

import numpy as np
import pytest

from vdt_runtime import Pipeline
from vdt_runtime.errors import BackendError, InputError

STEPS = 2


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1})


@pytest.fixture(scope="module")
def clip():
    return np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)


def generated_frames(result):
    return [i for i in range(len(result.mask)) if result.mask[i].any()]


@pytest.mark.parametrize("task,call,shape,given", [
    ("predict", lambda p, c, **kw: p.predict(c[:5], cond=3, total=6, **kw), 6, {0: 0, 1: 1, 2: 2}),
    ("backward", lambda p, c, **kw: p.backward(c[:2], cond=2, total=5, **kw), 5, {3: 0, 4: 1}),
    ("interpolate", lambda p, c, **kw: p.interpolate(c[:3], stride=3, **kw), 7, {0: 0, 3: 1, 6: 2}),
    ("image_to_video", lambda p, c, **kw: p.image_to_video(c[4], total=4, **kw), 4, {0: 4}),
    ("unconditional", lambda p, c, **kw: p.unconditional(total=3, **kw), 3, {}),
    ("complete", lambda p, c, **kw: p.complete(c[:2], given=[5, 1], total=6, **kw), 6, {5: 0, 1: 1}),
    ("run-mask", lambda p, c, **kw: p.run(c[:4], mask=np.array([0, 1, 1, 0])[:, None, None] * np.ones((4, 8, 8)), **kw),
     4,
     {0: 0, 3: 3}),
])
def test_tasks_end_to_end(pipe, clip, task, call, shape, given):
    result = call(pipe, clip, steps=STEPS, seed=0)
    assert result.frames.shape == (shape, 16, 16, 3) and result.frames.dtype == np.uint8
    assert result.mask.shape == (shape, 8, 8)
    assert sorted(set(range(shape)) - set(generated_frames(result))) == sorted(given)
    for out_index, in_index in given.items():  # given frames come back as the input pixels, exactly
        np.testing.assert_array_equal(result.frames[out_index], clip[in_index])
    assert result.providers["denoiser"] == ("CPUExecutionProvider",)


def test_inpaint_keeps_pixels_outside_the_box(pipe, clip):
    result = pipe.inpaint(clip[:3], box=(2, 4, 8, 10), box_frames=[1], steps=STEPS)
    np.testing.assert_array_equal(result.frames[[0, 2]], clip[[0, 2]])
    keep = np.ones((16, 16), bool)
    keep[2:8, 4:10] = False  # the box; latent cells are 2x2 pixels and the box is aligned to them
    np.testing.assert_array_equal(result.frames[1][keep], clip[1][keep])
    assert (result.frames[1][~keep] != clip[1][~keep]).any()


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.5), ("dpmpp", 0.0), ("dpmpp", 1.0)])
def test_same_seed_same_bytes_other_seed_differs(pipe, clip, sampler, eta):
    kw = dict(cond=2, total=5, steps=STEPS, sampler=sampler, eta=eta)
    a = pipe.predict(clip, seed=3, **kw).frames
    b = pipe.predict(clip, seed=3, **kw).frames
    c = pipe.predict(clip, seed=4, **kw).frames
    assert a.tobytes() == b.tobytes()
    assert (a[2:] != c[2:]).any()


def test_float_frames_match_uint8(pipe, clip):
    a = pipe.predict(clip[:2], total=4, steps=STEPS).frames
    b = pipe.predict(clip[:2].astype(np.float32) / 255, total=4, steps=STEPS).frames
    np.testing.assert_array_equal(a, b)


def test_rollout_beyond_max_frames(pipe, clip):
    total = pipe.max_frames + 5
    result = pipe.rollout(clip, total=total, cond=3, window=6, steps=STEPS, seed=2, timings=True)
    assert result.frames.shape == (total, 16, 16, 3)
    assert result.mask.shape == (total, 8, 8)
    assert not result.mask[:3].any() and result.mask[3:].all()
    np.testing.assert_array_equal(result.frames[:3], clip[:3])
    again = pipe.rollout(clip, total=total, cond=3, window=6, steps=STEPS, seed=2)
    assert again.frames.tobytes() == result.frames.tobytes()
    assert result.timings["denoiser"] > 0


def test_every_error_message_is_one_bounded_line():
    from vdt_runtime.errors import BackendError, BundleError

    for error in (InputError, BundleError, BackendError):
        text = str(error("first line\nsecond line " + "v" * 100_000 + " allowed: a, b"))
        assert "\n" not in text and len(text) <= 1000 and text.startswith("first line second line")
        assert text.endswith("allowed: a, b")  # the head and the tail (what is allowed) survive


def test_streamed_rollout_is_the_rollout_one_window_at_a_time(pipe, clip):
    total = 3 * pipe.max_frames + 1
    whole = pipe.rollout(clip, total=total, cond=3, window=6, steps=STEPS, seed=4)
    stream = pipe.rollout_stream(clip, total=total, cond=3, window=6, steps=STEPS, seed=4, timings=True)
    chunks = list(stream)
    assert [len(c) for c in chunks] == [3] + [3] * 7 + [1]  # the context, then window - cond new frames each
    assert np.concatenate(chunks).tobytes() == whole.frames.tobytes()
    assert stream.timings["denoiser"] > 0


def test_streamed_rollout_validates_before_the_first_frame(pipe, clip, monkeypatch):
    for backend in pipe.backends.values():
        monkeypatch.setattr(backend, "run", lambda inputs: (_ for _ in ()).throw(AssertionError("ran")))
    with pytest.raises(InputError, match="cond"):
        pipe.rollout_stream(clip, total=20, cond=0)  # raised at the call, not at the first next()


@pytest.mark.parametrize("vae_slice", [1, 3, 64])
def test_vae_slicing_changes_memory_not_frames(tiny_bundle, pipe, clip, vae_slice):
    sliced = Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1}, vae_slice=vae_slice)
    calls = []
    real = sliced.backends["vae_decoder"].run
    sliced.backends["vae_decoder"].run = lambda inputs: calls.append(len(inputs["latents"])) or real(inputs)
    a = sliced.predict(clip[:1], cond=1, total=8, steps=STEPS, seed=3).frames
    b = pipe.predict(clip[:1], cond=1, total=8, steps=STEPS, seed=3).frames
    assert max(calls) == min(vae_slice, 7) and sum(calls) == 7
    assert np.abs(a.astype(int) - b).max() <= 1  # batch size may change float rounding, never the picture


def test_vae_slice_default_and_validation(pipe, tiny_bundle):
    assert pipe.vae_slice == 256  # 256² pixels / 16² (then capped by the manifest's batch max, 64)
    with pytest.raises(InputError, match="vae_slice"):
        Pipeline.load(tiny_bundle, backend="cpu", vae_slice=0)


def test_timings_and_progress(pipe, clip, capsys):
    result = pipe.predict(clip[:2], total=4, steps=STEPS, timings=True, progress=True)
    assert {"vae_encoder", "denoiser", "sampler", "vae_decoder", "total"} <= set(result.timings)
    assert all(v >= 0 for v in result.timings.values())
    assert result.timings["total"] >= result.timings["denoiser"]
    assert "sampling" in capsys.readouterr().err
    assert pipe.predict(clip[:2], total=4, steps=STEPS).timings == {}


def test_read_from_path(pipe, clip, tmp_path):
    from vdt_runtime.video import write_video

    write_video(tmp_path / "in", clip[:2])
    result = pipe.predict(tmp_path / "in", total=3, steps=STEPS)
    np.testing.assert_array_equal(result.frames[:2], clip[:2])


@pytest.mark.parametrize("call,match", [
    (lambda p, c: p.predict(c[0], total=4), r"\[T, H, W, 3\]"),
    (lambda p, c: p.predict(c[..., :2], total=4), r"\[T, H, W, 3\]"),
    (lambda p, c: p.predict(c.astype(np.int64), total=4), "int64"),
    (lambda p, c: p.predict(np.zeros((2, 8, 8, 3), np.uint8), total=4), "8x8.*16x16"),
    (lambda p, c: p.predict(np.full((2, 16, 16, 3), np.nan, np.float32), total=4), "NaN"),
    (lambda p, c: p.predict(np.full((2, 16, 16, 3), np.inf, np.float32), total=4), "Inf"),
    (lambda p, c: p.predict(np.full((2, 16, 16, 3), 2.0, np.float32), total=4), r"\[0, 1\]"),
    (lambda p, c: p.predict(c[:2], total=9), "max_frames=8"),
    (lambda p, c: p.run(c[:2], task="predict", cond=4, total=6), r"frame\(s\) \[2, 3\].*2 frame"),
    (lambda p, c: p.predict(c[:4], cond=4, total=4), "cond"),
    (lambda p, c: p.predict(c[:2], total=4, steps=0), "steps"),
    (lambda p, c: p.predict(c[:2], total=4, steps=2.5), "steps"),
    (lambda p, c: p.predict(c[:2], total=4, sampler="euler"), "'euler'"),
    (lambda p, c: p.run(c[:2], task="dance", total=4), "'dance'"),
    (lambda p, c: p.predict(c[:2], total=4, seed=-1), "seed"),
    (lambda p, c: p.predict(c[:2], total=4, seed=2**63), "seed"),
    (lambda p, c: p.predict(c[:2], total=4, seed=1.5), "seed"),
    (lambda p, c: p.predict(c[:2], total=4, eta=0.5), "eta"),
    (lambda p, c: p.run(c[:5], task="predict", cond=2, total=4), "at most total"),
    (lambda p, c: p.run(c[:2], total=4), "task="),
    (lambda p, c: p.run(c[:4], task="predict", mask=np.ones((4, 8, 8))), "user mask"),
    (lambda p, c: p.interpolate(c[:2], stride=3, total=7), "3 input frame"),
    (lambda p, c: p.rollout(c[:2], total=20, cond=3), "3 input frame"),
    (lambda p, c: p.rollout(c, total=20, cond=3, window=9), "window"),
    (lambda p, c: p.image_to_video(None), "needs input frames"),
    (lambda p, c: p.rollout(c, total=1025, cond=3), "above the maximum 1024 returned in memory; rollout_stream"),
    (lambda p, c: p.predict(c[:2], total=4, seed=10**5000), "seed .* got an integer of 16610 bits"),
    (lambda p, c: p.predict(c[:2], total=10**5000), "total .* got an integer of 16610 bits"),
    (lambda p, c: p.run(c[:2], task="x" * 10**6, total=4), r"unknown task 'x+\.\.\. \(1000002 characters\)"),
    (lambda p, c: p.rollout_stream(c, total=100_001, cond=3), "total must be in 4..100000"),
    (lambda p, c: p.rollout_stream(c, total=20, cond=3, sampler="ddim", eta=float("nan")), "eta"),
    (lambda p, c: p.predict(c[:2], total=4, sampler="dpmpp", eta=float("inf")), "eta"),
])
def test_invalid_input_refused_before_any_backend_call(pipe, clip, monkeypatch, call, match):
    def boom(inputs):
        raise AssertionError("a backend ran before validation finished")

    for backend in pipe.backends.values():
        monkeypatch.setattr(backend, "run", boom)
    with pytest.raises(InputError, match=match):
        call(pipe, clip)


@pytest.mark.parametrize("kw,match", [({"backend": "metal"}, "metal"), ({"precision": "fp16"}, "fp16"),
                                      ({"options": {"threads": 0}}, "threads"),
                                      ({"options": {"graph_optimization": "x"}}, "'x'"),
                                      ({"threads": 1}, "threads")])  # the old keywords are gone
def test_load_options_refused(tiny_bundle, kw, match):
    with pytest.raises((InputError, TypeError), match=match):
        Pipeline.load(tiny_bundle, **kw)


def test_auto_says_what_it_chose_and_describe_says_what_runs(tiny_bundle):
    pipe = Pipeline.load(tiny_bundle, options={"threads": 1})
    assert pipe.chosen.startswith(f"auto chose '{pipe.backend}' at ") and "lossless" in pipe.chosen
    text = pipe.describe()
    assert text.splitlines()[0].startswith(f"backend    {pipe.backend}")
    for stage, b in pipe.backends.items():
        assert f"{stage:<12} {b.precision:<5} {b.graph:<8} graph, runs on {', '.join(b.providers)}" in text
    assert Pipeline.load(tiny_bundle, backend="cpu").chosen is None


def test_close_and_context_manager(tiny_bundle, clip):
    with Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1}) as pipe:
        assert pipe.predict(clip[:2], total=3, steps=1).frames.shape == (3, 16, 16, 3)
    assert all(b._closed for b in pipe.backends.values())
    pipe.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        pipe.predict(clip[:2], total=3, steps=1)
