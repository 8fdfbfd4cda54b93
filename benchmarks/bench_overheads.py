"""Runtime overheads: time outside backend calls, cold start, and peak RSS vs the torch reference.

    python benchmarks/bench_overheads.py --bundle engines/default --checkpoint checkpoints/default

1. Share of predict wall time spent outside the ONNX Runtime calls (NumPy sampler, mask assembly, validation,
   uint8 conversion), from the pipeline's own per-stage timings; per step, the NumPy sampler time vs the
   denoiser call time. Target ≤ 1 %. `--spinning both` (default) measures it with onnxruntime's intra-op
   spinning on (its default) and off (`Pipeline.load(..., options={"spinning": False})`).
2. Cold start in a fresh interpreter: `import vdt_runtime` + `Pipeline.load` (target ≤ 1 s); torch: `import torch,
   diffusers` + loading the checkpoint.
3. Peak RSS (/proc VmHWM; ru_maxrss also shown) of a fresh process doing one full predict (8 → 16 frames, DDPM): target ≤ 300 MiB.
Without engines/default (or the checkpoint) a bundle + checkpoint of train_tiny's configs with random weights
is written to a temp folder. `--vdt-s2` measures only part 1, on a random VDT-S/2 (16 frames, 32×32×4 latents,
the tiny VAE), to show the share at a realistic denoiser size:

    python benchmarks/bench_overheads.py --vdt-s2 --steps 5 --repeats 3 --spinning on --also
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, median, parse_run, table, training_running  # noqa: E402

COND, TOTAL = 8, 16

_ORT_CHILD = """
import resource, sys, time
_hwm = lambda: next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
t0 = time.perf_counter()
import vdt_runtime
t1 = time.perf_counter()
pipe = vdt_runtime.Pipeline.load(sys.argv[1], backend="cpu")
t2 = time.perf_counter()
if int(sys.argv[2]):
    from vdt_export import bouncing
    frames = bouncing.clip(bouncing.EVAL_SEED_BASE)[:{cond}]
    pipe.predict(frames, cond={cond}, total={total}, sampler="ddpm", steps=int(sys.argv[2]), seed=0)
print(t1 - t0, t2 - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _hwm(), "torch" in sys.modules)
""".format(cond=COND, total=TOTAL)

_TORCH_CHILD = """
import resource, sys, time
_hwm = lambda: next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
t0 = time.perf_counter()
import torch, diffusers
sys.path.insert(0, sys.argv[3])
from torch_reference import TorchPipeline
t1 = time.perf_counter()
ref = TorchPipeline.from_checkpoint(sys.argv[1])
t2 = time.perf_counter()
if int(sys.argv[2]):
    from vdt_export import bouncing
    ref.predict(bouncing.clip(bouncing.EVAL_SEED_BASE), cond={cond}, total={total}, steps=int(sys.argv[2]))
print(t1 - t0, t2 - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _hwm(), True)
""".format(cond=COND, total=TOTAL)


def _child(code: str, *args) -> tuple[float, float, float, float, bool]:
    """(import s, import+load s, ru_maxrss MiB, VmHWM MiB, torch imported) from a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise RuntimeError(f"child failed:\n{out.stderr[-2000:]}")
    imp, load, maxrss, hwm, torch_in = out.stdout.split()[-5:]
    return float(imp), float(load), float(maxrss), float(hwm), torch_in == "True"


def _models(args, tmp: Path) -> tuple[Path, Path, str]:
    """(bundle, checkpoint folder, description): the real default model, or random ones in tmp."""
    if args.bundle.joinpath("manifest.json").is_file() and args.checkpoint.joinpath("vdt.safetensors").is_file():
        return args.bundle, args.checkpoint, f"{args.bundle} (trained)"
    from _common import random_bundle
    from vdt_export.sources import save_checkpoint_folder
    from vdt_export.train_tiny import DIFFUSION, VAE_CONFIG, VDT_CONFIG

    vdt, vae = random_bundle(tmp / "default-random", VDT_CONFIG, VAE_CONFIG, diffusion=DIFFUSION, int8=False)
    save_checkpoint_folder(tmp / "ckpt", vdt, vae, scale_factor=0.18215, diffusion=DIFFUSION)
    return tmp / "default-random", tmp / "ckpt", "train_tiny configs, RANDOM weights (engines/default missing)"


