"""Parity check of a bundle: torch vs onnxruntime on the same random inputs, per stage and per (B, T)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from vdt_runtime.bundle import Bundle
from vdt_runtime.errors import BundleError

from .models import VDT
from .vae import VAEDecoder, VAEEncoder


@dataclass
class Row:
    """One comparison: a stage at one input shape."""

    stage: str
    batch: int
    frames: int | None
    max_abs: float
    mean_abs: float
    ok: bool


@dataclass
class Report:
    """All comparisons, the tolerance and the providers onnxruntime actually used."""

    tol: float
    rows: list[Row] = field(default_factory=list)
    providers: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and all(r.ok for r in self.rows)

    def table(self) -> str:
        lines = [f"{'stage':<16} {'B':>3} {'T':>4} {'max abs err':>12} {'mean abs err':>12}  result (tol {self.tol:g})"]
        for r in self.rows:
            frames = "-" if r.frames is None else str(r.frames)
            lines.append(f"{r.stage:<16} {r.batch:>3} {frames:>4} {r.max_abs:>12.3e} {r.mean_abs:>12.3e}  "
                         f"{'ok' if r.ok else 'FAIL'}")
        lines += [f"providers[{stage}]: {', '.join(p)}" for stage, p in self.providers.items()]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def denoiser_cases(max_frames: int) -> list[tuple[int, int]]:
    """(B, T) pairs: single frame, a short odd clip, and the full exported length, at B = 1 and 2."""
    frames = sorted({1, min(3, max_frames), max_frames})
    return [(b, t) for t in frames for b in (1, 2)]


def _session(path: Path, providers: list[str] | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def _compare(report: Report, stage: str, session, torch_fn, feeds: dict[str, np.ndarray],
             batch: int, frames: int | None) -> None:
    got = session.run(None, feeds)[0]
    with torch.no_grad():
        want = torch_fn(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    if got.shape != want.shape:
        report.problems.append(f"{stage} B={batch} T={frames}: onnx shape {got.shape} != torch shape {want.shape}")
        return
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    max_abs = float(err.max())
    report.rows.append(Row(stage, batch, frames, max_abs, float(err.mean()), max_abs <= report.tol))


def verify_bundle(bundle_dir: str | os.PathLike, vdt: VDT, vae: nn.Module | None = None, *, tol: float = 1e-4,
                  cases: list[tuple[int, int]] | None = None, providers: list[str] | None = None,
                  seed: int = 0) -> Report:
    """Compare every stage of the bundle against the torch modules; the VAE stages are skipped without `vae`."""
    bundle_dir = Path(bundle_dir)
    report = Report(tol=tol)
    try:  # the runtime's own load: schema, files, graphs and every sha256
        manifest = Bundle.load(bundle_dir, verify=True).manifest
    except BundleError as e:
        report.problems.append(str(e))
        return report
    rng = np.random.default_rng(seed)
    stages = manifest["stages"]
    model, hw = manifest["model"], manifest["model"]["input_size"]
    vdt = vdt.eval()
    graphs = {"denoiser": stages["denoiser"]["files"]["fp32"]}
    if "fp32" in stages["denoiser"].get("fused", {}):
        graphs["denoiser (fused)"] = stages["denoiser"]["fused"]["fp32"]
    for label, fname in graphs.items():
        sess = _session(bundle_dir / fname, providers)
        report.providers[label] = sess.get_providers()
        for b, t in cases or denoiser_cases(model["max_frames"]):
            latents = rng.standard_normal((b, t, model["in_channels"], hw, hw)).astype(np.float32)
            timestep = rng.uniform(0, manifest["diffusion"]["num_timesteps"] - 1, size=b).astype(np.float32)
            _compare(report, label, sess, vdt, {"latents": latents, "timestep": timestep}, b, t)
    if vae is None:
        return report
    scale, size = manifest["vae"]["scale_factor"], manifest["image_size"]
    latent_size, channels = size // manifest["vae"]["downsample"], manifest["vae"]["latent_channels"]
    for stage, module, shape in (("vae_encoder", VAEEncoder(vae, scale), (3, size, size)),
                                 ("vae_decoder", VAEDecoder(vae, scale), (channels, latent_size, latent_size))):
        sess = _session(bundle_dir / stages[stage]["files"]["fp32"], providers)
        report.providers[stage] = sess.get_providers()
        input_name = stages[stage]["inputs"][0]["name"]
        for b in (1, 2):
            x = rng.uniform(-1, 1, size=(b, *shape)).astype(np.float32)
            _compare(report, stage, sess, module.eval(), {input_name: x}, b, None)
    return report
