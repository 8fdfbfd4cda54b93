"""How far one ONNX file of a stage is from another on the same random stage-shaped inputs (onnxruntime CPU): what
`vdt-export quantize` and `fp16` print, and what `fp16` holds against its tolerance before it writes anything."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vdt_runtime.errors import InputError

from .bundle import read_manifest


def stage_error(spec: dict, reference: Path, candidate: Path, *, trials: int = 4, seed: int = 0) -> dict:
    """`candidate` against `reference` (two graphs of the stage whose manifest entry is `spec`) on `trials` random
    feeds: max / mean abs difference, the reference output's max / mean |value|, their ratios (rel_max, rel_mean)
    and the providers that really ran."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (reference, candidate)]
    reader = CalibrationReader(spec, trials, seed)
    worst, total, count, ref_mean, ref_max = 0.0, 0.0, 0, 0.0, 0.0
    while (feed := reader.get_next()) is not None:
        ref = sessions[0].run(None, feed)[0]
        diff = np.abs(sessions[1].run(None, feed)[0] - ref)
        worst, total, count = max(worst, float(diff.max())), total + float(diff.sum()), count + diff.size
        ref_mean, ref_max = ref_mean + float(np.abs(ref).mean()) / trials, max(ref_max, float(np.abs(ref).max()))
    mean = total / count
    return {"max_abs": worst, "mean_abs": mean, "fp32_mean_abs": ref_mean, "fp32_max_abs": ref_max,
            "rel_max": worst / ref_max, "rel_mean": mean / ref_mean, "providers": sessions[1].get_providers()}


def precision_error(bundle_dir: str | os.PathLike, *, precision: str = "int8", stage: str = "denoiser",
                    trials: int = 4, seed: int = 0) -> dict:
    """stage_error of a bundle stage's `precision` file against its fp32 file."""
    bundle_dir = Path(bundle_dir)
    spec = read_manifest(bundle_dir)["stages"][stage]
    if precision not in spec["files"]:
        raise InputError(f"bundle has no {precision!r} {stage}; available: {sorted(spec['files'])}")
    return stage_error(spec, bundle_dir / spec["files"]["fp32"], bundle_dir / spec["files"][precision],
                       trials=trials, seed=seed)


class CalibrationReader:
    """onnxruntime CalibrationDataReader: `batches` random feeds shaped like a stage's declared inputs (batch 1,
    other dynamic axes at their declared opt): standard-normal latents, images uniform in [-1, 1], timesteps
    spread over 0…999."""

    def __init__(self, stage: dict, batches: int, seed: int):
        rng = np.random.default_rng(seed)
        axes = {name: 1 if name == "batch" else r["opt"] for name, r in stage["dynamic_axes"].items()}
        shapes = {s["name"]: [axes.get(d, d) if isinstance(d, str) else d for d in s["shape"]] for s in stage["inputs"]}
        self._feeds = iter([{name: _random_input(rng, name, shape, t) for name, shape in shapes.items()}
                            for t in np.linspace(0, 999, batches).round()])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def _random_input(rng: np.random.Generator, name: str, shape: list[int], t: float) -> np.ndarray:
    if name == "timestep":
        return np.full(shape, t, np.float32)
    if name == "images":
        return rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    return rng.standard_normal(shape, dtype=np.float32)

