"""`vdt-export trt BUNDLE`: build TensorRT engines for a bundle's stages into the engine cache (outside the bundle).

    vdt-export trt engines/default                                  # fp32 + fp16 (when the bundle has fp16 ONNX)
    vdt-export trt engines/vdt-s2 --precision fp16 --frame-buckets 4,8,16 --workspace-gb 8
    vdt-export trt engines/vdt-s2 --version-compatible --hardware-compat ampere+ --cache-dir ship/   # to ship

The builder, cache key and cache checks are vdt_runtime.backends.trt_engines (the runtime builds a missing engine with the
same code); this file is the command. Needs tensorrt and cuda-python (pip install 'vdt[tensorrt]') and a GPU.
"""
from __future__ import annotations

from pathlib import Path

from vdt_runtime.backends import trt_engines as te
from vdt_runtime.bundle import STAGES, Bundle


def build_bundle_engines(bundle_dir: str | Path, *, precisions: tuple[str, ...] | None = None,
                         stages: tuple[str, ...] = STAGES, frame_buckets: tuple[int, ...] = (),
                         cache_dir: Path | None = None, device_id: int = 0, force: bool = False,
                         log=print, **flags) -> list[tuple[str, str, Path]]:
    """Build (or find) one engine per stage and precision; returns (stage, precision, plan path) rows.
    `force` rebuilds even when a usable engine is cached. `flags`: BuildSpec's workspace_gb, tf32,
    version_compatible, hardware_compat."""
    bundle = Bundle.load(bundle_dir, verify=True)  # the hashes the cache key uses are checked first
    device = te.device_info(device_id)
    cache_dir = Path(cache_dir) if cache_dir is not None else te.default_cache_dir()
    rows = []
    for stage in stages:
        have = [p for p in te.PRECISIONS if p in bundle.stage(stage).files]
        for precision in (precisions or have):
            if precision not in have and stage != "denoiser":  # a denoiser without it is refused by build_spec
                log(f"skip {stage} {precision}: the bundle has no {precision} ONNX for it")
                continue
            spec = te.build_spec(bundle, stage, precision, frame_buckets=frame_buckets if stage == "denoiser" else (),
                                 **flags)
            if force:
                blob = te.build_engine(bundle.file_path(stage, precision), spec,
                                       timing_cache=te.timing_cache_path(cache_dir, device), log=log)
                path = te.write_engine(cache_dir, spec, device, blob)
            else:
                path = te.ensure_engine(bundle, spec, device, cache_dir, log=log)
            rows.append((stage, precision, path))
    return rows
