"""Samplers, one per file, one signature: sample(denoise, x_T, schedule, *, rng, mask, x_given, callback, **opts).

`rng` is a numpy.random.Generator (noise by `standard_normal`), a list of Generators, one per batch item (item b's
noise from the b-th: what `Pipeline.generate` uses, so a request's frames do not depend on its batch), or a
function shape -> N(0, 1) array that the sampler calls once per noise draw, in sampling order (tests replay
recorded noise through it).
"""
from __future__ import annotations

from typing import Callable

from vdt_runtime import settings
from vdt_runtime.samplers import ddim, ddpm, dpmpp
from vdt_runtime.samplers._common import per_item_normal, standard_normal

__all__ = ["SAMPLERS", "get_sampler", "per_item_normal", "standard_normal"]

SAMPLERS: dict[str, Callable] = {"ddpm": ddpm.sample, "ddim": ddim.sample, "dpmpp": dpmpp.sample}
assert tuple(SAMPLERS) == settings.SAMPLERS, "vdt_runtime.settings.SAMPLERS names the registered samplers"


def get_sampler(name: str) -> Callable:
    """The sample function registered under `name` (InputError naming the known ones)."""
    return SAMPLERS[settings.check_sampler(name)]
