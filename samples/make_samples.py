"""Write the example input clips and one picture per task for the README.

    python samples/make_samples.py [--bundle engines/default] [--sampling ddim:10]

Inputs: samples/bounce.gif (8 frames, for `vdt run --task predict`) and samples/bounce16.gif (16).
Pictures: samples/tasks/<task>.gif — each frame shows the true clip (left) and the model's clip (right);
given frames have a green border, generated frames a red one — and samples/tasks/strip.png with every
task as two rows (truth, model) of 16 frames. Clips come from held-out seeds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from vdt_export import bouncing  # noqa: E402  (numpy only)
from vdt_runtime import Pipeline  # noqa: E402
from vdt_runtime.settings import parse_sampling  # noqa: E402
from vdt_runtime.video import write_video  # noqa: E402

GIVEN, GENERATED = np.array([40, 170, 60], np.uint8), np.array([220, 50, 40], np.uint8)
TASKS = {  # task -> keyword arguments of Pipeline.run
    "predict": dict(task="predict", cond=8, total=16),
    "backward": dict(task="backward", cond=8, total=16),
    "interpolate": dict(task="interpolate", stride=5, total=16),
    "image_to_video": dict(task="image_to_video", total=16),
    "unconditional": dict(task="unconditional", total=16),
    "complete": dict(task="complete", given=[0, 1, 6, 7, 12], total=16),
    "inpaint": dict(task="inpaint", box=(8, 8, 24, 24), box_frames=list(range(4, 12)), total=16),
}


def framed(frames: np.ndarray, generated: np.ndarray, scale: int = 3) -> np.ndarray:
    """Upscale and give each frame a 2-px border: green if given, red if (partly) generated."""
    big = np.kron(frames, np.ones((1, scale, scale, 1), np.uint8))
    out = np.empty((len(big), big.shape[1] + 4, big.shape[2] + 4, 3), np.uint8)
    out[:] = np.where(generated[:, None, None, None], GENERATED, GIVEN)
    out[:, 2:-2, 2:-2] = big
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(HERE.parent / "engines" / "default"))
    ap.add_argument("--sampling", type=parse_sampling, default=(None, None, None), metavar="SAMPLER:STEPS[:ETA]",
                    help="default: the bundle's recommended sampler")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    truth = bouncing.clip(bouncing.EVAL_SEED_BASE + 11)  # held out; falls, bounces off the floor at frame 11
    write_video(HERE / "bounce.gif", truth[:8], fps=8)
    write_video(HERE / "bounce16.gif", truth, fps=8)
    pipe = Pipeline.load(args.bundle, backend="cpu")
    (HERE / "tasks").mkdir(exist_ok=True)
    rows = []
    for name, kw in TASKS.items():
        sampler, steps, eta = args.sampling
        res = pipe.run(truth, sampler=sampler, steps=steps, eta=eta, seed=args.seed, **kw)
        generated = res.mask.reshape(len(truth), -1).max(axis=1) > 0
        left, right = framed(truth, generated), framed(res.frames, generated)
        gap = np.full((len(truth), left.shape[1], 6, 3), 255, np.uint8)
        write_video(HERE / "tasks" / f"{name}.gif", np.concatenate([left, gap, right], axis=2), fps=4)
        rows += [np.concatenate(list(left), axis=1), np.concatenate(list(right), axis=1)]
        rows.append(np.full((8, rows[-1].shape[1], 3), 255, np.uint8))
        print(f"{name}: done ({res.sampling})")
    imageio.imwrite(HERE / "tasks" / "strip.png", np.concatenate(rows[:-1], axis=0))


if __name__ == "__main__":
    main()
