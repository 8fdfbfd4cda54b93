"""Long rollouts: windows of predict, each conditioned on the last `cond` frames so far.

One window loop (`windows`) serves both consumers: `in_memory` (Pipeline.rollout / generate: every frame returned,
rollouts of one (total, cond, window) in lockstep on B) and `stream` (Pipeline.rollout_stream: each window's new
frames handed on as soon as they are decoded, one window held). One Generator per rollout, seeded once, drives every
window, so both give the same frames bit for bit.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from vdt_runtime.requests import Plan, Request
from vdt_runtime.timing import Timer


def windows(runner, plans: list[Plan], s, rngs, timer: Timer, bar) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """Per window, per plan: (the window's new frames uint8 [n, H, W, 3], their latent mask [n, h, w])."""
    p0 = plans[0]
    cond, window, total = p0.cond, p0.window, p0.total
    sampler, steps, eta = p0.sampling
    contexts, done = [p.frames[-cond:] for p in plans], cond
    while done < total:
        new = min(window - cond, total - done)
        window_plans = [Request(task="predict", frames=c, cond=cond, total=cond + new, steps=steps, sampler=sampler,
                                eta=eta, seed=p.seed).plan(runner.bundle) for c, p in zip(contexts, plans)]
        outs = runner.batch(window_plans, s, rngs, timer, bar)
        contexts, done = [out[-cond:] for out in outs], done + new
        yield [(out[cond:], wp.mask[cond:]) for out, wp in zip(outs, window_plans)]


def in_memory(runner, plans: list[Plan], s, rngs, timer: Timer, bar) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every frame and the latent mask [T, h, w] (the given start 0, then each window's) of each rollout plan."""
    hw = (runner.bundle.latent_size,) * 2
    videos = [[p.frames] for p in plans]
    masks = [[np.zeros((p.cond,) + hw, np.float32)] for p in plans]
    for step in windows(runner, plans, s, rngs, timer, bar):
        for v, m, (frames, mask) in zip(videos, masks, step):
            v.append(frames)
            m.append(mask)
    return [np.concatenate(v) for v in videos], [np.concatenate(m) for m in masks]


def stream(runner, plan: Plan, timer: Timer) -> Iterator[np.ndarray]:
    """The chunks of one rollout plan: its given frames, then each window's new frames."""
    yield plan.frames
    steps = windows(runner, [plan], runner.sampler(plan.sampling), [np.random.default_rng(plan.seed)], timer, None)
    while True:
        with timer.stage("total"):
            step = next(steps, None)
        if step is None:
            return
        yield step[0][0]
