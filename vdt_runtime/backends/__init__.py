"""Backend choice, compute precision and options: `plan()` decides, `open_backend()` opens one stage.

One module per backend family, imported only when chosen (BACKENDS). Each exposes PRECISIONS, OPTIONS,
available(backend), precisions(bundle, stage, backend) (default first) and open(bundle, stage, backend,
precision, options); see base.py for the Backend object they return.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping

from vdt_runtime.backends.base import Backend, check_options, nvidia_gpus
from vdt_runtime.bundle import STAGES, Bundle
from vdt_runtime.errors import BackendError, InputError
from vdt_runtime.settings import PRECISIONS

# backend choice -> module implementing it
BACKENDS = {
    "cpu": "vdt_runtime.backends.ort",
    "cuda": "vdt_runtime.backends.ort",
    "ort-tensorrt": "vdt_runtime.backends.ort",
    "tensorrt": "vdt_runtime.backends.tensorrt",  # native engines (needs tensorrt, cuda-python and a GPU)
    "openvino": "vdt_runtime.backends.openvino",
}
CHOICES = ("auto", *BACKENDS)
# backend="auto": candidates (backend, precision), fastest first, at LOSSLESS precisions only; an explicit
# precision goes to the first candidate backend that runs it. On a machine with an NVIDIA GPU onnxruntime gets its
# best providers ("ort-auto": TensorRT, CUDA, CPU, whichever load, quietly; internal, not a choice users name).
# Lossless, by the rule in benchmarks/eval_physics.py --compare: on the default eval the paired difference against
# fp32 is not significantly worse (2 s.e.) in position error or PSNR. bf16 fails it on the default model
# (PSNR -0.014 ± 0.006 dB over the default eval's 64 clips, BENCHMARKS.md §7), so auto never picks bf16; int8
# and fp16 are never lossless. On the CPU, onnxruntime's fused fp32 graph and OpenVINO fp32 are within noise of
# each other (§7); onnxruntime comes first (it is always installed), OpenVINO when the options are OpenVINO's.
_AUTO_GPU = (("ort-auto", "fp32"),)
_AUTO_CPU = (("cpu", "fp32"), ("openvino", "fp32"))


@dataclass(frozen=True)
class Plan:
    """What Pipeline.load opens: one backend choice, a precision per stage, its options, and why (auto)."""

    backend: str
    precisions: dict[str, str]
    options: dict[str, Any]
    chosen: str | None = None  # auto only: what it picked and why


def _module(backend: str):
    return importlib.import_module(BACKENDS.get(backend, "vdt_runtime.backends.ort"))


def available(backend: str) -> str | None:
    """None when `backend` can be used on this machine, else a one-line reason."""
    return None if backend == "auto" else _module(backend).available(backend)


def runnable(bundle: Bundle, backend: str, stages=STAGES) -> dict[str, tuple[str, ...]]:
    """Stage -> the precisions `backend` can run for this bundle here, default first ({} if unavailable)."""
    if backend == "auto":
        return {s: tuple(dict.fromkeys(p for b, _ in _auto_candidates() for p in runnable(bundle, b, (s,))[s]))
                for s in stages}
    if available(backend) is not None:
        return {}
    module = _module(backend)
    return {s: tuple(module.precisions(bundle, s, backend)) for s in stages}


def plan(bundle: Bundle, backend: str = "auto", precision: str | None = None,
         options: Mapping[str, Any] | None = None, stages=STAGES) -> Plan:
    """Resolve a backend choice ("auto" included), the precision of each stage and the options.

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


def _plan(bundle, backend, precision, options, can) -> Plan:
    missing = [s for s, ps in can.items() if not ps]
    if missing:
        raise InputError(f"backend {backend!r} cannot run stage(s) {', '.join(missing)} of this bundle "
                         f"(files: {', '.join(f'{s}: {list(bundle.precisions(s))}' for s in missing)})")
    merged = check_options(backend, options, _module(backend).OPTIONS)
    return Plan(backend, {s: precision if precision in ps else ps[0] for s, ps in can.items()}, merged)


def open_backend(bundle: Bundle, stage: str, backend: str = "cpu", precision: str | None = None,
                 options: Mapping[str, Any] | None = None) -> Backend:
    """A ready Backend for one `stage` (an explicit precision the stage can't run is refused)."""
    p = plan(bundle, backend, precision, options, stages=(stage,))
    return _module(p.backend).open(bundle, stage, p.backend, p.precisions[stage], p.options)


def _check_choice(backend) -> None:
    if not isinstance(backend, str) or backend not in CHOICES:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(CHOICES)}")


def _auto_candidates() -> tuple[tuple[str, str], ...]:
    from vdt_runtime.backends.ort import CPU, available_providers

    gpu = nvidia_gpus() > 0 and set(available_providers()) - {CPU}
    return tuple((b, p) for b, p in (_AUTO_GPU if gpu else _AUTO_CPU) if available(b) is None)


def _auto(bundle: Bundle, precision: str | None, options, stages) -> Plan:
    """The first candidate that takes the given option keys and runs the precision (default: its lossless one)."""
    keys = set(options or {})
    tried = []
    for backend, lossless in _auto_candidates():
        if not keys <= set(_module(backend).OPTIONS):
            tried.append(f"{backend} (takes no {', '.join(sorted(keys - set(_module(backend).OPTIONS)))})")
            continue
        want = precision or lossless
        can = runnable(bundle, backend, stages)
        if not any(want in can[s] for s in stages):
            tried.append(f"{backend} (cannot run {want})")
            continue
        p = _plan(bundle, backend, want, options, can)
        why = "asked for" if precision else "the fastest lossless choice measured for this kind of machine"
        name = "onnxruntime with its best GPU providers" if backend == "ort-auto" else repr(backend)
        return Plan(backend, p.precisions, p.options, f"auto chose {name} at {want}: {why}")
    raise InputError(f"backend 'auto' found nothing that runs precision {precision or 'fp32'!r} with options "
                     f"{sorted(keys)}; tried: {', '.join(tried)}")


__all__ = ["BACKENDS", "CHOICES", "PRECISIONS", "Backend", "Plan", "available", "open_backend", "plan", "runnable"]
