"""One picture to judge samplers by eye: the generated frames of the predict task under several samplers.

    python samples/compare_samplers.py [--bundle engines/default] [--task predict] [--clips 3] [--runs ddpm:50 ...]

For each held-out clip (predict: 8 given → 8 generated; image_to_video: frame 0 given; unconditional: none):
a row of the true frames at the generated positions, then one row per sampler
(`sampler:steps[:eta]`), each frame upscaled 4× with a red border; clips are separated by a white gap (the
first --show clips). The centre-of-mass metric of benchmarks/eval_physics.py cannot see a blurred or smeared
ball; the picture can, and so can the printed edge statistics over all --clips: each pixel's ball coverage c
(its colour projected from the background onto the ball colour, 0…1), counted as core (c > 0.9) and soft
(0.1 < c < 0.9) pixels per frame. The renderer's anti-aliased disc has a one-pixel soft rim; a blurred ball
has fewer core and more soft pixels than the truth. Writes samples/samplers.png (or --out).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from make_samples import framed  # noqa: E402
from vdt_export import bouncing  # noqa: E402  (numpy only)
from vdt_runtime import Pipeline  # noqa: E402
from vdt_runtime.settings import parse_sampling  # noqa: E402

RUNS = ["ddpm:50", "ddim:5", "ddim:10", "ddim:20", "dpmpp:20:1"]
TOTAL = 16
TASKS = {"predict": 8, "image_to_video": 1, "unconditional": 0}  # task -> given frames at the start
CORE = (15, 45)  # a frame whose core count lies outside this has lost its ball, split it or smeared it (truth: 30)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(HERE.parent / "engines" / "default"))
    ap.add_argument("--clips", type=int, default=3, help="clips generated (the statistics use all)")
    ap.add_argument("--show", type=int, default=3, help="clips drawn in the picture")
    ap.add_argument("--first", type=int, default=0, help="first held-out clip index (EVAL_SEED_BASE + first)")
    ap.add_argument("--runs", nargs="+", default=RUNS, help="sampler:steps[:eta] …")
    ap.add_argument("--task", choices=list(TASKS), default="predict",
                    help="predict (8 given → 8), image_to_video (frame 0 given) or unconditional (none given)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "samplers.png")
    args = ap.parse_args(argv)
    runs = [parse_sampling(r) for r in args.runs]
    pipe = Pipeline.load(args.bundle, backend="cpu")
    cond = TASKS[args.task]
    generated = np.ones(TOTAL - cond, bool)
    rows, stats = [], {name: [] for name in ["truth", *args.runs]}
    for n, i in enumerate(range(args.first, args.first + args.clips)):
        truth = bouncing.clip(bouncing.EVAL_SEED_BASE + i)
        clips = {"truth": truth[cond:]}
        for name, (sampler, steps, eta) in zip(args.runs, runs):
            kw = {"cond": cond} if args.task == "predict" else {}
            clips[name] = pipe.run(truth[:cond] if cond else None, task=args.task, total=TOTAL, sampler=sampler,
                                   steps=steps, eta=eta, seed=args.seed + i, **kw).frames[cond:]
        for name, frames in clips.items():
            stats[name].append(edge_counts(frames))
            if n < args.show:
                rows.append(np.concatenate(list(framed(frames, generated ^ (name == "truth"), scale=4)), axis=1))
        if n < args.show:
            rows.append(np.full((12, rows[-1].shape[1], 3), 255, np.uint8))
    imageio.imwrite(args.out, np.concatenate(rows[:-1], axis=0))
    print(f"wrote {args.out}: per clip, truth (green) then {', '.join(args.runs)} (red)")
    print(f"{args.task}: ball pixels per generated frame over {args.clips} clips (mean): core c > 0.9, soft "
          f"0.1 < c < 0.9; broken = frames with core outside {CORE[0]}..{CORE[1]} (no ball, two, or smeared)")
    for name, counts in stats.items():
        counts = np.concatenate(counts)
        core, soft = counts.mean(axis=0)
        broken = int(((counts[:, 0] < CORE[0]) | (counts[:, 0] > CORE[1])).sum())
        print(f"  {name:<12} core {core:5.1f}  soft {soft:5.1f}  soft/core {soft / max(core, 1e-9):.2f}  "
              f"broken {broken}/{len(counts)}")


def edge_counts(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 → [T, 2]: pixels per frame with ball coverage > 0.9 (core) and in 0.1…0.9 (soft)."""
    bg, ball = bouncing.BACKGROUND * 255, bouncing.BALL * 255
    c = ((frames.astype(np.float64) - bg) @ (ball - bg)) / np.dot(ball - bg, ball - bg)
    return np.stack([(c > 0.9).sum((1, 2)), ((c > 0.1) & (c < 0.9)).sum((1, 2))], axis=1)


if __name__ == "__main__":
    main()
