"""PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8, side by side in one run (interleaved, median).

    python benchmarks/bench_pipeline.py --part a --bundle engines/default --checkpoint checkpoints/default
    python benchmarks/bench_pipeline.py --part b --steps 10 --repeats 3

(a) the default model, full predict pipeline (8 given → 8 generated frames, DDPM): VAE encode, sampling, VAE
    decode. Without engines/default (or the checkpoint) a bundle of train_tiny's configs with random weights is
    exported to a temp folder and both sides use its weights.
(b) a random VDT-S/2 (16 frames, 32×32×4 latents, ε + learned-range): the denoising loop only (sampler +
    denoiser, DDPM, predict mask); the VAE is excluded.
ORT fp32 runs the bundle's onnxruntime-fused denoiser (com.microsoft.Attention); "ORT fp32 standard" the same
model as standard ONNX operators (`options={"fused": False}`), the graph TensorRT builds from. INT8 is `vdt_export.quantize`
dynamic quantization of the fused graph. (b) also times torch with F.scaled_dot_product_attention, the attention
the original code gets from timm. `--variants` adds ORT fp32 rows with other session options.
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
from _common import ROOT, interleaved, machine, median, table, training_running  # noqa: E402

COND, TOTAL = 8, 16
VARIANTS = {"threads=1": dict(threads=1), "threads=2": dict(threads=2), "opt=basic": dict(graph_optimization="basic"),
            "opt=extended": dict(graph_optimization="extended"), "spinning=False": dict(spinning=False)}


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

    from torch_reference import TorchPipeline
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
    pipes = {"ORT fp32": Pipeline.load(bundle, backend="cpu"),
             "ORT fp32 standard": Pipeline.load(bundle, backend="cpu", options={"fused": False}),
             "ORT int8": Pipeline.load(_int8_copy(bundle, tmp), backend="cpu", precision="int8")}
    if args.variants:
        pipes.update({f"ORT fp32 {k}": Pipeline.load(bundle, backend="cpu", options=v) for k, v in VARIANTS.items()})
    kw = dict(cond=COND, total=TOTAL, steps=args.steps, sampler="ddpm", seed=0)
    contenders = {"torch eager": lambda: ref.predict(frames, cond=COND, total=TOTAL, steps=args.steps)}
    contenders.update({name: (lambda p=p: p.predict(frames[:COND], **kw)) for name, p in pipes.items()})
    with torch.no_grad():
        times = interleaved(contenders, args.repeats)
    source += _int8_error(pipes["ORT int8"].bundle.path)
    return _rows(times, pipes, "predict pipeline (encode+sample+decode)", args.steps), source


def part_b(args, tmp: Path) -> tuple[list[dict], str]:
    """Denoising loop of a random VDT-S/2; VAE excluded."""
    import torch

    from _common import random_bundle
    from torch_reference import TorchDDPM, with_sdpa
    from vdt_export.models import config_from_name
    from vdt_export.vae import tiny_vae_config
    from vdt_runtime.backends import open_backend
    from vdt_runtime.bundle import Bundle
    from vdt_runtime.samplers import get_sampler
    from vdt_runtime.schedule import make_schedule

    cfg = config_from_name("VDT-S/2", input_size=32, num_frames=TOTAL)
    bundle_dir = tmp / "vdt-s2"
    vdt, _ = random_bundle(bundle_dir, cfg, tiny_vae_config())
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

    backends = {"ORT fp32": open_backend(bundle, "denoiser", "cpu", "fp32"),
                "ORT fp32 standard": open_backend(bundle, "denoiser", "cpu", "fp32", {"fused": False}),
                "ORT int8": open_backend(bundle, "denoiser", "cpu", "int8")}
    if args.variants:
        backends.update({f"ORT fp32 {k}": open_backend(bundle, "denoiser", "cpu", "fp32", v)
                         for k, v in VARIANTS.items()})
    tg, tm = torch.from_numpy(x_given), torch.from_numpy(mask)[None, :, None]
    torch_ddpm = TorchDDPM(args.steps)
    sdpa = with_sdpa(vdt)
    contenders = {"torch eager": lambda: torch_ddpm.sample(vdt, tg, tm, torch.Generator().manual_seed(0)),
                  "torch eager SDPA": lambda: torch_ddpm.sample(sdpa, tg, tm, torch.Generator().manual_seed(0))}
    contenders.update({name: ort_loop(b) for name, b in backends.items()})
    times = interleaved(contenders, args.repeats)
    source = "VDT-S/2, 16 frames, 32×32×4 latents, random weights (seed 0), epsilon + learned_range" + _int8_error(bundle_dir)
    return _rows(times, backends, "VDT-S/2 denoising loop (VAE excluded)", args.steps), source


def _int8_error(bundle: Path) -> str:
    from vdt_export.quantize import precision_error

    e = precision_error(bundle)
    return (f"\nint8 vs fp32 denoiser output on 4 random inputs (batch 1, T = opt): max abs {e['max_abs']:.4f}, "
            f"mean abs {e['mean_abs']:.4f}, fp32 mean |out| {e['fp32_mean_abs']:.4f}")


def _rows(times: dict[str, list[float]], runners: dict, what: str, steps: int) -> list[dict]:
    base = median(times["torch eager"])
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
                     "ratio vs torch": f"{median(ts) / base:.2f}×"})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["a", "b"], required=True)
    ap.add_argument("--bundle", type=Path, default=ROOT / "engines" / "default")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default")
    ap.add_argument("--steps", type=int, default=None, help="DDPM steps (default: a 50, b 10)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", action="store_true", help="also time ORT fp32 with other session options")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    args.steps = args.steps or (50 if args.part == "a" else 10)
    with tempfile.TemporaryDirectory(prefix="vdt-bench-") as tmp:
        rows, source = (part_a if args.part == "a" else part_b)(args, Path(tmp))
    note = " · TRAINING WAS RUNNING: provisional" if training_running() else ""
    print(f"{machine()}{note}\nmodel: {source}\n")
    print(table(rows))
    if args.json:
        from _common import atomic_write_text

        atomic_write_text(args.json, json.dumps({"machine": machine(), "model": source, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
