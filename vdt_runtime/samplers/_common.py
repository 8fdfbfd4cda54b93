"""Shared sampler pieces: input checks, mask compositing, and reading ε / v / variance from the model.

Shapes: x [B, T, C, h, w]; mask [T, h, w] or [B, T, h, w] (1 = generate), held as [1|B, T, 1, h, w].
The sampler state is float32, like the denoiser (the schedule's coefficients are float64 scalars); the denoiser
always sees the composite x_in = x_given·(1 − mask) + x_t·mask, and the state itself is never overwritten.
Per step the NumPy work is a handful of array operations plus, for stochastic samplers, one noise draw; at the
default model's size the noise dominated, hence `standard_normal` below (BENCHMARKS.md §2).
Array-library agnostic: every function on a state array goes through `xp` (vdt_runtime._xp), the module of x_T,
so CuPy arrays from a GPU backend run the same code on the device; with NumPy arrays nothing changes.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from vdt_runtime._xp import namespace
from vdt_runtime.errors import BackendError, InputError
from vdt_runtime.schedule import Schedule

DenoiseFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x [B,T,C,h,w] f32, t [B] f32) -> out
Callback = Callable[[int, int, np.ndarray], None]  # (step 0…n−1, n, composited x f32)


class Prediction:
    """One denoiser call read out, float32 [B, T, C, h, w]: x̂₀ (no clipping in latent space), ε̂ (computed on
    first use) and the learned-range variance channel in [-1, 1] (None for fixed_small)."""

    __slots__ = ("x0", "var", "_eps", "_x", "_head", "_coef")

    def __init__(self, x: np.ndarray, head: np.ndarray, var: np.ndarray | None, coef: tuple, x0: np.ndarray):
        self.x0, self.var, self._eps = x0, var, None
        self._x, self._head, self._coef = x, head, coef

    @property
    def eps(self) -> np.ndarray:
        if self._eps is None:
            cx, ch = self._coef
            self._eps = self._head if cx == 0.0 else cx * self._x + ch * self._head
        return self._eps


class Model:
    """The denoiser as a sampler sees it: state in, masked float32 call, Prediction out."""

    def __init__(self, denoise: DenoiseFn, x_T, schedule: Schedule, *, rng, mask, x_given,
                 callback: Callback | None):
        if not isinstance(schedule, Schedule):
            raise InputError(f"schedule must be a vdt_runtime.schedule.Schedule, got {type(schedule).__name__}")
        per_item = isinstance(rng, (list, tuple)) and all(isinstance(g, np.random.Generator) for g in rng)
        if not (isinstance(rng, np.random.Generator) or per_item or callable(rng)):
            raise InputError(f"rng must be a numpy.random.Generator, a list of them (one per batch item) or a "
                             f"noise function shape -> array, got {type(rng).__name__}")
        if callback is not None and not callable(callback):
            raise InputError(f"callback must be callable or None, got {type(callback).__name__}")
        self.xp = xp = namespace(x_T)
        self.x_T = _check_latents(xp, "x_T", x_T, None)  # float32 [B,T,C,h,w]
        if per_item and len(rng) != self.x_T.shape[0]:
            raise InputError(f"rng holds {len(rng)} Generators for a batch of {self.x_T.shape[0]}; give one per item")
        self.mask, self.x_given = _check_mask(xp, mask, x_given, self.x_T.shape)
        binary = self.mask is not None and bool(xp.all((self.mask == 0) | (self.mask == 1)))
        self._generate = self.mask == 1 if binary else None  # bool [1|B, T, 1, h, w]: one np.where per call
        self.denoise, self.schedule, self.rng, self.callback = denoise, schedule, rng, callback
        b, t, c, h, w = self.x_T.shape
        self.channels = c
        out_c = 2 * c if schedule.variance_type == "learned_range" else c
        self.out_shape = (b, t, out_c, h, w)

    def __call__(self, x: np.ndarray, i: int) -> Prediction:
        """Run the denoiser at schedule index i on the composited state x (float32)."""
        s = self.schedule
        xp = self.xp
        t = xp.full(x.shape[0], s.timesteps[i], dtype=xp.float32)  # [B] original timesteps
        out = xp.asarray(self.denoise(self.composite(x), t))
        if out.shape != self.out_shape:
            raise BackendError(
                f"denoiser returned shape {tuple(out.shape)}; expected {self.out_shape} "
                f"for variance_type={s.variance_type!r} and latents {tuple(x.shape)}"
            )
        out = out.astype(xp.float32, copy=False)
        head, var = out[:, :, : self.channels], None
        if s.variance_type == "learned_range":
            var = out[:, :, self.channels:]
        a, sig = math.sqrt(s.alphas_cumprod[i]), math.sqrt(1.0 - s.alphas_cumprod[i])
        if s.prediction_type == "v":
            x0 = a * x - sig * head  # x̂₀ = √ᾱ·x_t − √(1−ᾱ)·v
            return Prediction(x, head, var, (sig, a), x0)  # ε = √(1−ᾱ)·x_t + √ᾱ·v
        x0 = float(s.sqrt_recip_alphas_cumprod[i]) * x - float(s.sqrt_recipm1_alphas_cumprod[i]) * head
        return Prediction(x, head, var, (0.0, 1.0), x0)  # ε is the head itself

    def noise(self) -> np.ndarray:
        """Standard normal float32 noise shaped like the state: Box–Muller on the caller's Generator, item b's from
        the b-th of a list of Generators (so an item's noise does not depend on its batch), or the next draw of a
        noise function (how the golden tests replay the official sampler's recorded noise; checked, since it is
        the caller's). Generator noise is made where the state lives: only the uniforms cross from the host."""
        xp, shape = self.xp, self.x_T.shape
        if isinstance(self.rng, np.random.Generator):
            return standard_normal(self.rng, shape, xp)
        if isinstance(self.rng, (list, tuple)):
            return per_item_normal(self.rng, shape[1:], xp)
        return _check_latents(xp, "noise", self.rng(shape), shape)

    def composite(self, x: np.ndarray) -> np.ndarray:
        """x_given·(1 − mask) + x·mask as float32 (a new array); given cells are copied exactly, not recomputed."""
        if self.mask is None:
            return x.copy()
        where = self.xp.where
        if self._generate is not None:
            return where(self._generate, x, self.x_given)
        m, g = self.mask, self.x_given
        blend = g * (1.0 - m) + x * m
        return where(m <= 0.0, g, where(m >= 1.0, x, blend))

    def step_done(self, step: int, x: np.ndarray) -> None:
        """Report step `step` (0 … n−1) of n to the callback with the composited state."""
        if self.callback is not None:
            self.callback(step, self.schedule.steps, self.composite(x))


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...], xp=np) -> np.ndarray:
    """float32 N(0, 1) samples: Box–Muller on float32 uniforms drawn from `rng`, as an `xp` array (the uniforms
    are drawn on the host, so a seed gives the same stream everywhere; with CuPy only they cross to the device).

    The runtime's one source of Gaussian noise (x_T and every stochastic step). numpy's own
    `standard_normal(dtype=float32)` took 126 µs for one 16×4×16×16 state here against 40 µs for this, and it
    was most of a DDPM step's NumPy time. Float32 uniforms resolve 2⁻²⁴, so |z| ≤ 5.8: a 1-in-10⁸ tail is cut.
    """
    n = math.prod(shape)
    half = (n + 1) // 2
    u = xp.asarray(rng.random(2 * half, dtype=np.float32))  # [0, 1)
    radius = xp.sqrt(-2.0 * xp.log1p(-u[:half]))  # log(1 − u), 1 − u in (0, 1]
    angle = xp.float32(2.0 * math.pi) * u[half:]
    z = xp.empty(2 * half, xp.float32)
    xp.multiply(radius, xp.cos(angle), out=z[:half])
    xp.multiply(radius, xp.sin(angle), out=z[half:])
    return z[:n].reshape(shape)


