"""Golden cases for a bundle (golden.npz + the manifest's "golden" section): small input -> output pairs made by the
torch model in fp32 per stage, one short end-to-end predict through the runtime's own sampler, and per-precision
tolerances set from the errors measured on every CPU backend and precision this machine runs, with margin.

Inputs are stored as float16 (exactly representable in fp32, half the bytes); references as float32. The runtime
replays them with vdt_runtime.selftest (`vdt selftest`, `Pipeline.load(..., selftest=True)`).
"""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone

import numpy as np
import torch
import torch.nn as nn

from vdt_runtime._atomic import atomic_path
from vdt_runtime.bundle import STAGES, Bundle
from vdt_runtime.errors import InputError
from vdt_runtime.selftest import E2E, Golden, end_to_end, run_selftest

from .models import VDT
from .vae import VAEDecoder, VAEEncoder

GOLDEN_FILE = "golden.npz"
DENOISER_FRAMES = (2, 3)  # two frame counts (clipped to the bundle's max_frames)
TIMESTEP_FRACTIONS = (0.25, 1.0)  # two timesteps: a quarter into the schedule and its noisiest end
END_TO_END = {"sampler": "ddpm", "steps": 4, "eta": 0.0, "seed": 0, "frames": 3, "cond": 1}
MARGIN = 4.0  # tolerance = MARGIN x the largest error measured for that precision and check ...
# ... but at least FLOOR x the reference's own scale (max |ref| for max abs, mean |ref| for mean abs), so fp32 is
# not held to one CPU's rounding on another device's kernels, and a precision is never held tighter than it can be
FLOOR = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 1e-2, "int8": 1e-2}
# the weights a golden set is made from must reproduce the bundle's fp32 ONNX (onnxruntime, standard graph) to this
# fraction of the reference's max |value|: rounding is ~1e-6, other weights are ~1
REPRODUCE = 1e-3
# CPU backends and options measured for the tolerances (every precision each runs for this bundle here)
MEASURE = (("cpu", {"fused": True}), ("cpu", {"fused": False}), ("openvino", {}))


def _half(x: np.ndarray) -> np.ndarray:
    """Inputs are kept as float16 values (exact in fp32)."""
    return np.asarray(x, np.float32).astype(np.float16)


