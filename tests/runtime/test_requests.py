"""Requests and batched generation: a request's frames are the same bytes alone or in any batch, at any position."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from vdt_runtime import Pipeline, Request
from vdt_runtime.errors import InputError

STEPS = 3


CLIP = np.random.default_rng(7).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)


@pytest.fixture
def pipe(tiny_pipeline):
    return tiny_pipeline


@pytest.fixture
def clip():
    return CLIP


def mixed_requests(clip, total=6, **sampling):
    """Five different tasks over the same total, each with its own seed."""
    box_mask = np.zeros((total, 8, 8))
    box_mask[2:4, 1:5, 2:6] = 1
    return [
        Request(task="predict", frames=clip[:3], total=total, seed=11, **sampling),
        Request(task="backward", frames=clip[2:4], total=total, seed=12, **sampling),
        Request(task="interpolate", frames=clip[:2], stride=5, total=total, seed=13, **sampling),
        Request(task="unconditional", total=total, seed=14, **sampling),
        Request(mask=box_mask, frames=clip[:total], seed=15, **sampling),
    ]


@pytest.mark.parametrize("sampling", [dict(sampler="ddpm"), dict(sampler="ddim", eta=0.5),
                                      dict(sampler="dpmpp", eta=1.0)], ids=["ddpm", "ddim", "dpmpp-sde"])
def test_frames_identical_alone_and_in_any_batch_position(pipe, clip, sampling):
    requests = mixed_requests(clip, steps=STEPS, **sampling)
    alone = [pipe.generate([r])[0].frames for r in requests]
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4]):
        batch = pipe.generate([requests[i] for i in order])
        for i, result in zip(order, batch):
            np.testing.assert_array_equal(result.frames, alone[i], err_msg=f"request {i} in batch {order}")
    # and the task methods agree with the requests they build
    np.testing.assert_array_equal(pipe.predict(clip[:3], total=6, seed=11, steps=STEPS, **sampling).frames, alone[0])


def test_same_seed_twice_in_one_batch_gives_the_same_video(pipe, clip):
    r = Request(task="predict", frames=clip[:2], total=4, steps=STEPS, seed=5)
    a, b, c = pipe.generate([r, Request(task="predict", frames=clip[:2], total=4, steps=STEPS, seed=6), r])
    np.testing.assert_array_equal(a.frames, c.frames)
    assert not np.array_equal(a.frames, b.frames)


def test_batches_are_stacked_up_to_the_batch_max_and_split_beyond(tiny_bundle, clip, monkeypatch):
    pipe = Pipeline.load(tiny_bundle, backend="cpu", options={"threads": 1})
    pipe.bundle.stage("denoiser").dynamic_axes["batch"]["max"] = 2  # this pipeline's own Bundle object
    seen = []
    den = pipe.backends["denoiser"]
    run = den.run
    monkeypatch.setattr(den, "run", lambda feed: (seen.append(feed["latents"].shape[0]), run(feed))[1])
    requests = [Request(task="predict", frames=clip[:2], total=4, steps=2, seed=s) for s in range(5)]
    requests.insert(2, Request(task="unconditional", total=3, steps=2, seed=9))  # another total: its own batch
    results = pipe.generate(requests)
    assert sorted(seen) == sorted([2] * 2 + [2] * 2 + [1] * 2 + [1] * 2)  # 5 predicts → 2 + 2 + 1; 1 unconditional
    for r, res in zip(requests, results):
        np.testing.assert_array_equal(res.frames, pipe.generate([r])[0].frames)
        assert len(res.frames) == r.total


def test_rollouts_run_in_lockstep_and_match_alone(pipe, clip):
    requests = [Request(task="rollout", frames=clip[:3], cond=2, total=11, window=5, steps=2, seed=s) for s in (1, 2)]
    together = pipe.generate(requests)
    for r, res in zip(requests, together):
        alone = pipe.generate([r])[0]
        np.testing.assert_array_equal(res.frames, alone.frames)
        np.testing.assert_array_equal(res.mask, alone.mask)
        assert res.frames.shape == (11, 16, 16, 3)
    np.testing.assert_array_equal(pipe.rollout(clip[:3], total=11, cond=2, window=5, steps=2, seed=1).frames,
                                  together[0].frames)


def test_dynamic_int8_runs_item_by_item_and_keeps_the_contract(int8_bundle, clip, monkeypatch):
    """onnxruntime's dynamic INT8 takes one activation scale per call: batched calls would change the rounding."""
    pipe = Pipeline.load(int8_bundle, backend="cpu", precision="int8", options={"threads": 1})
    feed = {"latents": np.random.default_rng(0).standard_normal((3, 4, 4, 8, 8)).astype(np.float32),
            "timestep": np.full(3, 500, np.float32)}
    feed["latents"][1] *= 4
    together = pipe.backends["denoiser"].run(feed)["model_out"]
    single = pipe.backends["denoiser"].run({k: v[:1] for k, v in feed.items()})["model_out"]
    assert not np.array_equal(together[0], single[0]), "dynamic INT8 became batch-invariant: drop the per-item rule"
    requests = mixed_requests(clip, steps=2)
    batch = pipe.generate(requests)
    for r, res in zip(requests, batch):
        np.testing.assert_array_equal(res.frames, pipe.generate([r])[0].frames)


