"""Diffusion schedule: betas, respacing and every sampler coefficient, precomputed once in float64.

Respacing keeps K of the N original timesteps, t_i = round(i·(N−1)/(K−1)) (the float stride is
accumulated and rounded half to even, exactly like the official code), and rebuilds the betas from
the kept ᾱ: β'_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}}, with ᾱ before the first kept timestep equal to 1.

steps=1 keeps t = N−1 (the official rule would keep t = 0, which cannot denoise anything): the one
step then has β' = 1 − ᾱ_{N−1} and ᾱ_prev = 1, so the posterior mean is exactly x̂₀. Its posterior
variance is 0, so the clipped log-variance of that single entry falls back to log β' (it is never
used: no noise is added at the final step).

Every array is indexed by i = 0 … K−1 in ascending-time order; samplers walk i from K−1 down to 0
and pass the ORIGINAL timestep `timesteps[i]` to the denoiser.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vdt_runtime.checks import check_choice, check_int
from vdt_runtime.errors import InputError
from vdt_runtime.settings import BETA_SCHEDULES, PREDICTION_TYPES, VARIANCE_TYPES


@dataclass(frozen=True, eq=False)
class Schedule:
    """A respaced diffusion schedule; all arrays float64 [K] except `timesteps` (int64 [K])."""

    timesteps: np.ndarray  # original timesteps kept, ascending, t_0 = 0 … t_{K−1} = N−1
    betas: np.ndarray  # β'_i, respaced
    alphas_cumprod: np.ndarray  # ᾱ_{t_i}
    alphas_cumprod_prev: np.ndarray  # ᾱ_{t_{i−1}}, 1 for i = 0
    sqrt_recip_alphas_cumprod: np.ndarray  # √(1/ᾱ)
    sqrt_recipm1_alphas_cumprod: np.ndarray  # √(1/ᾱ − 1)
    posterior_variance: np.ndarray  # β̃ = β'(1 − ᾱ_prev)/(1 − ᾱ)
    posterior_log_variance_clipped: np.ndarray  # log β̃ with entry 0 replaced by entry 1
    posterior_mean_coef1: np.ndarray  # multiplies x̂₀
    posterior_mean_coef2: np.ndarray  # multiplies x_t
    prediction_type: str  # "epsilon" | "v"
    variance_type: str  # "learned_range" | "fixed_small"
    num_timesteps: int  # N, the original (training) length

    @property
    def steps(self) -> int:
        """K, the number of sampling steps."""
        return int(self.timesteps.shape[0])

    @property
    def log_betas(self) -> np.ndarray:
        """log β', the upper end of the learned-range variance interpolation."""
        return np.log(self.betas)


def make_schedule(
    steps: int,
    *,
    num_timesteps: int = 1000,
    beta_schedule: str = "linear",
    prediction_type: str = "epsilon",
    variance_type: str = "learned_range",
) -> Schedule:
    """Build the K-step respaced schedule over an N-step training schedule."""
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    check_choice("variance_type", variance_type, VARIANCE_TYPES)
    n = check_int("num_timesteps", num_timesteps, 2, None)
    k = check_int("steps", steps, 1, n)

    full_ac = np.cumprod(1.0 - _linear_betas(n))  # [N]
    timesteps = respaced_timesteps(n, k)  # [K]
    ac = full_ac[timesteps]
    ac_prev = np.append(1.0, ac[:-1])
    betas = 1.0 - ac / ac_prev

    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    if k > 1:
        post_log_var = np.log(np.append(post_var[1], post_var[1:]))
    else:
        post_log_var = np.log(betas)  # the lone step has β̃ = 0; see module docstring
    return Schedule(
        timesteps=timesteps,
        betas=betas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1.0),
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_var,
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac),
        prediction_type=prediction_type,
        variance_type=variance_type,
        num_timesteps=n,
    )


def respaced_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """The kept original timesteps, int64 [K] ascending; K = 1 keeps N−1 (see module docstring)."""
    n = check_int("num_timesteps", num_timesteps, 1, None)
    k = check_int("steps", steps, 1, n)
    if k == 1:
        return np.array([n - 1], dtype=np.int64)
    stride = (n - 1) / (k - 1)
    kept, cur = [], 0.0
    for _ in range(k):
        kept.append(round(cur))
        cur += stride
    return np.array(kept, dtype=np.int64)


def _linear_betas(n: int) -> np.ndarray:
    """Linear betas [N] float64, scaled by 1000/N so any N spans the same noise range."""
    scale = 1000.0 / n
    beta_start, beta_end = scale * 1e-4, scale * 0.02
    if beta_end >= 1.0:
        raise InputError(
            f"num_timesteps={n} gives a final linear beta of {beta_end:g}; it must be < 1, "
            "so the linear schedule needs num_timesteps >= 21"
        )
    return np.linspace(beta_start, beta_end, n, dtype=np.float64)