def make_cases(bundle: Bundle, vdt: VDT, vae: nn.Module, seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """The golden arrays and the manifest section (without tolerances) for `bundle`, from the torch models."""
    rng = np.random.default_rng(seed)
    vdt, scale = vdt.eval(), bundle.vae["scale_factor"]
    encoder, decoder = VAEEncoder(vae, scale).eval(), VAEDecoder(vae, scale).eval()
    den, enc, dec = (bundle.stage(s) for s in STAGES)
    arrays: dict[str, np.ndarray] = {}
    n = bundle.diffusion["num_timesteps"]
    frames = sorted({min(t, bundle.max_frames) for t in DENOISER_FRAMES})
    i = 0
    with torch.no_grad():
        for t in frames:
            latents = _half(rng.standard_normal((1, *bundle.latent_shape(t))))
            for frac in TIMESTEP_FRACTIONS:
                step = np.array([round(frac * (n - 1))], np.float32)
                out = vdt(torch.from_numpy(latents.astype(np.float32)), torch.from_numpy(step)).numpy()
                arrays.update({f"denoiser.{i}.{den.inputs[0].name}": latents, f"denoiser.{i}.{den.inputs[1].name}": step,
                               f"denoiser.{i}.{den.outputs[0].name}": out})
                i += 1
        size = bundle.image_size
        block = max(1, size // 8)  # a blocky image in [-1, 1]: smooth enough to be image-like, any size
        coarse = rng.uniform(-1, 1, (1, 3, -(-size // block), -(-size // block)))
        image = _half(np.repeat(np.repeat(coarse, block, 2), block, 3)[:, :, :size, :size])
        latent = encoder(torch.from_numpy(image.astype(np.float32))).numpy()
        arrays.update({f"vae_encoder.0.{enc.inputs[0].name}": image, f"vae_encoder.0.{enc.outputs[0].name}": latent})
        dec_in = _half(latent)
        arrays.update({f"vae_decoder.0.{dec.inputs[0].name}": dec_in,
                       f"vae_decoder.0.{dec.outputs[0].name}":
                           decoder(torch.from_numpy(dec_in.astype(np.float32))).numpy()})
        e2e = {**END_TO_END, "frames": min(END_TO_END["frames"], bundle.max_frames)}
        e2e["cond"] = min(e2e["cond"], e2e["frames"] - 1)
        x_given = np.zeros((1, *bundle.latent_shape(e2e["frames"])), np.float32)
        x_given[0, : e2e["cond"]] = latent[0]
        mask = np.ones((e2e["frames"], bundle.latent_size, bundle.latent_size), np.float32)
        mask[: e2e["cond"]] = 0
        arrays.update({f"{E2E}.x_given": x_given, f"{E2E}.mask": mask})
        section = {"file": GOLDEN_FILE, "cases": {"denoiser": i, "vae_encoder": 1, "vae_decoder": 1},
                   "end_to_end": e2e}
        arrays[f"{E2E}.latents"] = end_to_end(bundle, section, arrays, lambda x, t: vdt(
            torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(t))).numpy())
    return arrays, section


def measure(bundle: Bundle, golden: Golden) -> list[dict]:
    """Errors of every CPU backend, graph and precision that runs here: one row per distinct (backend, graph,
    precision, check), naming the providers that ran it."""
    from vdt_runtime.backends import available, runnable
    from vdt_runtime.pipeline import Pipeline

    rows: dict[tuple, dict] = {}
    for backend, options in MEASURE:
        if available(backend) is not None:
            continue
        for precision in dict.fromkeys(p for ps in runnable(bundle, backend).values() for p in ps):
            with Pipeline.load(bundle.path, backend=backend, precision=precision, options=options) as pipe:
                report = run_selftest(pipe.bundle, pipe.backends, golden=golden)
                for c in report.checks:
                    ran = pipe.backends["denoiser" if c.stage == E2E else c.stage]
                    key = (backend, ran.graph, c.precision, c.stage)
                    rows.setdefault(key, {"backend": backend, "graph": ran.graph, "precision": c.precision,
                                          "check": c.stage, "max_abs": c.max_abs, "mean_abs": c.mean_abs,
                                          "providers": ", ".join(ran.providers)})
    return list(rows.values())


def tolerances(rows: list[dict], bundle: Bundle, arrays: dict[str, np.ndarray]) -> dict:
    """{precision: {check: {max_abs, mean_abs}}}: MARGIN x the worst measured, at least FLOOR x the reference scale."""
    refs = {E2E: arrays[f"{E2E}.latents"].ravel()}
    for stage in STAGES:
        out = bundle.stage(stage).outputs[0].name
        refs[stage] = np.concatenate([a.ravel() for k, a in arrays.items()
                                      if k.startswith(f"{stage}.") and k.endswith(f".{out}")])
    result: dict = {}
    for r in rows:
        if not (np.isfinite(r["max_abs"]) and np.isfinite(r["mean_abs"])):
            continue
        ref, floor = np.abs(refs[r["check"]].astype(np.float64)), FLOOR[r["precision"]]
        tol = result.setdefault(r["precision"], {}).setdefault(
            r["check"], {"max_abs": floor * float(ref.max()), "mean_abs": floor * float(ref.mean())})
        tol["max_abs"] = max(tol["max_abs"], MARGIN * r["max_abs"])
        tol["mean_abs"] = max(tol["mean_abs"], MARGIN * r["mean_abs"])
    return {p: {c: {k: max(float(f"{v:.3g}"), 1e-12) for k, v in t.items()} for c, t in checks.items()}
            for p, checks in result.items()}


def check_reproduces(bundle: Bundle, golden: Golden) -> None:
    """InputError unless the bundle's fp32 ONNX (onnxruntime CPU, standard graph) reproduces the torch references:
    golden cases from other weights than the bundle's would make every later self-test meaningless."""
    from vdt_runtime.pipeline import Pipeline

    with Pipeline.load(bundle.path, backend="cpu", precision="fp32", options={"fused": False}) as pipe:
        report = run_selftest(pipe.bundle, pipe.backends, golden=golden, with_end_to_end=False)
    for c in report.checks:
        key = f"{c.stage}.0.{bundle.stage(c.stage).outputs[0].name}"
        limit = REPRODUCE * float(np.abs(golden.arrays[key]).max())
        if c.nonfinite or c.max_abs > limit:
            raise InputError(f"these weights do not reproduce bundle {bundle.name!r}'s fp32 outputs: stage "
                             f"{c.stage} max abs error {c.max_abs:.3g} against its ONNX (allowed {limit:.3g}); give "
                             "the checkpoint the bundle was exported from")


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        name = ""
    return name or platform.processor() or platform.machine()


def make_golden(bundle: Bundle, vdt: VDT, vae: nn.Module | None, *, seed: int = 0) -> dict:
    """Make the golden cases of a loaded bundle (the caller verifies files it did not just write and hash) from
    `vdt` + `vae` (refused unless they reproduce the bundle's fp32 ONNX), write golden.npz (atomically) and measure
    every CPU backend and precision here. Returns the manifest's "golden" section; the caller records it
    (vdt_export.bundle writes the manifest)."""
    if vae is None:
        raise InputError("golden cases need the VAE too: give a checkpoint folder, or --vae / --vae-config")
    arrays, section = make_cases(bundle, vdt, vae, seed)
    check_reproduces(bundle, Golden(arrays, {**section, "tolerances": {}}))
    with atomic_path(bundle.path / GOLDEN_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return _measured(bundle, Golden(arrays, section))


def remeasure(bundle_dir: str | os.PathLike) -> dict | None:
    """The "golden" section of a bundle with its tolerances measured again (after `vdt-export quantize` or `fp16`
    added a precision); None when the bundle has no golden cases."""
    from vdt_runtime.selftest import load_golden

    bundle = Bundle.load(bundle_dir)
    golden = load_golden(bundle)
    return None if golden is None else _measured(bundle, golden)


def _measured(bundle: Bundle, golden: Golden) -> dict:
    """The section of `golden` with tolerances from measuring it on every CPU backend and precision here."""
    section = {k: golden.section[k] for k in ("file", "cases", "end_to_end")}
    rows = measure(bundle, Golden(golden.arrays, {**section, "tolerances": {}}))
    section["tolerances"] = tolerances(rows, bundle, golden.arrays)
    section["measured"] = {"machine": _machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                           "margin": MARGIN, "floor": FLOOR, "runs": rows}
    return section


__all__ = ["GOLDEN_FILE", "make_golden", "make_cases", "measure", "remeasure", "tolerances"]
