"""Samplers, one per file, one signature: sample(denoise, x_T, schedule, *, rng, mask, x_given, callback, **opts).

`rng` is a numpy.random.Generator (noise by `standard_normal`), a list of Generators, one per batch item (item b's
noise from the b-th: what `Pipeline.generate` uses, so a request's frames do not depend on its batch), or a
function shape -> N(0, 1) array that the sampler calls once per noise draw, in sampling order (tests replay
recorded noise through it).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from vdt_runtime.errors import InputError
from vdt_runtime.samplers import ddim, ddpm, dpmpp
from vdt_runtime.samplers._common import check_eta, per_item_normal, standard_normal
from vdt_runtime.schedule import _check_int

__all__ = ["SAMPLERS", "DEFAULT_SAMPLING", "Sampling", "check_sampling", "get_sampler", "parse_sampling",
           "per_item_normal", "standard_normal"]

SAMPLERS: dict[str, Callable] = {"ddpm": ddpm.sample, "ddim": ddim.sample, "dpmpp": dpmpp.sample}
ETA_SAMPLERS = ("ddim", "dpmpp")  # the samplers that take η


class Sampling(NamedTuple):
    """A sampler choice: name, number of denoiser calls (steps) and η."""

    sampler: str
    steps: int
    eta: float = 0.0

    def __str__(self) -> str:
        return f"{self.sampler}, {self.steps} steps" + (f", eta {self.eta:g}" if self.sampler in ETA_SAMPLERS else "")


DEFAULT_SAMPLING = Sampling("ddpm", 50, 0.0)  # the runtime's choice where a bundle recommends none


def get_sampler(name: str) -> Callable:
    """The sample function registered under `name`."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}") from None


def check_sampling(sampler, steps, eta, num_timesteps: int) -> Sampling:
    """A valid Sampling for a schedule of `num_timesteps`, else InputError naming the value and what is allowed."""
    get_sampler(sampler)
    steps = _check_int("steps", steps, 1, int(num_timesteps))
    eta = check_eta(eta)
    if sampler not in ETA_SAMPLERS and eta != 0.0:
        raise InputError(f"eta={eta!r} applies only to samplers {' and '.join(map(repr, ETA_SAMPLERS))}, "
                         f"not {sampler!r}")
    return Sampling(sampler, steps, eta)


def parse_sampling(text: str) -> tuple[str, int, float]:
    """'sampler:steps' or 'sampler:steps:eta' → (sampler, steps, eta); checked by check_sampling, not here."""
    parts = str(text).split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        return parts[0], int(parts[1]), float(parts[2]) if len(parts) == 3 else 0.0
    except ValueError:
        raise InputError(f"expected sampler:steps[:eta] (e.g. ddim:10 or dpmpp:20:1), got {str(text)[:80]!r}") from None
