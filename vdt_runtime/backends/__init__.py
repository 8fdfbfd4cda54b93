"""Backend choice, compute precision and options, planned once: `plan()` decides everything, `Plan.open()` opens
one stage exactly as planned (Pipeline.load opens every stage from one plan; nothing re-plans).

Each backend family is one Backend subclass registered below by the choices it serves; its heavy library is
imported only when it is used. See base.py for what a family declares.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vdt_runtime.backends.base import Backend, check_options, nvidia_gpus
from vdt_runtime.backends.openvino import OpenVINOBackend
from vdt_runtime.backends.ort import OrtBackend, available_providers
from vdt_runtime.backends.tensorrt import TensorRTBackend
from vdt_runtime.bundle import STAGES, Bundle
from vdt_runtime.errors import BackendError, InputError
from vdt_runtime.settings import PRECISIONS

# backend choice -> the family that serves it
BACKENDS: dict[str, type[Backend]] = {
    "cpu": OrtBackend,  # onnxruntime, CPU provider
    "cuda": OrtBackend,  # onnxruntime, CUDA provider (CPU for what it cannot run)
    "ort-tensorrt": OrtBackend,  # onnxruntime, TensorRT provider (then CUDA, CPU)
    "tensorrt": TensorRTBackend,  # native engines (needs tensorrt, cuda-python and a GPU)
    "openvino": OpenVINOBackend,
}
CHOICES = ("auto", *BACKENDS)
# backend="auto": candidates (backend, precision), fastest first, at LOSSLESS precisions only; an explicit
# precision goes to the first candidate backend that runs it.
# Lossless, by the rule in benchmarks/eval_physics.py --compare: on the default eval the paired difference against
# fp32 is not significantly worse (2 s.e.) in position error or PSNR. bf16 fails it on the default model
# (PSNR -0.014 ± 0.006 dB over the default eval's 64 clips, BENCHMARKS.md §7), so auto never picks bf16; int8
# and fp16 are never lossless. On the CPU, onnxruntime's fused fp32 graph and OpenVINO fp32 are within noise of
# each other (§7); onnxruntime comes first (it is always installed), OpenVINO when the options are OpenVINO's.
# On a machine whose driver reports an NVIDIA GPU and whose onnxruntime offers CUDA or TensorRT, onnxruntime's CUDA
# provider comes first: fp32 with TF32 off is the lossless GPU choice. onnxruntime's TensorRT provider builds
# engines at load (minutes, cached) and is never chosen by auto unless CUDA is missing from this onnxruntime;
# the native "tensorrt" backend needs an engine build and a named precision, so it is asked for by name.
_AUTO_GPU = (("cuda", "fp32"), ("ort-tensorrt", "fp32"))
_AUTO_CPU = (("cpu", "fp32"), ("openvino", "fp32"))


@dataclass(frozen=True)
class Plan:
    """What opens: one backend choice, a precision per stage, the family's checked options, what its runtime is
    asked for (onnxruntime: the provider list), and why (auto). Fully decided: `open` only builds."""

    backend: str
    precisions: Mapping[str, str]
    options: Any  # the family's frozen Options
    providers: tuple[str, ...] = ()
    chosen: str | None = None  # auto only: what it picked and why

    @property
    def family(self) -> type[Backend]:
        return BACKENDS[self.backend]

    def open(self, bundle: Bundle, stage: str) -> Backend:
        """The backend for one planned `stage`."""
        if stage not in self.precisions:
            raise InputError(f"stage {stage!r} is not in this plan (it plans {', '.join(self.precisions)})")
        return self.family.open(bundle, stage, self)

    def open_all(self, bundle: Bundle) -> dict[str, Backend]:
        """Every planned stage opened; on a failure the ones already open are closed."""
        opened: dict[str, Backend] = {}
        try:
            for stage in self.precisions:
                opened[stage] = self.open(bundle, stage)
        except BaseException:
            for b in opened.values():
                b.close()
            raise
        return opened


def available(backend: str) -> str | None:
    """None when `backend` can be used on this machine, else a one-line reason."""
    _check_choice(backend)
    return None if backend == "auto" else BACKENDS[backend].available(backend)


def runnable(bundle: Bundle, backend: str, stages=STAGES) -> dict[str, tuple[str, ...]]:
    """Stage -> the precisions `backend` can run for this bundle here, default first ({} if unavailable)."""
    if backend == "auto":
        return {s: tuple(dict.fromkeys(p for b, _ in _auto_candidates() for p in runnable(bundle, b, (s,))[s]))
                for s in stages}
    if available(backend) is not None:
        return {}
    return {s: tuple(BACKENDS[backend].precisions(bundle, s, backend)) for s in stages}


def plan(bundle: Bundle, backend: str = "auto", precision: str | None = None,
         options: Mapping[str, Any] | None = None, stages=STAGES) -> Plan:
    """Resolve a backend choice ("auto" included), the precision of each stage, the options and the providers.

    An explicit precision runs on every stage that can run it (the others keep their default); one that no
    stage can run is refused, naming what the backend runs. Unknown option keys are refused by the backend.
    """
    _check_choice(backend)
    if precision is not None and (not isinstance(precision, str) or precision not in PRECISIONS):
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if backend == "auto":
        return _auto(bundle, precision, options, stages)
    reason = available(backend)
    if reason is not None:
        raise BackendError(f"backend {backend!r} is not available here: {reason}")
    can = runnable(bundle, backend, stages)
    if precision is not None and not any(precision in can[s] for s in stages):
        runs = list(dict.fromkeys(p for s in stages for p in can[s]))
        raise InputError(f"backend {backend!r} cannot run precision {precision!r}; it runs: "
                         f"{', '.join(runs) or 'nothing'} (this bundle, this machine)")
    return _plan(bundle, backend, precision, options, can)


def _plan(bundle, backend, precision, options, can, chosen=None) -> Plan:
    missing = [s for s, ps in can.items() if not ps]
    if missing:
        raise InputError(f"backend {backend!r} cannot run stage(s) {', '.join(missing)} of this bundle "
                         f"(files: {', '.join(f'{s}: {list(bundle.precisions(s))}' for s in missing)})")
    family = BACKENDS[backend]
    precisions = {s: precision if precision in ps else ps[0] for s, ps in can.items()}
    checked = family.resolve(backend, check_options(backend, options, family))
    return Plan(backend, precisions, checked, family.provider_list(backend), chosen)


def open_backend(bundle: Bundle, stage: str, backend: str = "cpu", precision: str | None = None,
                 options: Mapping[str, Any] | None = None) -> Backend:
    """A ready Backend for one `stage`: plan(..., stages=(stage,)).open(bundle, stage) (an explicit precision the
    stage can't run is refused)."""
    return plan(bundle, backend, precision, options, stages=(stage,)).open(bundle, stage)


def _check_choice(backend) -> None:
    if not isinstance(backend, str) or backend not in CHOICES:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(CHOICES)}")


