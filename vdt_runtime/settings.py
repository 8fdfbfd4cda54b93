"""The settings every layer shares, each declared once: compute precisions, the diffusion choices a bundle may
state, and the sampling settings (sampler names, `Sampling`, the default, checks and the CLI/manifest text form).

Only names and checks live here; the samplers themselves (the maths) are in `vdt_runtime.samplers`, which
registers one function per name in SAMPLERS.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

from vdt_runtime.checks import check_int
from vdt_runtime.errors import InputError
from vdt_runtime.limits import shorten

PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # compute precisions; also the keys of a bundle's stage files
BETA_SCHEDULES = ("linear",)
PREDICTION_TYPES = ("epsilon", "v")
VARIANCE_TYPES = ("learned_range", "fixed_small")
SAMPLERS = ("ddpm", "ddim", "dpmpp")  # names; vdt_runtime.samplers.SAMPLERS maps each to its function
ETA_SAMPLERS = ("ddim", "dpmpp")  # the samplers that take η


class Sampling(NamedTuple):
    """A sampler choice: name, number of denoiser calls (steps) and η."""

    sampler: str
    steps: int
    eta: float = 0.0

    def __str__(self) -> str:
        return f"{self.sampler}, {self.steps} steps" + (f", eta {self.eta:g}" if self.sampler in ETA_SAMPLERS else "")


DEFAULT_SAMPLING = Sampling("ddpm", 50, 0.0)  # the runtime's choice where a bundle recommends none


def check_sampler(name) -> str:
    """A known sampler name, else InputError listing them."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise InputError(f"unknown sampler {shorten(name)}; expected one of {', '.join(SAMPLERS)}")
    return name


def check_eta(eta) -> float:
    """η for DDIM / DPM-Solver++: a finite real >= 0."""
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
        raise InputError(f"eta must be a finite number >= 0, got {eta!r}")
    return float(eta)


def check_sampling(sampler, steps, eta, num_timesteps: int) -> Sampling:
    """A valid Sampling for a schedule of `num_timesteps`, else InputError naming the value and what is allowed."""
    check_sampler(sampler)
    steps = check_int("steps", steps, 1, int(num_timesteps))
    eta = check_eta(eta)
    check_eta_applies(sampler, eta)
    return Sampling(sampler, steps, eta)


def check_eta_applies(sampler: str, eta) -> None:
    """InputError when a nonzero η is given to a sampler that takes none (None and 0 are no η)."""
    if sampler not in ETA_SAMPLERS and eta not in (None, 0.0):
        raise InputError(f"eta={shorten(eta)} applies only to samplers {' and '.join(map(repr, ETA_SAMPLERS))}, "
                         f"not {shorten(sampler)}")


def parse_sampling(text: str) -> tuple[str, int, float]:
    """'sampler:steps' or 'sampler:steps:eta' → (sampler, steps, eta); checked by check_sampling, not here."""
    parts = str(text).split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        return parts[0], int(parts[1]), float(parts[2]) if len(parts) == 3 else 0.0
    except ValueError:
        raise InputError(f"expected sampler:steps[:eta] (e.g. ddim:10 or dpmpp:20:1), got {str(text)[:80]!r}") from None


__all__ = ["BETA_SCHEDULES", "DEFAULT_SAMPLING", "ETA_SAMPLERS", "PRECISIONS", "PREDICTION_TYPES", "SAMPLERS",
           "VARIANCE_TYPES", "Sampling", "check_eta", "check_sampler", "check_sampling", "parse_sampling"]