def test_every_request_is_checked_before_any_backend_runs(pipe, clip, monkeypatch):
    for backend in pipe.backends.values():
        monkeypatch.setattr(backend, "run", lambda feed: pytest.fail("a backend ran before validation finished"))
    good = Request(task="predict", frames=clip[:2], total=4, steps=2)
    with pytest.raises(InputError, match="max_frames=8"):
        pipe.generate([good, Request(task="predict", frames=clip[:2], total=9, steps=2)])
    with pytest.raises(InputError, match=r"requests\[1\] is a dict"):
        pipe.generate([good, {"task": "predict"}])
    with pytest.raises(InputError, match="list of Requests"):
        pipe.generate(good)


@pytest.mark.parametrize("kw,match", [
    (dict(), "give task="),
    (dict(task="zoom"), "unknown task 'zoom'"),
    (dict(task="predict", frames=np.zeros((1, 16, 16, 3), np.uint8), stride=2), "does not take stride=2"),
    (dict(task="unconditional", frames=np.zeros((1, 16, 16, 3), np.uint8)), "takes no frames"),
    (dict(mask=np.ones((2, 8, 8)), task="predict"), "drop task='predict'"),
    (dict(task="rollout", frames=np.zeros((2, 16, 16, 3), np.uint8), cond=1), "needs total"),
    (dict(task="rollout", frames=np.zeros((2, 16, 16, 3), np.uint8), cond=1, total=9, stride=2), "stride"),
    (dict(task="unconditional", window=3), "window"),
    (dict(task="unconditional", sampler="euler"), "'euler'"),
    (dict(task="unconditional", sampler="ddpm", eta=0.5), "eta"),  # no sampler: checked at plan (the bundle's)
    (dict(task="unconditional", sampler="ddim", eta=-1.0), "eta"),
    (dict(task="unconditional", seed=-1), "seed"),
])
def test_request_refuses_bad_arguments_when_built(kw, match):
    with pytest.raises(InputError, match=match):
        Request(**kw)


@pytest.mark.parametrize("kw,match", [
    (dict(task="predict", frames=np.zeros((2, 8, 8, 3), np.uint8)), "8x8.*16x16"),
    (dict(task="predict", frames=np.zeros((2, 16, 16, 3), np.uint8), steps=0), "steps"),
    (dict(task="complete", frames=np.zeros((2, 16, 16, 3), np.uint8), given=[0, 9], total=4), "given index"),
    (dict(task="predict", frames=np.zeros((3, 16, 16, 3), np.uint8), cond=2, at=[0, 1], total=4), "one per frame"),
    (dict(task="backward", frames=np.zeros((1, 16, 16, 3), np.uint8), cond=2, total=4), "needs 2 input frame"),
    (dict(task="predict"), r"needs input frames \(none were supplied\)"),
])
def test_request_refuses_what_the_bundle_cannot_take(pipe, kw, match):
    with pytest.raises(InputError, match=match):
        Request(**kw).plan(pipe.bundle)


def test_frame_placement_per_task(pipe, clip):
    def placed(total=6, **kw):
        plan = Request(**kw, total=total).plan(pipe.bundle)
        return [i for i in range(plan.total) if plan.frames is not None and plan.frames[i].any()]

    assert placed(task="predict", frames=clip[:3]) == [0, 1, 2]
    assert placed(task="backward", frames=clip[:2]) == [4, 5]
    assert placed(task="interpolate", frames=clip[:3], stride=2, total=5) == [0, 2, 4]
    assert placed(task="image_to_video", frames=clip[5]) == [0]
    assert placed(task="complete", frames=clip[:2], given=[4, 1]) == [1, 4]
    assert placed(task="predict", frames=clip[:4], cond=2, at=[0, 1, 2, 3]) == [0, 1, 2, 3]
    plan = Request(task="complete", frames=clip[:2], given=[4, 1], total=6).plan(pipe.bundle)
    np.testing.assert_array_equal(plan.frames[[4, 1]], clip[:2])


def test_batch_key_groups_only_compatible_requests(pipe, clip):
    keys = {Request(task="predict", frames=clip[:2], total=t, steps=s, sampler=k).plan(pipe.bundle).batch_key
            for t, s, k in itertools.product((4, 5), (2, 3), ("ddpm", "ddim"))}
    assert len(keys) == 8
