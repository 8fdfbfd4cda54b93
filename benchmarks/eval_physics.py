"""Predict-task quality of a bundle on held-out bouncing-ball clips, against three baselines.

    python benchmarks/eval_physics.py --bundle engines/default --clips 64 --steps 50 --sampler ddpm
    python benchmarks/eval_physics.py --clips 128 --steps 50 --readme    # rewrites README.md's default-model block
    python benchmarks/eval_physics.py --clips 128 --compare cpu:fp32 openvino:fp32 openvino:bf16 cpu:int8

With --compare, each BACKEND:PRECISION runs the same clips with the same seeds and the table gives its paired
difference against the first (the reference). Sampling is stochastic, so any rounding change sends a clip down
another trajectory: the reference's own backend at another rounding (e.g. openvino:fp32 against cpu:fp32) shows
the size of that noise. A precision counts as lossless when its paired position-error difference is not
significantly positive (mean − 2·s.e. ≤ 0) and its PSNR difference not significantly negative.

8 given frames → 8 generated. Metrics per clip: PSNR over the generated frames, and the ball-position
error (centre of mass of non-background pixels, px) averaged over generated frames, at +1 and at +8.
A frame with no ball found counts as MISSING_PX of error (and is reported). Baselines: a blank
background, copying the last given frame, and constant-velocity extrapolation of the last two given
centres rendered with the true ball. Differences are paired (same clips) with standard errors.
Clip seeds start at bouncing.EVAL_SEED_BASE, which training never uses.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, write_block  # noqa: E402
from vdt_export import bouncing  # noqa: E402  (numpy only)
from vdt_runtime import Pipeline  # noqa: E402

COND, TOTAL = 8, 16
MISSING_PX = 16.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def position_errors(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-frame centre distance [T] (missing ball → MISSING_PX) and how many frames had no ball."""
    d = np.linalg.norm(bouncing.ball_centre(pred) - bouncing.ball_centre(truth), axis=-1)
    missing = int(np.isnan(d).sum())
    return np.where(np.isnan(d), MISSING_PX, d), missing


def baselines(given: np.ndarray) -> dict[str, np.ndarray]:
    """Generated-frame predictions [TOTAL-COND, H, W, 3] of each baseline from the given frames."""
    k = TOTAL - COND
    blank = np.broadcast_to(np.round(bouncing.BACKGROUND * 255).astype(np.uint8), given[:k].shape).copy()
    centres = bouncing.ball_centre(given[-2:])
    step = centres[1] - centres[0]
    cv = bouncing.render(centres[1] + step * np.arange(1, k + 1)[:, None])
    return {"blank": blank, "copy_last": np.repeat(given[-1:], k, axis=0), "const_velocity": cv}


def paired_stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of the paired differences a − b and its standard error."""
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def paired(a: np.ndarray, b: np.ndarray, digits: int = 2) -> str:
    mean, se = paired_stats(a, b)
    return f"{mean:+.{digits}f} ± {se:.{digits}f}"


def evaluate(pipe: Pipeline, clips: int, steps: int, sampler: str, seed: int, progress: bool = True,
             eta: float = 0.0) -> dict:
    rows: dict[str, dict[str, list]] = {}
    missing: dict[str, int] = {}
    t0 = time.perf_counter()
    for i in range(clips):
        truth = bouncing.clip(bouncing.EVAL_SEED_BASE + i)
        given, future = truth[:COND], truth[COND:]
        out = pipe.predict(given, cond=COND, total=TOTAL, steps=steps, sampler=sampler, eta=eta,
                           seed=seed + i).frames
        preds = {"model": out[COND:], **baselines(given)}
        for name, pred in preds.items():
            err, miss = position_errors(pred, future)
            r = rows.setdefault(name, {"psnr": [], "pos": [], "pos+1": [], "pos+8": []})
            r["psnr"].append(psnr(pred, future))
            r["pos"].append(err.mean())
            r["pos+1"].append(err[0])
            r["pos+8"].append(err[-1])
            missing[name] = missing.get(name, 0) + miss
        if progress:
            print(f"\r{i + 1}/{clips} clips", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    arr = {n: {k: np.asarray(v) for k, v in r.items()} for n, r in rows.items()}
    return {"arrays": arr, "missing": missing, "seconds": time.perf_counter() - t0}


def report(res: dict, clips: int) -> str:
    arr, missing = res["arrays"], res["missing"]
    frames = clips * (TOTAL - COND)
    lines = ["| predictor | PSNR dB | pos err px | at +1 | at +8 | frames without a ball |", "|---|---|---|---|---|---|"]
    for name, r in arr.items():
        pos = "n/a" if name == "blank" else f"{r['pos'].mean():.2f}"
        at1 = "n/a" if name == "blank" else f"{r['pos+1'].mean():.2f}"
        at8 = "n/a" if name == "blank" else f"{r['pos+8'].mean():.2f}"
        lines.append(f"| {name} | {r['psnr'].mean():.2f} | {pos} | {at1} | {at8} | {missing[name]}/{frames} |")
    lines += ["", "| model minus | PSNR dB (higher is better) | pos err px (lower is better) |", "|---|---|---|"]
    m = arr["model"]
    for name in ("blank", "copy_last", "const_velocity"):
        b = arr[name]
        pos = "n/a" if name == "blank" else paired(m["pos"], b["pos"])
        lines.append(f"| {name} | {paired(m['psnr'], b['psnr'])} | {pos} |")
    return "\n".join(lines)


BASELINE_NAMES = {"blank": "blank background", "copy_last": "copy last given frame",
                  "const_velocity": "constant velocity (true ball re-rendered)"}


def readme_block(res: dict, clips: int, run: str, command: str) -> str:
    """The README's default-model section: table, paired differences and how it was measured."""
    arr, missing = res["arrays"], res["missing"]
    frames = clips * (TOTAL - COND)
    m = arr["model"]
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())  # 1, 5, 15 min: the time is only meaningful when low
    lines = [f"Predict task on {clips} held-out clips (seeds training never used; 8 given → 8 generated, {run}; "
             f"{res['seconds']:.0f} s for all {clips}, about {res['seconds'] / clips:.2f} s a clip):", "",
             "| predictor | PSNR dB | ball position error px (mean) | at +1 | at +8 |", "|---|---|---|---|---|",
             f"| **model** | **{m['psnr'].mean():.2f}** | **{m['pos'].mean():.2f}** | **{m['pos+1'].mean():.2f}** | "
             f"**{m['pos+8'].mean():.2f}** |"]
    for name, label in BASELINE_NAMES.items():
        r = arr[name]
        pos = ("—", "—", "—") if name == "blank" else tuple(f"{r[k].mean():.2f}" for k in ("pos", "pos+1", "pos+8"))
        lines.append(f"| {label} | {r['psnr'].mean():.2f} | {' | '.join(pos)} |")
    lost = "never lost the ball" if not missing["model"] else f"lost it in {missing['model']:,} of {frames:,}"
    lines += ["", "Paired differences, model minus baseline (± standard error over clips): PSNR "
              f"{paired(m['psnr'], arr['copy_last']['psnr'])} dB against copy-last, "
              f"{paired(m['psnr'], arr['const_velocity']['psnr'])} against constant velocity, "
              f"{paired(m['psnr'], arr['blank']['psnr'])} against blank; position error "
              f"{paired(m['pos'], arr['copy_last']['pos'])} px against copy-last and "
              f"{paired(m['pos'], arr['const_velocity']['pos'])} against constant velocity. Position is the centre "
              f"of mass of non-background pixels; a frame without a ball counts {MISSING_PX:g} px (constant velocity "
              f"leaves the frame in {missing['const_velocity']:,} of {frames:,} frames, since it does not bounce; "
              f"the model {lost}).", "",
             f"Measured {machine()} (load average {load}), by `{command}`, which writes this block."]
    return "\n".join(lines)


