"""Throughput of batched generation: videos per second vs batch size, the same work at every batch size.

    python benchmarks/bench_batching.py --videos 16 --batches 1 2 4 8 16 --steps 10 --repeats 3

N predict requests (8 given → 8 generated, DDPM, seeds 0…N−1) go through `Pipeline.generate` in chunks of B,
so every row generates the same N videos (byte-identical in every row: checked). Rows run interleaved
(B=1, B=2, … then again) so machine load hits all alike. `--vdt-s2` adds a random-weight VDT-S/2 bundle
(16×16 latents, tiny VAE), where a denoiser call is ~100× the default model's work.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, interleaved, machine, median, random_bundle, table  # noqa: E402

COLUMNS = ("model", "providers", "precision", "denoiser graph", "batch", "videos", "steps", "time", "videos / s",
           "vs batch 1")


def rows_for(name: str, pipe, args) -> list[dict]:
    from vdt_runtime import Request

    rng = np.random.default_rng(0)
    size, total = pipe.image_size, pipe.bundle.num_frames
    cond = total // 2
    clips = rng.integers(0, 256, (args.videos, cond, size, size, 3), dtype=np.uint8)
    requests = [Request(task="predict", frames=c, cond=cond, total=total, sampler="ddpm", steps=args.steps, seed=i)
                for i, c in enumerate(clips)]

    def work(b):
        return [r.frames for i in range(0, len(requests), b) for r in pipe.generate(requests[i: i + b])]

    reference = work(1)
    for b in args.batches:  # same bytes at every batch size, or the comparison is void
        assert all(np.array_equal(x, y) for x, y in zip(work(b), reference)), f"batch {b} changed the frames"
    times = interleaved({b: (lambda b=b: work(b)) for b in args.batches}, args.repeats, warmup=0)
    base = median(times[args.batches[0]])
    den = pipe.backends["denoiser"]
    return [{"model": name, "providers": ", ".join(den.providers), "precision": den.precision,
             "denoiser graph": den.graph, "batch": b, "videos": args.videos, "steps": args.steps,
             "time": f"{median(ts):.2f} s (n={len(ts)})", "videos / s": f"{args.videos / median(ts):.2f}",
             "vs batch 1": f"{base / median(ts):.2f}×"} for b, ts in times.items()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "engines" / "default"))
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    ap.add_argument("--int8", action="store_true", help="also the bundle's INT8 denoiser")
    ap.add_argument("--vdt-s2", action="store_true", help="also a random VDT-S/2 bundle (16×16 latents)")
    args = ap.parse_args(argv)

    from vdt_runtime import Pipeline

    opts = {} if args.threads is None else {"threads": args.threads}
    print(machine())
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    rows = rows_for("default", Pipeline.load(args.bundle, backend="cpu", options=opts), args)
    if args.int8:
        rows += rows_for("default", Pipeline.load(args.bundle, backend="cpu", precision="int8",
                                                  options=opts), args)
    if args.vdt_s2:
        from vdt_export.models import config_from_name
        from vdt_export.sources import tiny_vae_config

        with tempfile.TemporaryDirectory(prefix="vdt-batching-") as tmp:
            random_bundle(Path(tmp) / "s2", config_from_name("VDT-S/2", input_size=16, num_frames=16),
                          tiny_vae_config(), int8=False)
            rows += rows_for("random VDT-S/2", Pipeline.load(Path(tmp) / "s2", backend="cpu", options=opts),
                             args)
    print(table(rows, COLUMNS))
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
