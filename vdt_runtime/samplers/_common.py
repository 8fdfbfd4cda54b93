"""Shared sampler pieces: input checks, mask compositing, and reading ε / v / variance from the model.

Shapes: x [B, T, C, h, w]; mask [T, h, w] or [B, T, h, w] (1 = generate), held as [1|B, T, 1, h, w].
The sampler state is float64; the denoiser always sees the float32 composite
x_in = x_given·(1 − mask) + x_t·mask, and the state itself is never overwritten.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import numpy as np

from vdt_runtime.errors import BackendError, InputError
from vdt_runtime.schedule import Schedule

DenoiseFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x [B,T,C,h,w] f32, t [B] f32) -> out
Callback = Callable[[int, int, np.ndarray], None]  # (step 0…n−1, n, composited x f32)


class Prediction(NamedTuple):
    """One denoiser call read out in float64, all [B, T, C, h, w]."""

    eps: np.ndarray  # ε̂
    x0: np.ndarray  # x̂₀ (no clipping in latent space)
    var: np.ndarray | None  # learned-range variance channel in [-1, 1], None for fixed_small


class Model:
    """The denoiser as a sampler sees it: state in, masked float32 call, Prediction out."""

    def __init__(self, denoise: DenoiseFn, x_T, schedule: Schedule, *, rng, mask, x_given,
                 callback: Callback | None):
        if not isinstance(schedule, Schedule):
            raise InputError(f"schedule must be a vdt_runtime.schedule.Schedule, got {type(schedule).__name__}")
        if not isinstance(rng, np.random.Generator):
            raise InputError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        if callback is not None and not callable(callback):
            raise InputError(f"callback must be callable or None, got {type(callback).__name__}")
        self.x_T = _check_latents("x_T", x_T, None)  # float64 [B,T,C,h,w]
        self.mask, self.x_given = _check_mask(mask, x_given, self.x_T.shape)
        binary = self.mask is not None and bool(np.all((self.mask == 0) | (self.mask == 1)))
        self._generate = self.mask == 1 if binary else None  # bool [1|B, T, 1, h, w]: one np.where per call
        self.denoise, self.schedule, self.rng, self.callback = denoise, schedule, rng, callback
        b, t, c, h, w = self.x_T.shape
        self.channels = c
        out_c = 2 * c if schedule.variance_type == "learned_range" else c
        self.out_shape = (b, t, out_c, h, w)

    def __call__(self, x: np.ndarray, i: int) -> Prediction:
        """Run the denoiser at schedule index i on the composited state x (float64)."""
        s = self.schedule
        t = np.full(x.shape[0], s.timesteps[i], dtype=np.float32)  # [B] original timesteps
        out = np.asarray(self.denoise(self.composite(x), t))
        if out.shape != self.out_shape:
            raise BackendError(
                f"denoiser returned shape {tuple(out.shape)}; expected {self.out_shape} "
                f"for variance_type={s.variance_type!r} and latents {tuple(x.shape)}"
            )
        out = out.astype(np.float64)
        head, var = out[:, :, : self.channels], None
        if s.variance_type == "learned_range":
            var = out[:, :, self.channels:]
        a, sig = math.sqrt(s.alphas_cumprod[i]), math.sqrt(1.0 - s.alphas_cumprod[i])
        if s.prediction_type == "v":
            eps = a * head + sig * x  # ε = √ᾱ·v + √(1−ᾱ)·x_t
            x0 = a * x - sig * head  # x̂₀ = √ᾱ·x_t − √(1−ᾱ)·v
        else:
            eps = head
            x0 = s.sqrt_recip_alphas_cumprod[i] * x - s.sqrt_recipm1_alphas_cumprod[i] * eps
        return Prediction(eps, x0, var)

    def noise(self) -> np.ndarray:
        """Standard normal noise shaped like the state, drawn in float32 (half the cost), from the caller's Generator."""
        return self.rng.standard_normal(self.x_T.shape, dtype=np.float32)

    def composite(self, x: np.ndarray) -> np.ndarray:
        """x_given·(1 − mask) + x·mask as float32; given cells are copied exactly, not recomputed."""
        x = x.astype(np.float32)
        if self.mask is None:
            return x
        if self._generate is not None:
            return np.where(self._generate, x, self.x_given)
        m, g = self.mask, self.x_given
        blend = g * (1.0 - m) + x * m
        return np.where(m <= 0.0, g, np.where(m >= 1.0, x, blend))

    def step_done(self, step: int, x: np.ndarray) -> None:
        """Report step `step` (0 … n−1) of n to the callback with the composited state."""
        if self.callback is not None:
            self.callback(step, self.schedule.steps, self.composite(x))


def no_options(sampler: str, opts: dict) -> None:
    """Refuse options a sampler does not take, naming them."""
    if opts:
        raise InputError(f"sampler {sampler!r} takes no options; got {', '.join(sorted(opts))}")


def check_eta(eta) -> float:
    """η for DDIM: a finite real >= 0."""
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
        raise InputError(f"eta must be a finite number >= 0, got {eta!r}")
    return float(eta)


def _check_latents(name: str, x, shape: tuple | None) -> np.ndarray:
    """A finite real 5-D array (of `shape` when given), returned as float64."""
    x = np.asarray(x)
    if x.ndim != 5 or x.dtype.kind not in "fiu":
        raise InputError(f"{name} must be a real array [B, T, C, h, w], got {x.dtype} {tuple(x.shape)}")
    if shape is not None and x.shape != shape:
        raise InputError(f"{name} has shape {tuple(x.shape)}; it must match x_T {shape}")
    if not np.isfinite(x).all():
        raise InputError(f"{name} contains NaN or inf")
    return x.astype(np.float64)


def _check_mask(mask, x_given, shape: tuple) -> tuple[np.ndarray | None, np.ndarray | None]:
    """mask [T,h,w] | [B,T,h,w] in [0, 1] → float32 [1|B, T, 1, h, w]; x_given → float32 [B,T,C,h,w]."""
    if mask is None and x_given is None:
        return None, None
    if mask is None or x_given is None:
        given, missing = ("mask", "x_given") if x_given is None else ("x_given", "mask")
        raise InputError(f"{given} was given without {missing}; pass both or neither")
    b, t, _, h, w = shape
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf" or m.shape not in ((t, h, w), (b, t, h, w)):
        raise InputError(
            f"mask must be a real array [T, h, w] = {(t, h, w)} or [B, T, h, w] = {(b, t, h, w)}, "
            f"got {m.dtype} {tuple(m.shape)}"
        )
    m = m.astype(np.float32)
    if np.isnan(m).any() or (m < 0).any() or (m > 1).any():
        raise InputError("mask values must lie in [0, 1] (1 = generate) and not be NaN")
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)[:, :, None]  # [1|B, T, 1, h, w]
    return m, _check_latents("x_given", x_given, shape).astype(np.float32)
