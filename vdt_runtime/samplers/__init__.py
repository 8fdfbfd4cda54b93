"""Samplers, one per file, one signature: sample(denoise, x_T, schedule, *, rng, mask, x_given, callback, **opts).

`rng` is a numpy.random.Generator (noise by `standard_normal`), a list of Generators, one per batch item (item b's
noise from the b-th: what `Pipeline.generate` uses, so a request's frames do not depend on its batch), or a
function shape -> N(0, 1) array that the sampler calls once per noise draw, in sampling order (tests replay
recorded noise through it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from vdt_runtime import settings
from vdt_runtime.samplers import ddim, ddpm, dpmpp
from vdt_runtime.samplers._common import per_item_normal, standard_normal
from vdt_runtime.schedule import Schedule, make_schedule

__all__ = ["SAMPLERS", "SamplerRun", "get_sampler", "per_item_normal", "prepare", "standard_normal"]

SAMPLERS: dict[str, Callable] = {"ddpm": ddpm.sample, "ddim": ddim.sample, "dpmpp": dpmpp.sample}
assert tuple(SAMPLERS) == settings.SAMPLERS, "vdt_runtime.settings.SAMPLERS names the registered samplers"


def get_sampler(name: str) -> Callable:
    """The sample function registered under `name` (InputError naming the known ones)."""
    return SAMPLERS[settings.check_sampler(name)]


@dataclass(frozen=True)
class SamplerRun:
    """A sampler ready to run: its function, the schedule respaced to its steps, and its keyword options (eta)."""

    sample: Callable
    schedule: Schedule
    options: dict

    def __call__(self, denoise, x_T, **kw):
        return self.sample(denoise, x_T, self.schedule, **kw, **self.options)


def prepare(sampling: settings.Sampling, diffusion: Mapping) -> SamplerRun:
    """`sampling` (sampler, steps, eta) on a bundle's diffusion settings (its manifest "diffusion" section)."""
    sampler, steps, eta = sampling
    schedule = make_schedule(steps, num_timesteps=diffusion["num_timesteps"], beta_schedule=diffusion["beta_schedule"],
                             prediction_type=diffusion["prediction_type"], variance_type=diffusion["variance_type"])
    return SamplerRun(get_sampler(sampler), schedule, {"eta": eta} if sampler in settings.ETA_SAMPLERS else {})
