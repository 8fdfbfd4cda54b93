"""DPM-Solver++(2M): data-prediction multistep solver, 2nd order after the first step, 1st order at the last."""
from __future__ import annotations

import math

import numpy as np

from vdt_runtime.samplers._common import Model, no_options
from vdt_runtime.schedule import Schedule


def sample(denoise, x_T, schedule: Schedule, *, rng, mask=None, x_given=None, callback=None, **opts) -> np.ndarray:
    """Run K solver steps over the schedule's timesteps (descending) to ᾱ = 1; float32 [B,T,C,h,w]."""
    no_options("dpmpp", opts)
    model = Model(denoise, x_T, schedule, rng=rng, mask=mask, x_given=x_given, callback=callback)
    s, x = schedule, model.x_T
    ac = s.alphas_cumprod
    lam = 0.5 * np.log(ac / (1.0 - ac))  # λ = log(α/σ), α = √ᾱ, σ = √(1 − ᾱ)
    x0_prev, h_prev = None, None
    for step, i in enumerate(reversed(range(s.steps))):
        x0 = model(x, i).x0
        if i == 0:
            x = x0  # σ → 0: the first-order step lands exactly on x̂₀
        else:
            h = lam[i - 1] - lam[i]
            d = x0
            if x0_prev is not None:
                r = h_prev / h
                d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
            alpha_t, sigma_t, sigma_s = math.sqrt(ac[i - 1]), math.sqrt(1.0 - ac[i - 1]), math.sqrt(1.0 - ac[i])
            x = (sigma_t / sigma_s) * x - alpha_t * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        model.step_done(step, x)
    return model.composite(x)