def outside_share(bundle: Path, steps: int, repeats: int, spinning: bool = True, sampler: str = "ddpm",
                  eta: float = 0.0) -> list[dict]:
    """Rows: where predict's wall time goes, from the pipeline's own timings (median over repeats).
    `spinning` is the onnxruntime intra-op busy-wait session option (Pipeline.load(..., options={"spinning": ...}))."""
    from vdt_export import bouncing
    from vdt_runtime import Pipeline

    pipe = Pipeline.load(bundle, backend="cpu", options={"spinning": spinning})
    k = pipe.image_size // bouncing.SIZE  # larger bundles get the clip upsampled (nearest)
    frames = bouncing.clip(bouncing.EVAL_SEED_BASE)[:COND].repeat(k, axis=1).repeat(k, axis=2)
    samples = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        res = pipe.predict(frames, cond=COND, total=TOTAL, steps=steps, sampler=sampler, eta=eta, seed=0, timings=True)
        samples.append((time.perf_counter() - start, res.timings))
    samples = samples[1:]
    wall = median([w for w, _ in samples])
    stage = {k: median([t.get(k, 0.0) for _, t in samples]) for k in ("denoiser", "sampler", "vae_encoder",
                                                                      "vae_decoder")}
    backend = stage["denoiser"] + stage["vae_encoder"] + stage["vae_decoder"]
    outside = median([w - t["denoiser"] - t.get("vae_encoder", 0) - t.get("vae_decoder", 0) for w, t in samples])
    prov = ", ".join(pipe.providers["denoiser"])
    tag = f"[{sampler}{f' η={eta:g}' if eta else ''} {steps}{'' if spinning else ', spinning=False'}] "
    rows = [
        {"measure": "predict wall time", "value": f"{wall:.3f} s", "target": "", "providers": prov},
        {"measure": "  in backend calls (denoiser + VAE)", "value": f"{backend:.3f} s", "target": "", "providers": prov},
        {"measure": "  outside backend calls (NumPy sampler, masks, checks, uint8)",
         "value": f"{outside * 1e3:.1f} ms = {100 * outside / wall:.2f} %", "target": "≤ 1 %", "providers": prov},
        {"measure": "per step: NumPy sampler vs denoiser call",
         "value": f"{stage['sampler'] / steps * 1e3:.2f} ms vs {stage['denoiser'] / steps * 1e3:.2f} ms = "
                  f"{100 * stage['sampler'] / (stage['sampler'] + stage['denoiser']):.2f} % of a step",
         "target": "≤ 1 %", "providers": prov},
    ]
    for r in rows:
        r["measure"] = r["measure"].replace("  ", "  " + tag, 1) if r["measure"].startswith("  ") else tag + r["measure"]
    return rows


def shares(bundle: Path, args) -> list[dict]:
    """outside_share rows: DDPM at --steps with each --spinning setting, then each --also run (spinning on)."""
    spins = {"on": [True], "off": [False], "both": [True, False]}[args.spinning]
    rows = [row for spin in spins for row in outside_share(bundle, args.steps, args.repeats, spinning=spin)]
    for sampler, steps, eta in args.also:
        rows += outside_share(bundle, steps, args.repeats, sampler=sampler, eta=eta)
    return rows


def _vdt_s2_share(args, tmp: Path) -> None:
    from _common import random_bundle
    from vdt_export.models import config_from_name
    from vdt_export.sources import tiny_vae_config

    bundle = tmp / "vdt-s2"
    random_bundle(bundle, config_from_name("VDT-S/2", input_size=32, num_frames=TOTAL), tiny_vae_config(), int8=False)
    share = shares(bundle, args)
    print(f"{machine()}\nmodel: random VDT-S/2, 32×32×4 latents (64² images, tiny VAE) · batch 1 · {TOTAL} frames "
          f"· fp32\n")
    print(table(share, ("measure", "value", "target", "providers")))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "engines" / "default")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--spinning", choices=["on", "off", "both"], default="both",
                    help="onnxruntime intra-op spinning for the outside-backend share (default: both, on first)")
    ap.add_argument("--vdt-s2", action="store_true", help="only the outside-backend share, on a random VDT-S/2")
    ap.add_argument("--also", nargs="*", type=parse_run, default=[("dpmpp", 20, 1.0), ("ddim", 20, 0.0)],
                    metavar="SAMPLER:STEPS[:ETA]",
                    help="more samplers for the outside-backend share (spinning on); default dpmpp:20:1 ddim:20")
    args = ap.parse_args(argv)
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="vdt-overheads-") as tmp:
        if args.vdt_s2:
            return _vdt_s2_share(args, Path(tmp))
        bundle, ckpt, source = _models(args, Path(tmp))
        share = shares(bundle, args)
        cold = {"ORT": [], "torch": []}
        for _ in range(args.repeats):  # interleaved
            cold["ORT"].append(_child(_ORT_CHILD, bundle, 0))
            cold["torch"].append(_child(_TORCH_CHILD, ckpt, 0, here))
        rss = {"ORT": _child(_ORT_CHILD, bundle, args.steps), "torch": _child(_TORCH_CHILD, ckpt, args.steps, here)}
    note = " · TRAINING WAS RUNNING: provisional" if training_running() else ""
    print(f"{machine()}{note}\nmodel: {source} · DDPM {args.steps} steps · batch 1 · {TOTAL} frames · fp32\n")
    print(table(share, ("measure", "value", "target", "providers")), "\n")
    rows = []
    for name, runs in cold.items():
        what = "import vdt_runtime + Pipeline.load" if name == "ORT" else "import torch, diffusers + load checkpoint"
        rows.append({"what": f"{name}: {what}", "import": f"{median([r[0] for r in runs]):.3f} s",
                     "import + load": f"{median([r[1] for r in runs]):.3f} s (n={len(runs)})",
                     "target": "≤ 1 s" if name == "ORT" else "",
                     "torch imported": str(runs[0][4])})
    print(table(rows, ("what", "import", "import + load", "target", "torch imported")), "\n")
    rows = [{"what": f"{name}: fresh process, load + one predict", "peak RSS (VmHWM)": f"{r[3]:.0f} MiB",
             "ru_maxrss": f"{r[2]:.0f} MiB", "target": "≤ 300 MiB" if name == "ORT" else "",
             "torch imported": str(r[4])} for name, r in rss.items()]
    print(table(rows, ("what", "peak RSS (VmHWM)", "ru_maxrss", "target", "torch imported")))
    print("\nru_maxrss survives exec, so a child started from this (torch-loaded) process inherits the parent's "
          "size as a floor; VmHWM is the child's own peak.")


if __name__ == "__main__":
    main()
