"""Where one denoiser call spends its time: onnxruntime's per-operator kernel times, for each graph of a bundle.

    python benchmarks/profile_denoiser.py --bundle engines/default
    python benchmarks/profile_denoiser.py --vdt-s2          # a random VDT-S/2, 16 frames, 32×32×4 latents

Graphs: the standard denoiser (`files["fp32"]`), the onnxruntime-fused one (`fused["fp32"]`) and int8 when the
bundle has them. Batch 1, T = the declared opt, CPUExecutionProvider; the last of 3 runs is reported.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, table  # noqa: E402

TOP = 8


def profile(path: Path, feeds: dict, runs: int = 3) -> tuple[float, collections.Counter, list[str]]:
    """(last run ms, op type -> kernel ms in that run, providers) for the model at `path`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "vdt-profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feeds)
    trace = session.end_profiling()
    try:
        events = json.loads(Path(trace).read_text())
    finally:
        os.remove(trace)
    last = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-1]
    ops: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last["ts"]:
            ops[e["args"]["op_name"]] += e["dur"] / 1e3
    return last["dur"] / 1e3, ops, session.get_providers()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "engines" / "default")
    ap.add_argument("--vdt-s2", action="store_true", help="profile a random VDT-S/2 bundle instead")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vdt-profile-") as tmp:
        bundle = args.bundle
        if args.vdt_s2:
            from _common import random_bundle
            from vdt_export.models import config_from_name
            from vdt_export.vae import tiny_vae_config

            bundle = Path(tmp) / "vdt-s2"
            random_bundle(bundle, config_from_name("VDT-S/2", input_size=32, num_frames=16), tiny_vae_config())
        stage = json.loads((bundle / "manifest.json").read_text())["stages"]["denoiser"]
        graphs = {"standard fp32": stage["files"]["fp32"], **{f"fused {p}": f for p, f in stage.get("fused", {}).items()}}
        if "int8" in stage["files"]:
            graphs["int8"] = stage["files"]["int8"]
        shape = [1 if d == "batch" else stage["dynamic_axes"]["frames"]["opt"] if d == "frames" else d
                 for d in stage["inputs"][0]["shape"]]
        feeds = {stage["inputs"][0]["name"]: np.random.default_rng(0).standard_normal(shape).astype(np.float32),
                 stage["inputs"][1]["name"]: np.array([500.0], np.float32)}
        rows = []
        for label, fname in graphs.items():
            ms, ops, providers = profile(bundle / fname, feeds)
            kernels = sum(ops.values())
            top = ", ".join(f"{op} {t:.1f} ({100 * t / kernels:.0f} %)" for op, t in ops.most_common(TOP))
            rows.append({"graph": f"{label} ({fname})", "providers": ", ".join(providers),
                         "call ms": f"{ms:.1f}", "kernels ms": f"{kernels:.1f}", "top operators, ms": top})
    print(f"{machine()}\nbundle: {'random VDT-S/2' if args.vdt_s2 else bundle} · latents {shape}\n")
    print(table(rows, ("graph", "providers", "call ms", "kernels ms", "top operators, ms")))


if __name__ == "__main__":
    main()
