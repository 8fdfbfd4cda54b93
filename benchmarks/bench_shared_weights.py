"""Does reading weights from the shared denoiser.data change speed? Interleaved A/B on the CPU provider.

    python benchmarks/bench_shared_weights.py --bundle engines/default --repeats 20
    python benchmarks/bench_shared_weights.py --vdt-s2 --repeats 10     # a random VDT-S/2, 16 frames, 32×32×4

For each denoiser graph of the bundle (standard, fused): A = a copy of the graph with every weight embedded in
the .onnx (how bundles stored it before), B = the bundle's own file reading the shared denoiser.data. Both
are opened once (session creation timed, A B A B …) and then called round-robin (batch 1, T = the declared
opt, 1 warm-up). Besides each median it gives the median of the per-round ratios B/A (the two calls of a round
ran back to back), which is steadier on a shared machine. Prints the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, interleaved, machine, median, table  # noqa: E402


def _inline_copy(src: Path, dst: Path) -> Path:
    """The graph at `src` saved with all its weights inside one .onnx file."""
    import onnx

    onnx.save(onnx.load(str(src)), str(dst))
    return dst


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "engines" / "default")
    ap.add_argument("--vdt-s2", action="store_true", help="a random VDT-S/2 bundle instead")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--loads", type=int, default=3, help="session creations timed per variant")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vdt-shared-") as tmp:
        bundle = args.bundle
        if args.vdt_s2:
            from _common import random_bundle
            from vdt_export.models import config_from_name
            from vdt_export.sources import tiny_vae_config

            bundle = Path(tmp) / "vdt-s2"
            random_bundle(bundle, config_from_name("VDT-S/2", input_size=32, num_frames=16), tiny_vae_config(),
                          int8=False)
        stage = json.loads((bundle / "manifest.json").read_text())["stages"]["denoiser"]
        graphs = {"standard": stage["files"]["fp32"], **{"fused": f for f in stage.get("fused", {}).values()}}
        shape = [1 if d == "batch" else stage["dynamic_axes"]["frames"]["opt"] if d == "frames" else d
                 for d in stage["inputs"][0]["shape"]]
        feeds = {stage["inputs"][0]["name"]: np.random.default_rng(0).standard_normal(shape).astype(np.float32),
                 stage["inputs"][1]["name"]: np.array([500.0], np.float32)}
        load_before = os.getloadavg()
        rows = []
        for label, fname in graphs.items():
            paths = {"A embedded": _inline_copy(bundle / fname, Path(tmp) / f"inline-{fname}"),
                     "B shared data": bundle / fname}
            loads = {k: [] for k in paths}
            for _ in range(args.loads):
                for k, p in paths.items():
                    start = time.perf_counter()
                    _session(p)
                    loads[k].append(time.perf_counter() - start)
            sessions = {k: _session(p) for k, p in paths.items()}
            outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
            assert np.array_equal(outs["A embedded"], outs["B shared data"]), "A and B must compute the same"
            times = interleaved({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}, args.repeats)
            base = median(times["A embedded"])
            # per round B/A: the two calls of one round ran back to back, so they saw about the same load
            paired = np.array(times["B shared data"]) / np.array(times["A embedded"])
            q1, q2, q3 = np.percentile(paired, [25, 50, 75])
            for k, p in paths.items():
                size = p.stat().st_size + (os.path.getsize(bundle / "denoiser.data") if k.startswith("B") else 0)
                rows.append({"graph": label, "storage": k, "providers": ", ".join(sessions[k].get_providers()),
                             "files MB": f"{size / 1e6:.1f}", "session load s": f"{median(loads[k]):.3f}",
                             "call ms (median)": f"{1000 * median(times[k]):.1f}",
                             "min–max ms": f"{1000 * min(times[k]):.1f}–{1000 * max(times[k]):.1f}",
                             "ratio of medians vs A": f"{median(times[k]) / base:.3f}",
                             "per-round B/A, median (IQR)": "—" if k.startswith("A") else
                             f"{q2:.3f} ({q1:.3f}–{q3:.3f})"})
        load_after = os.getloadavg()
    print(f"{machine()}\nbundle: {'random VDT-S/2' if args.vdt_s2 else bundle} · latents {shape} · fp32 · "
          f"{args.repeats} interleaved calls each · load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
          f"\n")
    print(table(rows, tuple(rows[0])))


if __name__ == "__main__":
    main()
