"""The NumPy cost of one sampler step on its own: every sampler against a denoiser that returns a constant.

    python benchmarks/bench_sampler_step.py                 # the default model's latents, 1×16×4×16×16
    python benchmarks/bench_sampler_step.py --shape 1x16x4x32x32

Predict mask (first half of the frames given), v-prediction with fixed_small (the default model's maths),
50 steps, median of 30 runs; the noise draw alone is timed too. No ONNX Runtime call is involved, so this is the
floor of the outside-backend time that bench_overheads.py measures inside the pipeline.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, table  # noqa: E402

STEPS = 50


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1x16x4x16x16", help="latents B×T×C×h×w")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args(argv)

    from vdt_runtime.samplers import get_sampler, standard_normal
    from vdt_runtime.schedule import make_schedule

    shape = tuple(int(v) for v in args.shape.split("x"))
    b, t, c, h, w = shape
    rng = np.random.default_rng(0)
    mask = np.ones((t, h, w), np.float32)
    mask[: t // 2] = 0
    x_given = standard_normal(rng, shape)
    out = standard_normal(rng, shape)
    schedule = make_schedule(STEPS, prediction_type="v", variance_type="fixed_small")
    rows = []
    for name, eta in (("ddpm", None), ("ddim", 0.0), ("dpmpp", 0.0), ("dpmpp", 1.0)):
        sample, opts = get_sampler(name), ({} if eta is None else {"eta": eta})
        times = []
        for _ in range(args.runs + 1):
            gen = np.random.default_rng(1)
            start = time.perf_counter()
            sample(lambda x, t: out, standard_normal(gen, shape), schedule, rng=gen, mask=mask, x_given=x_given,
                   **opts)
            times.append(time.perf_counter() - start)
        label = name if eta is None else f"{name} η={eta:g}"
        rows.append({"what": f"{label}: one step (mask, model read-out, update, noise)",
                     "µs / step": f"{median(times[1:]) / STEPS * 1e6:.1f}"})
    for label, draw in (("noise: vdt_runtime standard_normal (Box–Muller)", lambda: standard_normal(rng, shape)),
                        ("noise: numpy Generator.standard_normal(float32)",
                         lambda: rng.standard_normal(shape, dtype=np.float32))):
        times = []
        for _ in range(args.runs * 10):
            start = time.perf_counter()
            draw()
            times.append(time.perf_counter() - start)
        rows.append({"what": label, "µs / step": f"{median(times) * 1e6:.1f}"})
    print(f"{machine()}\nlatents {shape}, {STEPS} steps, predict mask, v / fixed_small, median of {args.runs}\n")
    print(table(rows, ("what", "µs / step")))


if __name__ == "__main__":
    main()
