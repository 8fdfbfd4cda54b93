"""Peak memory (VmHWM of a fresh process per row): streamed vs in-memory rollout by length, and VAE slice size.

    python benchmarks/bench_memory.py rollout [--bundle engines/default] [--totals 16 256] [--steps 2]
    python benchmarks/bench_memory.py vae --bundle BUNDLE [--slices 1 4 16] [--frames 16] [--steps 1]

`rollout`: `vdt run --task rollout` streams window by window to an .mp4 (Pipeline.rollout_stream); the
in-memory Pipeline.rollout keeps every frame. `vae`: a predict of --frames frames from one given frame,
so the decoder decodes frames - 1 of them, `vae_slice` per call. Each row runs in its own process, so the
peak is that row's alone (model loading included).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(spec: dict) -> dict:
    import numpy as np

    from vdt_runtime import Pipeline, write_video

    pipe = Pipeline.load(spec["bundle"], backend="cpu", options={"threads": spec["threads"]},
                         vae_slice=spec.get("vae_slice"))
    size = pipe.image_size
    clip = np.random.default_rng(0).integers(0, 256, (spec["cond"], size, size, 3), dtype=np.uint8)
    loaded = peak_rss_mib()
    start = time.perf_counter()
    kw = dict(steps=spec["steps"], sampler="ddim", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        if spec["mode"] == "streamed":
            write_video(Path(tmp) / "out.mp4", pipe.rollout_stream(clip, spec["total"], spec["cond"], **kw))
        elif spec["mode"] == "in memory":
            write_video(Path(tmp) / "out.mp4", pipe.rollout(clip, spec["total"], spec["cond"], **kw).frames)
        else:  # predict
            pipe.predict(clip, cond=spec["cond"], total=spec["total"], **kw)
    return {"seconds": time.perf_counter() - start, "after_load_mib": loaded, "peak_mib": peak_rss_mib(),
            "providers": list(pipe.providers["denoiser"]), "vae_slice": pipe.vae_slice}


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["rollout", "vae"])
    p.add_argument("--bundle", default=str(ROOT / "engines" / "default"))
    p.add_argument("--totals", type=int, nargs="+", default=[16, 256])
    p.add_argument("--slices", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print(machine())
    rows = []
    if args.what == "rollout":
        print("| rollout | frames | steps | peak RSS | after load | growth | s | load avg |")
        print("|---|---|---|---|---|---|---|---|")
        for mode in ("streamed", "in memory"):
            for total in args.totals:
                spec = dict(bundle=args.bundle, threads=args.threads, mode=mode, total=total, cond=4, steps=args.steps)
                r = run_child(spec)
                rows.append(r)
                print(f"| {mode} | {total} | {args.steps} | {r['peak_mib']:.0f} MiB | {r['after_load_mib']:.0f} MiB | "
                      f"+{r['peak_mib'] - r['after_load_mib']:.0f} MiB | {r['seconds']:.1f} | {load_average()} |",
                      flush=True)
    else:
        print("| vae_slice | frames decoded | peak RSS | after load | growth | s | load avg |")
        print("|---|---|---|---|---|---|---|")
        for k in args.slices:
            spec = dict(bundle=args.bundle, threads=args.threads, mode="predict", total=args.frames, cond=1,
                        steps=args.steps, vae_slice=k)
            r = run_child(spec)
            rows.append(r)
            print(f"| {k} | {args.frames - 1} | {r['peak_mib']:.0f} MiB | {r['after_load_mib']:.0f} MiB | "
                  f"+{r['peak_mib'] - r['after_load_mib']:.0f} MiB | {r['seconds']:.1f} | {load_average()} |",
                  flush=True)
    print(f"providers: {rows[0]['providers']}; precision fp32; {args.threads} intra-op threads")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.path.insert(0, str(ROOT))
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        main()
