"""Where one denoiser call spends its time: per-operator kernel times, for each graph of a bundle and runtime.

    python benchmarks/profile_denoiser.py --bundle engines/default
    python benchmarks/profile_denoiser.py --vdt-s2          # a random VDT-S/2, 16 frames, 32×32×4 latents

Graphs: the standard denoiser (`files["fp32"]`), the onnxruntime-fused one (`fused["fp32"]`) and int8 when the
bundle has them, on CPUExecutionProvider; then, when openvino is installed, the standard graph in OpenVINO at
each precision this CPU runs (fp32, bf16, int8 weight compression), with the kernel OpenVINO chose for the
heaviest operators (its exec type names the ISA and precision, e.g. brgemm_avx512_bf16). Batch 1, T = the
declared opt; the last of 3 runs is reported.
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


def profile_openvino(bundle: Path, precision: str, feeds: dict, runs: int = 3) -> tuple[float, collections.Counter, list[str], str]:
    """(last run ms, op type -> ms, devices, the heaviest operators' kernels) for the bundle's standard denoiser."""
    import time

    import openvino as ov

    from vdt_runtime.backends import openvino as ov_backend
    from vdt_runtime.bundle import Bundle

    model = ov.Core().read_model(str(Bundle.load(bundle).file_path("denoiser", "fp32")))
    if precision == "int8":
        ov_backend.compress_weights(model)
    hint = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[precision]
    compiled = ov.Core().compile_model(model, "CPU", {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    for _ in range(runs):
        start = time.perf_counter()
        request.infer(list(feeds.values()))
        ms = (time.perf_counter() - start) * 1e3
    ops: collections.Counter = collections.Counter()
    kernels: collections.Counter = collections.Counter()
    for info in request.get_profiling_info():
        t = info.real_time.total_seconds() * 1e3
        ops[info.node_type] += t
        kernels[f"{info.node_type}:{info.exec_type}"] += t
    top = ", ".join(k for k, _ in kernels.most_common(3))
    return ms, ops, [f"OpenVINO:{d}" for d in compiled.get_property("EXECUTION_DEVICES")], top


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
            from vdt_export.sources import tiny_vae_config

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
        from vdt_runtime.backends import available, runnable
        from vdt_runtime.bundle import Bundle

        if available("openvino") is None:
            for precision in runnable(Bundle.load(bundle), "openvino")["denoiser"]:
                ms, ops, providers, kinds = profile_openvino(bundle, precision, feeds)
                kernels = sum(ops.values())
                top = ", ".join(f"{op} {t:.1f} ({100 * t / kernels:.0f} %)" for op, t in ops.most_common(TOP))
                rows.append({"graph": f"OpenVINO {precision} ({stage['files']['fp32']}; kernels: {kinds})",
                             "providers": ", ".join(providers), "call ms": f"{ms:.1f}",
                             "kernels ms": f"{kernels:.1f}", "top operators, ms": top})
    print(f"{machine()}\nbundle: {'random VDT-S/2' if args.vdt_s2 else bundle} · latents {shape}\n")
    print(table(rows, ("graph", "providers", "call ms", "kernels ms", "top operators, ms")))


if __name__ == "__main__":
    main()
