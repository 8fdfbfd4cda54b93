"""Samplers, one per file, one signature: sample(denoise, x_T, schedule, *, rng, mask, x_given, callback, **opts).

`rng` is a numpy.random.Generator (noise by `standard_normal`), or a function shape -> N(0, 1) array that the
sampler calls once per noise draw, in sampling order (tests replay recorded noise through it).
"""
from __future__ import annotations

from typing import Callable

from vdt_runtime.errors import InputError
from vdt_runtime.samplers import ddim, ddpm, dpmpp
from vdt_runtime.samplers._common import standard_normal

__all__ = ["SAMPLERS", "get_sampler", "standard_normal"]

SAMPLERS: dict[str, Callable] = {"ddpm": ddpm.sample, "ddim": ddim.sample, "dpmpp": dpmpp.sample}


def get_sampler(name: str) -> Callable:
    """The sample function registered under `name`."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}") from None