def machine() -> str:
    """What auto sees here, in one line: the GPUs the driver reports and the providers onnxruntime offers."""
    return (f"the NVIDIA driver reports {nvidia_gpus()} GPU(s); onnxruntime offers "
            f"{', '.join(p.replace('ExecutionProvider', '') for p in available_providers())}")


def _auto_candidates() -> tuple[tuple[str, str], ...]:
    """The GPU choices available here (a GPU choice's `available` asks for an NVIDIA GPU and its provider), else
    the CPU ones."""
    gpu = tuple(c for c in _AUTO_GPU if available(c[0]) is None)
    return gpu or tuple(c for c in _AUTO_CPU if available(c[0]) is None)


def _auto(bundle: Bundle, precision: str | None, options, stages) -> Plan:
    """The first candidate that takes the given option keys and runs the precision (default: its lossless one)."""
    keys = set(options or {}) if isinstance(options, Mapping) or options is None else set()
    tried = []
    for backend, lossless in _auto_candidates():
        takes = set(BACKENDS[backend].option_keys(backend))
        if not keys <= takes:
            tried.append(f"{backend} (takes no {', '.join(sorted(keys - takes))})")
            continue
        want = precision or lossless
        can = runnable(bundle, backend, stages)
        if not any(want in can[s] for s in stages):
            tried.append(f"{backend} (cannot run {want})")
            continue
        why = "asked for" if precision else "the fastest lossless choice measured for this kind of machine"
        return _plan(bundle, backend, want, options, can,
                     chosen=f"auto chose {backend!r} at {want}: {why} ({machine()})")
    raise InputError(f"backend 'auto' found nothing that runs precision {precision or 'fp32'!r} with options "
                     f"{sorted(keys)}; tried: {', '.join(tried) or 'nothing'} ({machine()})")


__all__ = ["BACKENDS", "CHOICES", "PRECISIONS", "Backend", "Plan", "available", "machine", "open_backend", "plan",
           "runnable"]
