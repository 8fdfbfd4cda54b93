"""Synthetic physics clips: one ball under gravity bouncing off floor and walls (NumPy only).

Deterministic by seed. Training uses seeds [0, 10**6); evaluation uses seeds from EVAL_SEED_BASE up,
which training never touches.
"""
from __future__ import annotations

import numpy as np

SIZE = 32  # pixels, square
FRAMES = 16
RADIUS = 3.5
GRAVITY = 0.35  # px / frame^2, +y is down
RESTITUTION = 0.9  # speed kept after a floor bounce (walls and ceiling are elastic)
SUBSTEPS = 8
BACKGROUND = np.array([0.92, 0.92, 0.88])  # RGB in [0, 1]
BALL = np.array([0.85, 0.2, 0.1])
EVAL_SEED_BASE = 10**6


def trajectory(rng: np.random.Generator, frames: int = FRAMES) -> np.ndarray:
    """[frames, 2] ball centre (y, x) in pixels, integrated with sub-steps."""
    lo, hi = RADIUS, SIZE - RADIUS
    pos = rng.uniform(lo + 1, hi - 1, size=2)
    vel = np.array([rng.uniform(-2.0, 1.0), rng.uniform(-2.0, 2.0)])
    out = np.empty((frames, 2))
    dt = 1.0 / SUBSTEPS
    for f in range(frames):
        out[f] = pos
        for _ in range(SUBSTEPS):
            vel[0] += GRAVITY * dt
            pos = pos + vel * dt
            for axis in (0, 1):
                if pos[axis] > hi:
                    pos[axis] = 2 * hi - pos[axis]
                    vel[axis] = -abs(vel[axis]) * (RESTITUTION if axis == 0 else 1.0)
                elif pos[axis] < lo:
                    pos[axis] = 2 * lo - pos[axis]
                    vel[axis] = abs(vel[axis])
    return out


def render(centres: np.ndarray) -> np.ndarray:
    """[T, 2] centres → uint8 [T, SIZE, SIZE, 3], anti-aliased disc on a plain background."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    dist = np.hypot(yy[None] - centres[:, 0, None, None], xx[None] - centres[:, 1, None, None])
    cover = np.clip(RADIUS + 0.5 - dist, 0.0, 1.0)[..., None]  # (T, H, W, 1)
    img = BACKGROUND * (1 - cover) + BALL * cover
    return np.round(img * 255).astype(np.uint8)


def clip(seed: int, frames: int = FRAMES) -> np.ndarray:
    """One clip, uint8 [frames, SIZE, SIZE, 3]."""
    return render(trajectory(np.random.default_rng(seed), frames))


def clips(seeds) -> np.ndarray:
    """uint8 [len(seeds), FRAMES, SIZE, SIZE, 3]."""
    return np.stack([clip(int(s)) for s in seeds])


def ball_centre(frames: np.ndarray) -> np.ndarray:
    """[..., H, W, 3] uint8 → [..., 2] centre of mass (y, x) of non-background pixels (NaN if none)."""
    bg = np.round(BACKGROUND * 255)
    weight = np.abs(frames.astype(np.float64) - bg).sum(-1)  # (..., H, W)
    weight = np.where(weight > 30, weight, 0.0)
    total = weight.sum((-2, -1))
    yy, xx = np.mgrid[0:frames.shape[-3], 0:frames.shape[-2]] + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = (weight * yy).sum((-2, -1)) / total
        cx = (weight * xx).sum((-2, -1)) / total
    return np.stack([cy, cx], axis=-1)
