"""DDIM sampler (η ≥ 0; η = 0 is deterministic) on the respaced schedule."""
from __future__ import annotations

import math

import numpy as np

from vdt_runtime.samplers._common import Model, no_options
from vdt_runtime.settings import check_eta
from vdt_runtime.schedule import Schedule


def sample(denoise, x_T, schedule: Schedule, *, rng, mask=None, x_given=None, callback=None,
           eta: float = 0.0, **opts) -> np.ndarray:
    """Run K DDIM steps from x_T [B,T,C,h,w]; returns float32 [B,T,C,h,w], given cells exact."""
    no_options("ddim", opts)
    eta = check_eta(eta)
    model = Model(denoise, x_T, schedule, rng=rng, mask=mask, x_given=x_given, callback=callback)
    s, x = schedule, model.x_T
    for step, i in enumerate(reversed(range(s.steps))):
        p = model(x, i)
        a, a_prev = float(s.alphas_cumprod[i]), float(s.alphas_cumprod_prev[i])
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))  # 0 at i = 0
        # η > 1 can push σ² past 1 − ᾱ_prev; the direction term then vanishes rather than go imaginary
        x = math.sqrt(a_prev) * p.x0 + math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * p.eps
        if sigma > 0.0:
            x = x + sigma * model.noise()
        model.step_done(step, x)
    return model.composite(x)