def per_item_normal(rngs, shape: tuple[int, ...], xp=np) -> np.ndarray:
    """[len(rngs), *shape] float32 N(0, 1): item b's draw from rngs[b] alone (`standard_normal`), so an item's noise
    is the same whatever else is in its batch."""
    return xp.stack([standard_normal(g, shape, xp) for g in rngs])


def no_options(sampler: str, opts: dict) -> None:
    """Refuse options a sampler does not take, naming them."""
    if opts:
        raise InputError(f"sampler {sampler!r} takes no options; got {', '.join(sorted(opts))}")


def _check_latents(xp, name: str, x, shape: tuple | None) -> np.ndarray:
    """A finite real 5-D `xp` array (of `shape` when given), returned as float32."""
    x = xp.asarray(x)
    if x.ndim != 5 or x.dtype.kind not in "fiu":
        raise InputError(f"{name} must be a real array [B, T, C, h, w], got {x.dtype} {tuple(x.shape)}")
    if shape is not None and x.shape != shape:
        raise InputError(f"{name} has shape {tuple(x.shape)}; it must match x_T {shape}")
    if not bool(xp.all(xp.isfinite(x))):
        raise InputError(f"{name} contains NaN or inf")
    return x.astype(xp.float32)


def _check_mask(xp, mask, x_given, shape: tuple) -> tuple[np.ndarray | None, np.ndarray | None]:
    """mask [T,h,w] | [B,T,h,w] in [0, 1] → float32 [1|B, T, 1, h, w]; x_given → float32 [B,T,C,h,w]."""
    if mask is None and x_given is None:
        return None, None
    if mask is None or x_given is None:
        given, missing = ("mask", "x_given") if x_given is None else ("x_given", "mask")
        raise InputError(f"{given} was given without {missing}; pass both or neither")
    b, t, _, h, w = shape
    m = xp.asarray(mask)
    if m.dtype.kind not in "biuf" or m.shape not in ((t, h, w), (b, t, h, w)):
        raise InputError(
            f"mask must be a real array [T, h, w] = {(t, h, w)} or [B, T, h, w] = {(b, t, h, w)}, "
            f"got {m.dtype} {tuple(m.shape)}"
        )
    m = m.astype(xp.float32)
    if bool(xp.any(xp.isnan(m) | (m < 0) | (m > 1))):
        raise InputError("mask values must lie in [0, 1] (1 = generate) and not be NaN")
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)[:, :, None]  # [1|B, T, 1, h, w]
    return m, _check_latents(xp, "x_given", x_given, shape)
