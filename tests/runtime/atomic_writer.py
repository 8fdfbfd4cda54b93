"""Child process for tests/runtime/test_atomic.py: rewrite one output forever through a slowed writer, narrating.

    python tests/runtime/atomic_writer.py KIND TARGET [SOURCE_BUNDLE]

KIND is gif | mp4 | pngs (vdt_runtime.video.write_video), checkpoint (vdt_export.checkpoint.save_state_dict)
or bundle (vdt_export.bundle.export_bundle). Version k of the output is written, then "saved k" is printed.
The real writer is wrapped so that it prints "mark" and pauses at several points while the data is only
in the temp file; the parent SIGKILLs this process right after some "mark", i.e. mid-write.
"""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np

PAUSE = 0.15  # seconds after each mark: the parent's SIGKILL lands inside this window


def mark() -> None:
    print("mark", flush=True)
    time.sleep(PAUSE)


def video_version(k: int) -> np.ndarray:
    """Few-colour 8x8-block frames (GIF-exact, H.264-friendly), colours from seed k: versions differ plainly."""
    colours = np.random.default_rng(k).integers(0, 256, (4, 3), dtype=np.uint8)
    pattern = np.random.default_rng(1000).integers(0, 4, (6, 4, 4)).repeat(8, axis=1).repeat(8, axis=2)
    return colours[pattern]  # [6, 32, 32, 3]


def slowed(real):
    def writer(*args, **kw):
        mark()
        real(*args, **kw)
        mark()  # the data is complete in the temp file; the rename has not happened yet
    return writer


def run_video(kind: str, target: Path) -> None:
    from vdt_runtime import video

    name = {"gif": "_write_gif", "mp4": "_write_mp4", "pngs": "_write_png"}[kind]
    setattr(video, name, slowed(getattr(video, name)))
    for k in range(10**6):
        video.write_video(target, video_version(k))
        print(f"saved {k}", flush=True)


def run_checkpoint(target: Path) -> None:
    import torch

    from vdt_export import checkpoint

    real_save = torch.save

    def chunked_save(obj, path):  # torch.save through a slow, chunked file write
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        with open(path, "wb") as f:
            for i in range(0, len(data), 1 << 16):
                f.write(data[i: i + (1 << 16)])
                f.flush()
                mark()

    checkpoint.torch.save = chunked_save
    for k in range(10**6):
        checkpoint.save_state_dict({"w": torch.full((4, 1 << 14), float(k))}, target)
        print(f"saved {k}", flush=True)


def run_bundle(target: Path, source: Path) -> None:
    from vdt_export import bundle
    from vdt_export.models import VDT, config_from_name
    from vdt_export.sources import build_vae, tiny_vae_config

    def copier(stage: str):
        def export(model, out, **kw):  # the stage's real ONNX (and the weights it reads) from `source`, slowly
            out = Path(out)
            copies = {source / bundle.STAGE_FILES[stage]: out}
            if stage == "denoiser" and (source / bundle.DENOISER_DATA).is_file():
                copies[source / bundle.DENOISER_DATA] = out.parent / bundle.DENOISER_DATA
            for src_path, dst_path in copies.items():
                with open(src_path, "rb") as src, open(dst_path, "wb") as dst:
                    while block := src.read(1 << 18):
                        dst.write(block)
                        dst.flush()
                        mark()
            return out
        return export

    bundle.export_denoiser = copier("denoiser")
    bundle.export_vae_encoder = copier("vae_encoder")
    bundle.export_vae_decoder = copier("vae_decoder")
    vdt = VDT(config_from_name("VDT-tiny", input_size=8, num_frames=8, in_channels=4)).eval()
    vae = build_vae(tiny_vae_config()).eval()
    for k in range(10**6):
        bundle.export_bundle(vdt, vae, target, name=f"v{k}", image_size=16)
        print(f"saved {k}", flush=True)


def main(argv: list[str]) -> None:
    kind, target = argv[0], Path(argv[1])
    if kind in ("gif", "mp4", "pngs"):
        run_video(kind, target)
    elif kind == "checkpoint":
        run_checkpoint(target)
    elif kind == "bundle":
        run_bundle(target, Path(argv[2]))
    else:
        raise SystemExit(f"unknown kind {kind!r}")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main(sys.argv[1:])