def compare(specs: list[str], args) -> None:
    """Each BACKEND:PRECISION on the same clips and seeds; prints a markdown table row by row (paired
    differences against the first spec) as each finishes."""
    print("| backend | precision (denoiser) | runs on | graph | PSNR dB | pos err px | at +8 | frames without a ball "
          "| PSNR minus first | pos err minus first | lossless vs first | clips identical to first | seconds |\n"
          + "|" + "---|" * 13, flush=True)
    ref = None
    for spec in specs:
        backend, _, precision = spec.partition(":")
        with Pipeline.load(args.bundle, backend=backend, precision=precision or None) as pipe:
            res = evaluate(pipe, args.clips, args.steps, args.sampler, args.seed)
            den = pipe.backends["denoiser"]
        m = res["arrays"]["model"]
        ref = m if ref is None else ref
        (d_pos, se_pos), (d_psnr, se_psnr) = paired_stats(m["pos"], ref["pos"]), paired_stats(m["psnr"], ref["psnr"])
        ok = d_pos - 2 * se_pos <= 0 and d_psnr + 2 * se_psnr >= 0
        same = sum(bool(np.array_equal(a, b)) for a, b in zip(m["psnr"], ref["psnr"]))  # 0 for another precision: it ran
        print(f"| {backend} | {den.precision} | {', '.join(den.providers)} | {den.graph} | {m['psnr'].mean():.2f} | "
              f"{m['pos'].mean():.3f} | {m['pos+8'].mean():.2f} | {res['missing']['model']} | "
              f"{paired(m['psnr'], ref['psnr'], 3)} | {paired(m['pos'], ref['pos'], 4)} | {'yes' if ok else 'NO'} | "
              f"{same}/{len(m['psnr'])} | {res['seconds']:.0f} |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="engines/default")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sampler", default="ddpm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the per-predictor means here")
    ap.add_argument("--readme", type=Path, nargs="?", const=ROOT / "README.md", default=None,
                    help="write the default-model block (between its markers) of this README (default README.md)")
    ap.add_argument("--compare", nargs="+", metavar="BACKEND:PRECISION",
                    help="evaluate each on the same clips and seeds; paired differences against the first")
    args = ap.parse_args(argv)
    if args.compare:
        print(f"bundle {args.bundle} · {args.clips} held-out clips · {args.sampler} {args.steps} steps · seeds "
              f"{args.seed}..{args.seed + args.clips - 1}")
        compare(args.compare, args)
        return
    pipe = Pipeline.load(args.bundle, backend=args.backend, precision=args.precision)
    res = evaluate(pipe, args.clips, args.steps, args.sampler, args.seed)
    den = pipe.backends["denoiser"]
    run = (f"{args.sampler.upper()} {args.steps} steps, `{', '.join(den.providers)}`, {den.precision} "
           f"({pipe.graphs['denoiser']} graph)")
    print(f"bundle {args.bundle} · {args.clips} held-out clips · {run} · {res['seconds']:.1f} s")
    print(report(res, args.clips))
    if args.readme:
        command = "python benchmarks/eval_physics.py " + " ".join(argv if argv is not None else sys.argv[1:])
        block = readme_block(res, args.clips, run, command)
        write_block(args.readme, "eval_physics", block)
        print(f"\nwrote the eval_physics block of {args.readme}:\n{block}")
    if args.json:
        means = {n: {k: float(v.mean()) for k, v in r.items()} for n, r in res["arrays"].items()}
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "means": means}, indent=1))


if __name__ == "__main__":
    main()
