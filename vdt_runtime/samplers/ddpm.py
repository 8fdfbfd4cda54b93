"""DDPM ancestral sampler, as the official VDT sampler: posterior mean, learned-range variance, no clipping."""
from __future__ import annotations

import math

import numpy as np

from vdt_runtime._xp import namespace
from vdt_runtime.samplers._common import Model, no_options
from vdt_runtime.schedule import Schedule


def sample(denoise, x_T, schedule: Schedule, *, rng, mask=None, x_given=None, callback=None, **opts) -> np.ndarray:
    """Run K ancestral steps from x_T [B,T,C,h,w]; returns float32 [B,T,C,h,w], given cells exact."""
    no_options("ddpm", opts)
    model = Model(denoise, x_T, schedule, rng=rng, mask=mask, x_given=x_given, callback=callback)
    s, x = schedule, model.x_T
    for step, i in enumerate(reversed(range(s.steps))):
        p = model(x, i)
        mean = float(s.posterior_mean_coef1[i]) * p.x0 + float(s.posterior_mean_coef2[i]) * x
        if i > 0:  # no noise at the final step
            x = mean + _std(s, p.var, i) * model.noise()
        else:
            x = mean
        model.step_done(step, x)
    return model.composite(x)


def _std(s: Schedule, var: np.ndarray | None, i: int):
    """σ = exp(½·log σ²), log σ² = f·log β + (1 − f)·log β̃ with f = (v + 1)/2; for fixed_small the clipped
    log β̃, as a Python float so a float32 state stays float32."""
    min_log = float(s.posterior_log_variance_clipped[i])
    if var is None:
        return math.exp(0.5 * min_log)
    frac = (var + 1.0) / 2.0
    return namespace(var).exp(0.5 * (frac * math.log(s.betas[i]) + (1.0 - frac) * min_log))
