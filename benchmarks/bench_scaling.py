"""Cost vs size: seconds per generated frame for T = 4, 8, 16 at two latent sizes, and denoiser time vs batch.

    python benchmarks/bench_scaling.py --config VDT-S/2 --sizes 16 32 --steps 10 --repeats 3

Random-weight models (one bundle per latent size, tiny /2 VAE), ORT fp32 on the CPU provider. Frames:
`Pipeline.unconditional` of T frames (every frame generated, VAE decode included — the tiny VAE is a few
% of the time), DDPM; seconds per generated frame = wall / T. Batch: one denoiser call at B = 1, 2, 4 with T = 16
at the smaller size (the Pipeline generates one video at a time; a batch is a serving-side choice).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, median, random_bundle, table, training_running  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="VDT-S/2")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="latent sizes h = w")
    ap.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from vdt_export.models import config_from_name
    from vdt_export.sources import tiny_vae_config
    from vdt_runtime import Pipeline

    frame_rows, batch_rows = [], []
    with tempfile.TemporaryDirectory(prefix="vdt-scaling-") as tmp:
        pipes = {}
        for size in args.sizes:
            cfg = config_from_name(args.config, input_size=size, num_frames=max(args.frames))
            random_bundle(Path(tmp) / f"s{size}", cfg, tiny_vae_config(), int8=False)
            pipes[size] = Pipeline.load(Path(tmp) / f"s{size}", backend="cpu")
        contenders = {(size, t): (lambda p=p, t=t: p.unconditional(total=t, steps=args.steps, seed=0))
                      for size, p in pipes.items() for t in args.frames}
        times = interleaved(contenders, args.repeats)
        for (size, t), ts in times.items():
            p = pipes[size]
            frame_rows.append({"what": f"{args.config} unconditional, latent {size}×{size} (image {p.image_size}²)",
                               "device": "CPU", "providers": ", ".join(p.providers["denoiser"]), "precision": "fp32",
                               "batch": 1, "frames": t, "steps": args.steps, "time": f"{median(ts):.3f} s (n={len(ts)})",
                               "s / generated frame": f"{median(ts) / t:.3f}"})
        size = min(args.sizes)
        den = pipes[size].backends["denoiser"]
        t_max = max(args.frames)
        rng = np.random.default_rng(0)
        feeds = {b: {"latents": rng.standard_normal((b, t_max, 4, size, size), dtype=np.float32),
                     "timestep": np.full(b, 500.0, np.float32)} for b in args.batches}
        times = interleaved({b: (lambda f=f: den.run(f)) for b, f in feeds.items()}, args.repeats)
        for b, ts in times.items():
            batch_rows.append({"what": f"{args.config} denoiser call, latent {size}×{size}", "device": "CPU",
                               "providers": ", ".join(den.providers), "precision": "fp32", "batch": b,
                               "frames": t_max, "time": f"{median(ts):.3f} s (n={len(ts)})",
                               "s / video": f"{median(ts) / b:.3f}"})
    note = " · TRAINING WAS RUNNING: provisional" if training_running() else ""
    print(f"{machine()}{note}\nmodels: {args.config}, random weights\n")
    print(table(frame_rows, ("what", "device", "providers", "precision", "batch", "frames", "steps", "time",
                             "s / generated frame")), "\n")
    print(table(batch_rows, ("what", "device", "providers", "precision", "batch", "frames", "time", "s / video")))


if __name__ == "__main__":
    main()
