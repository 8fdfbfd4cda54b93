"""DPM-Solver++(2M): data-prediction multistep solver, 2nd order after the first step, 1st order at the last.

η = 0 solves the probability-flow ODE (deterministic). η > 0 blends in the SDE form of the same solver
(η = 1 is DPM-Solver++(2M) SDE): part of the state is replaced by fresh noise every step, which corrects
model error instead of carrying it along the ODE trajectory.
"""
from __future__ import annotations

import math

import numpy as np

from vdt_runtime.samplers._common import Model, no_options
from vdt_runtime.settings import check_eta
from vdt_runtime.schedule import Schedule


def sample(denoise, x_T, schedule: Schedule, *, rng, mask=None, x_given=None, callback=None,
           eta: float = 0.0, **opts) -> np.ndarray:
    """Run K solver steps over the schedule's timesteps (descending) to ᾱ = 1; float32 [B,T,C,h,w]."""
    no_options("dpmpp", opts)
    eta = check_eta(eta)
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
            h = float(lam[i - 1] - lam[i])
            d = x0
            if x0_prev is not None:
                r = h_prev / h
                d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
            alpha_t, sigma_t, sigma_s = math.sqrt(ac[i - 1]), math.sqrt(1.0 - ac[i - 1]), math.sqrt(1.0 - ac[i])
            # x_t = (σ_t/σ_s)·e^{−ηh}·x_s + α_t·(1 − e^{−(1+η)h})·D + σ_t·√(1 − e^{−2ηh})·z
            x = (sigma_t / sigma_s * math.exp(-eta * h)) * x - (alpha_t * math.expm1(-(1.0 + eta) * h)) * d
            if eta > 0.0:
                x = x + (sigma_t * math.sqrt(-math.expm1(-2.0 * eta * h))) * model.noise()
            x0_prev, h_prev = x0, h
        model.step_done(step, x)
    return model.composite(x)
