"""Quality vs steps on the default model: the predict metric of eval_physics.py for each sampler and step count.

    python benchmarks/bench_quality.py --bundle engines/default --clips 32

DDPM at 250/100/50 steps, DDIM (η = 0) and DPM-Solver++(2M) at 10/20/50 steps, the same held-out clips and
seeds for every row. Each row is compared with DDPM-250 on the same clips (paired difference ± standard error).
Target: DPM-Solver++ at 20 steps within 5 % of DDPM-250.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, parse_run, table, training_running  # noqa: E402
from eval_physics import evaluate, paired  # noqa: E402

RUNS = [("ddpm", 250, 0.0), ("ddpm", 100, 0.0), ("ddpm", 50, 0.0), ("ddim", 10, 0.0), ("ddim", 20, 0.0),
        ("ddim", 50, 0.0), ("dpmpp", 10, 0.0), ("dpmpp", 20, 0.0), ("dpmpp", 50, 0.0),
        ("dpmpp", 10, 1.0), ("dpmpp", 20, 1.0), ("dpmpp", 50, 1.0)]
REFERENCE = ("ddpm", 250, 0.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "engines" / "default")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--precision", default=None, help="e.g. int8 (default: the bundle's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", nargs="+", type=parse_run, default=RUNS, help="sampler:steps[:eta] …")
    ap.add_argument("--reference", type=parse_run, default=REFERENCE,
                    help="the run every row is compared with (default ddpm:250)")
    args = ap.parse_args(argv)
    runs = list(args.runs)
    if args.reference not in runs:
        runs.insert(0, args.reference)

    from vdt_runtime import Pipeline

    pipe = Pipeline.load(args.bundle, backend="cpu", precision=args.precision)
    results = {}
    for sampler, steps, eta in runs:
        print(f"{sampler} {steps} steps η={eta:g} …", file=sys.stderr, flush=True)
        results[(sampler, steps, eta)] = evaluate(pipe, args.clips, steps, sampler, args.seed, progress=False, eta=eta)
    ref = results[args.reference]["arrays"]["model"]
    ref_name = f"{args.reference[0].upper()}-{args.reference[1]}"
    rows = []
    for (sampler, steps, eta), res in results.items():
        m = res["arrays"]["model"]
        rel = (m["pos"].mean() - ref["pos"].mean()) / ref["pos"].mean()
        rows.append({"sampler": sampler, "η": f"{eta:g}", "steps": steps, "PSNR dB": f"{m['psnr'].mean():.2f}",
                     "pos err px": f"{m['pos'].mean():.2f}", "at +8": f"{m['pos+8'].mean():.2f}",
                     "missing ball": f"{res['missing']['model']}/{args.clips * 8}",
                     f"Δ pos err vs {ref_name} (paired)": paired(m["pos"], ref["pos"]),
                     "relative": f"{100 * rel:+.1f} %", "seconds": f"{res['seconds']:.1f}"})
    base = results[args.reference]["arrays"]
    baseline = " · ".join(f"{n} pos err {base[n]['pos'].mean():.2f} px, PSNR {base[n]['psnr'].mean():.2f} dB"
                          for n in ("copy_last", "const_velocity"))
    note = " · TRAINING WAS RUNNING: provisional" if training_running() else ""
    print(f"{machine()}{note}\nbundle {args.bundle} · {args.clips} held-out clips (seeds from EVAL_SEED_BASE), "
          f"8 given → 8 generated · providers {', '.join(pipe.providers['denoiser'])} · "
          f"precision {pipe.backends['denoiser'].precision}\nbaselines: {baseline}\n")
    print(table(rows, tuple(rows[0])))


if __name__ == "__main__":
    main()
