"""PyTorch eager vs ONNX Runtime vs OpenVINO at each precision, side by side in one run (interleaved, median).

    python benchmarks/bench_pipeline.py --part a --bundle engines/default --checkpoint checkpoints/default
    python benchmarks/bench_pipeline.py --part b --steps 10 --repeats 3
    python benchmarks/bench_pipeline.py --part call --repeats 7

(a) the default model, full predict pipeline (8 given → 8 generated frames, DDPM): VAE encode, sampling, VAE
    decode. Without engines/default (or the checkpoint) a bundle of train_tiny's configs with random weights is
    exported to a temp folder and both sides use its weights.
(b) a random VDT-S/2 (16 frames, 32×32×4 latents, ε + learned-range): the denoising loop only (sampler +
    denoiser, DDPM, predict mask); the VAE is excluded.
(call) one denoiser call of that random VDT-S/2 (batch 1, 16 frames), and each runtime's error against torch
    fp32 on that input.
Every part runs torch eager with SDPA attention (the ratio's base) and plain eager, then each row of RUNTIMES
that this machine can run (onnxruntime fp32 fused / standard / int8, OpenVINO fp32 / bf16 / int8); rows it
cannot run (openvino missing, no native bf16) are listed as skipped.
ORT fp32 runs the bundle's onnxruntime-fused denoiser (com.microsoft.Attention); "ORT fp32 standard" the same
model as standard ONNX operators (`options={"fused": False}`), the graph TensorRT builds from. INT8 is `vdt_export.quantize`
dynamic quantization of the fused graph; OpenVINO int8 is weight compression of the standard graph. "torch eager
SDPA" uses F.scaled_dot_product_attention, the attention the original code gets from timm.
`--variants` adds ORT fp32 rows with other session options.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, interleaved, load, machine, median, table, training_running  # noqa: E402

COND, TOTAL = 8, 16
BASE = "torch eager SDPA"
COLUMNS = ("what", "device", "providers", "precision", "denoiser graph", "batch", "frames", "steps", "time",
           f"ratio vs {BASE}", "error vs torch fp32")
# row name -> (backend, precision, options)
RUNTIMES = {
    "ORT fp32": ("cpu", "fp32", {}),
    "ORT fp32 standard": ("cpu", "fp32", {"fused": False}),
    "ORT int8": ("cpu", "int8", {}),
    "OpenVINO fp32": ("openvino", "fp32", {}),
    "OpenVINO bf16": ("openvino", "bf16", {}),
    "OpenVINO int8": ("openvino", "int8", {}),
}
VARIANTS = {"threads=1": dict(threads=1), "threads=2": dict(threads=2), "opt=basic": dict(graph_optimization="basic"),
            "opt=extended": dict(graph_optimization="extended"), "spinning=False": dict(spinning=False)}


def runtimes(bundle: Path, variants: bool) -> tuple[dict[str, tuple], list[str]]:
    """The RUNTIMES rows (plus ORT option VARIANTS) this machine can run for the bundle, and why others are skipped."""
    from vdt_runtime.backends import available, runnable
    from vdt_runtime.bundle import Bundle

    rows = dict(RUNTIMES)
    if variants:
        rows.update({f"ORT fp32 {k}": ("cpu", "fp32", v) for k, v in VARIANTS.items()})
    b, keep, skipped = Bundle.load(bundle), {}, []
    for name, (backend, precision, options) in rows.items():
        reason = available(backend) or (None if precision in runnable(b, backend)["denoiser"] else
                                        f"{backend} cannot run {precision} here")
        if reason:
            skipped.append(f"{name} ({reason})")
        else:
            keep[name] = (backend, precision, options)
    return keep, skipped


def _int8_copy(bundle: Path, tmp: Path) -> Path:
    """The bundle itself if it lists an int8 denoiser, else a quantized copy in tmp."""
    if "int8" in json.loads((bundle / "manifest.json").read_text())["stages"]["denoiser"]["files"]:
        return bundle
    from vdt_export.quantize import quantize_bundle

    copy = tmp / "int8" / bundle.name
    shutil.copytree(bundle, copy)
    quantize_bundle(copy)
    return copy


def part_a(args, tmp: Path) -> tuple[list[dict], str]:
    """Full pipeline on the default model (or train_tiny's configs with random weights)."""
    import torch

    from torch_reference import TorchPipeline, with_sdpa
    from vdt_export import bouncing
    from vdt_runtime import Pipeline

    if args.bundle.joinpath("manifest.json").is_file() and args.checkpoint.joinpath("vdt.safetensors").is_file():
        bundle, ref, source = args.bundle, TorchPipeline.from_checkpoint(args.checkpoint), f"{args.bundle} (trained)"
    else:
        from _common import random_bundle
        from vdt_export.train_tiny import DIFFUSION, VAE_CONFIG, VDT_CONFIG

        bundle = tmp / "default-random"
        vdt, vae = random_bundle(bundle, VDT_CONFIG, VAE_CONFIG, diffusion=DIFFUSION)
        ref = TorchPipeline(vdt, vae, scale_factor=0.18215, diffusion=DIFFUSION)
        source = "train_tiny configs, RANDOM weights (engines/default or checkpoint missing)"
    frames = bouncing.clip(bouncing.EVAL_SEED_BASE)
    bundle = _int8_copy(bundle, tmp)
    chosen, skipped = runtimes(bundle, args.variants)
    pipes = {name: Pipeline.load(bundle, backend=b, precision=p, options=o) for name, (b, p, o) in chosen.items()}
    kw = dict(cond=COND, total=TOTAL, steps=args.steps, sampler="ddpm", seed=0)
    sdpa = TorchPipeline(with_sdpa(ref.vdt), ref.vae, scale_factor=ref.scale_factor, diffusion=ref.diffusion)
    contenders = {BASE: lambda: sdpa.predict(frames, cond=COND, total=TOTAL, steps=args.steps),
                  "torch eager": lambda: ref.predict(frames, cond=COND, total=TOTAL, steps=args.steps)}
    contenders.update({name: (lambda p=p: p.predict(frames[:COND], **kw)) for name, p in pipes.items()})
    with torch.no_grad():
        times = interleaved(contenders, args.repeats)
    source += _int8_error(bundle) + _skipped(skipped)
    return _rows(times, pipes, "predict pipeline (encode+sample+decode)", args.steps), source


def part_b(args, tmp: Path) -> tuple[list[dict], str]:
    """Denoising loop of a random VDT-S/2; VAE excluded."""
    import torch

    from _common import random_bundle
    from torch_reference import TorchDDPM, with_sdpa
    from vdt_export.models import config_from_name
    from vdt_export.sources import tiny_vae_config
    from vdt_runtime.backends import open_backend
    from vdt_runtime.bundle import Bundle
    from vdt_runtime.samplers import get_sampler
    from vdt_runtime.schedule import make_schedule

    cfg = config_from_name("VDT-S/2", input_size=32, num_frames=TOTAL)
    bundle_dir = args.keep / "vdt-s2" if args.keep else tmp / "vdt-s2"
    vdt, _ = random_bundle(bundle_dir, cfg, tiny_vae_config(), reuse=bool(args.keep))
    bundle = Bundle.load(bundle_dir)
    x_given = np.random.default_rng(0).standard_normal((1, TOTAL, 4, 32, 32), dtype=np.float32)
    x_given[:, COND:] = 0
    mask = np.ones((TOTAL, 32, 32), np.float32)
    mask[:COND] = 0
    schedule = make_schedule(args.steps)  # epsilon + learned_range, the official path
    ddpm = get_sampler("ddpm")

    def ort_loop(backend):
        def denoise(x, t):
            return backend.run({"latents": x, "timestep": t})["model_out"]

        def loop():
            rng = np.random.default_rng(0)
            return ddpm(denoise, rng.standard_normal(x_given.shape), schedule, rng=rng, mask=mask, x_given=x_given)

        return loop

    chosen, skipped = runtimes(bundle_dir, args.variants)
    backends = {name: open_backend(bundle, "denoiser", b, p, o) for name, (b, p, o) in chosen.items()}
    tg, tm = torch.from_numpy(x_given), torch.from_numpy(mask)[None, :, None]
    torch_ddpm = TorchDDPM(args.steps)
    sdpa = with_sdpa(vdt)
    contenders = {BASE: lambda: torch_ddpm.sample(sdpa, tg, tm, torch.Generator().manual_seed(0)),
                  "torch eager": lambda: torch_ddpm.sample(vdt, tg, tm, torch.Generator().manual_seed(0))}
    contenders.update({name: ort_loop(b) for name, b in backends.items()})
    with torch.no_grad():
        times = interleaved(contenders, args.repeats)
    source = (f"{S2} (seed 0), epsilon + learned_range" + _int8_error(bundle_dir) + _skipped(skipped))
    return _rows(times, backends, "VDT-S/2 denoising loop (VAE excluded)", args.steps), source


def part_call(args, tmp: Path) -> tuple[list[dict], str]:
    """One denoiser call of a random VDT-S/2 (batch 1, 16 frames), and each runtime's error against torch fp32."""
    import torch

    from _common import random_bundle
    from torch_reference import with_sdpa
    from vdt_export.models import config_from_name
    from vdt_export.sources import tiny_vae_config
    from vdt_runtime.backends import open_backend
    from vdt_runtime.bundle import Bundle

    bundle_dir = args.keep / "vdt-s2" if args.keep else tmp / "vdt-s2"
    vdt, _ = random_bundle(bundle_dir, config_from_name("VDT-S/2", input_size=32, num_frames=TOTAL), tiny_vae_config(),
                           reuse=bool(args.keep))
    bundle = Bundle.load(bundle_dir)
    chosen, skipped = runtimes(bundle_dir, args.variants)
    backends = {name: open_backend(bundle, "denoiser", b, p, o) for name, (b, p, o) in chosen.items()}
    x = np.random.default_rng(1).standard_normal((1, TOTAL, 4, 32, 32), dtype=np.float32)
    t = np.array([500.0], np.float32)
    sdpa, tx, tt = with_sdpa(vdt), torch.from_numpy(x), torch.from_numpy(t)
    contenders = {BASE: lambda: sdpa(tx, tt), "torch eager": lambda: vdt(tx, tt)}
    contenders.update({name: (lambda b=b: b.run({"latents": x, "timestep": t})) for name, b in backends.items()})
    with torch.no_grad():
        times = interleaved(contenders, args.repeats)
        ref = vdt(tx, tt).numpy()
    errors = {name: _error(b.run({"latents": x, "timestep": t})["model_out"], ref) for name, b in backends.items()}
    rows = _rows(times, backends, "VDT-S/2 denoiser call", 1)
    for row, name in zip(rows, times):
        row["error vs torch fp32"] = errors.get(name, "reference" if name == BASE else "")
    return rows, f"{S2} (seed 0), one call at t = 500" + _skipped(skipped)


S2 = "VDT-S/2, 16 frames, 32×32×4 latents, random weights"


def _error(out: np.ndarray, ref: np.ndarray) -> str:
    """Relative L2 error and max abs error of `out` against the torch fp32 output `ref`."""
    rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    return f"{rel:.2e} rel L2, {np.abs(out - ref).max():.3f} max abs (torch mean abs {np.abs(ref).mean():.3f})"


def _skipped(skipped: list[str]) -> str:
    return f"\nskipped here: {'; '.join(skipped)}" if skipped else ""


def _int8_error(bundle: Path) -> str:
    from vdt_export.stage_error import precision_error

    e = precision_error(bundle)
    return (f"\nint8 vs fp32 denoiser output on 4 random inputs (batch 1, T = opt): max abs {e['max_abs']:.4f}, "
            f"mean abs {e['mean_abs']:.4f}, fp32 mean |out| {e['fp32_mean_abs']:.4f}")


def _rows(times: dict[str, list[float]], runners: dict, what: str, steps: int) -> list[dict]:
    base = median(times[BASE])
    rows = []
    for name, ts in times.items():
        runner = runners.get(name)
        if runner is None:
            providers, precision, graph = "torch (CPU)", "fp32", "eager"
        else:
            backend = runner.backends["denoiser"] if hasattr(runner, "backends") else runner  # a Pipeline, or a Backend
            providers, precision, graph = ", ".join(backend.providers), backend.precision, backend.graph
        rows.append({"what": f"{name}: {what}", "device": "CPU", "providers": providers, "precision": precision,
                     "denoiser graph": graph,
                     "batch": 1, "frames": TOTAL, "steps": steps,
                     "time": f"{median(ts):.3f} s ({min(ts):.3f}–{max(ts):.3f}, n={len(ts)})",
                     f"ratio vs {BASE}": f"{median(ts) / base:.2f}×"})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["a", "b", "call"], required=True)
    ap.add_argument("--bundle", type=Path, default=ROOT / "engines" / "default")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default")
    ap.add_argument("--steps", type=int, default=None, help="DDPM steps (default: a 50, b 10)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", action="store_true", help="also time ORT fp32 with other session options")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--keep", type=Path, help="export the random VDT-S/2 bundle here once and reuse it (b, call)")
    args = ap.parse_args(argv)
    args.steps = args.steps or (50 if args.part == "a" else 10)
    before = machine()
    with tempfile.TemporaryDirectory(prefix="vdt-bench-") as tmp:
        rows, source = {"a": part_a, "b": part_b, "call": part_call}[args.part](args, Path(tmp))
    note = " · TRAINING WAS RUNNING: provisional" if training_running() else ""
    print(f"{before}{note}\nat the end: {load()}\nmodel: {source}\n")
    print(table(rows, COLUMNS))
    if args.json:
        from _common import atomic_write_text

        atomic_write_text(args.json, json.dumps({"machine": before, "end": load(), "model": source, "rows": rows},
                                                indent=1))


if __name__ == "__main__":
    main()
