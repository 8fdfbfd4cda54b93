"""Benchmark plumbing: machine description, interleaved median timing, markdown tables, random bundles."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COLUMNS = ("what", "device", "providers", "precision", "denoiser graph", "batch", "frames", "steps", "time", "ratio vs torch")


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")  # the ones that matter here


def cpu() -> str:
    """`lscpu`: model name, family, model, and which of CPU_FLAGS the CPU has (e.g. avx512_bf16, amx_bf16)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or platform.machine()
    info = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in out.splitlines() if ":" in ln}
    flags = set(info.get("Flags", "").split())
    have = [f for f in CPU_FLAGS if f in flags]
    return (f"{info.get('Model name', platform.machine())} (family {info.get('CPU family', '?')}, model "
            f"{info.get('Model', '?')}; flags: {', '.join(have) or 'none of ' + ', '.join(CPU_FLAGS)}; "
            f"no {', '.join(f for f in CPU_FLAGS if f not in flags) or '-'})")


def load() -> str:
    """The load average (1, 5, 15 min) against the core count: how contended the machine was."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def machine() -> str:
    """One line: CPU (model, family, flags), cores, date (UTC), load, library versions."""
    import importlib.metadata

    import numpy
    import onnxruntime

    versions = f"numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}"
    try:
        versions += f", openvino {importlib.metadata.version('openvino')}"
    except importlib.metadata.PackageNotFoundError:
        versions += ", openvino not installed"
    if "torch" in sys.modules:
        versions += f", torch {sys.modules['torch'].__version__} ({sys.modules['torch'].get_num_threads()} threads)"
    return (f"{cpu()}, {os.cpu_count()} cores · {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {load()} · "
            f"Python {platform.python_version()}, {versions}")


def training_running() -> bool:
    """True if a `train_tiny` process shares the machine (numbers are then provisional)."""
    out = subprocess.run(["pgrep", "-f", "vdt_export.train_tiny"], capture_output=True, text=True, check=False)
    return bool(out.stdout.strip())


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each contender, run round-robin (A B C A B C …) so machine load hits all alike."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def parse_run(text: str) -> tuple[str, int, float]:
    """'sampler:steps' or 'sampler:steps:eta' → (sampler, steps, eta), for argparse."""
    from vdt_runtime.errors import InputError
    from vdt_runtime.settings import parse_sampling

    try:
        return parse_sampling(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    """A markdown table of `rows` (dicts keyed by column name; missing cells print as '')."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def random_bundle(out_dir: Path, config, vae_config: dict, *, diffusion: dict | None = None, seed: int = 0,
                  scale_factor: float = 0.18215, int8: bool = True, reuse: bool = False):
    """Export a bundle of a randomised VDT (`config`) + VAE (`vae_config`) to out_dir, plus its INT8 denoiser.
    Returns (vdt, vae) — the torch modules holding the very same weights. With `reuse`, a bundle already in
    out_dir is kept (the same config and seed give the same weights) and only the modules are rebuilt."""
    from vdt_export.bundle import export_bundle
    from vdt_export.sources import randomize_
    from vdt_export.models import VDT
    from vdt_export.quantize import quantize_bundle
    from vdt_export.vae import downsample_factor
    from vdt_export.sources import build_vae

    vdt = randomize_(VDT(config), seed=seed).eval()
    vae = randomize_(build_vae(vae_config), seed=seed + 1).eval()
    if reuse and (out_dir / "manifest.json").is_file():
        return vdt, vae
    export_bundle(vdt, vae, out_dir, name=out_dir.name, image_size=config.input_size * downsample_factor(vae),
                  scale_factor=scale_factor, diffusion=diffusion, training={"source": "random-init", "seed": seed})
    if int8:
        quantize_bundle(out_dir)
    return vdt, vae


def write_block(path: Path, name: str, text: str) -> Path:
    """Replace what lies between the lines `<!-- name: begin ... -->` and `<!-- name: end -->` of a markdown file
    (the generated block of a script) with `text`, atomically; the markers stay."""
    import re

    path = Path(path)
    begin = re.compile(rf"^<!-- {re.escape(name)}: begin\b.*-->$", re.M)
    end = re.compile(rf"^<!-- {re.escape(name)}: end -->$", re.M)
    doc = path.read_text(encoding="utf-8")
    b = begin.search(doc)
    e = end.search(doc, b.end()) if b else None
    if b is None or e is None:
        raise SystemExit(f"{path} has no '<!-- {name}: begin -->' ... '<!-- {name}: end -->' markers")
    return atomic_write_text(path, doc[: b.end()] + "\n" + text.strip("\n") + "\n" + doc[e.start():])


def atomic_write_text(path: Path, text: str) -> Path:
    """Write UTF-8 text to `path` via a temp file renamed into place."""
    from vdt_runtime._atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
