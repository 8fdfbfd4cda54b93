"""Read and write videos as uint8 [T, H, W, 3]: .mp4 / .webm (ffmpeg), .gif, single images, PNG folders."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from vdt_runtime._arrays import as_array
from vdt_runtime._atomic import atomic_dir, atomic_path
from vdt_runtime.errors import InputError

FFMPEG_EXTS = (".mp4", ".webm", ".mov", ".mkv")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
READ_EXTS = FFMPEG_EXTS + (".gif",) + IMAGE_EXTS
WRITE_EXTS = (".mp4", ".gif")  # plus a folder (no extension) of PNGs


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] from a video file, an image (T = 1) or a folder of PNGs (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        names = sorted((p for p in path.iterdir() if p.suffix.lower() == ".png"), key=_natural_key)
        if not names:
            raise InputError(f"folder {str(path)!r} holds no .png frames")
        frames = [_read_image(p) for p in names]
        if len({f.shape for f in frames}) > 1:
            raise InputError(f"PNG frames in {str(path)!r} differ in size: {sorted({f.shape for f in frames})}")
        return np.stack(frames)
    ext = path.suffix.lower()
    if not path.is_file():
        raise InputError(f"input {str(path)!r} does not exist")
    if ext not in READ_EXTS:
        raise InputError(f"cannot read {str(path)!r}: extension {ext!r} is not one of {', '.join(READ_EXTS)} (or a PNG folder)")
    if path.stat().st_size == 0:
        raise InputError(f"video {str(path)!r} is empty (0 bytes); expected a readable {ext} file")
    try:
        if ext in FFMPEG_EXTS:
            frames = _read_ffmpeg(path)
        elif ext == ".gif":
            frames = _read_gif(path)
        else:
            frames = _read_image(path)[None]
    except InputError:
        raise
    except Exception as e:  # decoders raise many types on corrupt input
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # not ffmpeg's whole log
        raise InputError(f"cannot read video {str(path)!r} (corrupt or not a {ext} file): {first}") from None
    if frames.shape[0] == 0:
        raise InputError(f"video {str(path)!r} has no frames")
    return frames


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8) -> Path:
    """Write uint8 [T, H, W, 3] to .mp4, .gif or a folder of PNGs (no extension), atomically; returns the path.

    mp4 (H.264, yuv420p) needs even H and W: odd sizes are padded by repeating the last row/column.
    """
    path = check_output_path(path)
    ext = path.suffix.lower()
    frames = _check_frames(frames)
    if not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps <= 1000):
        raise InputError(f"fps must be a number in (0, 1000], got {fps!r}")
    if ext == ".mp4":
        with atomic_path(path) as tmp:
            _write_mp4(tmp, frames, fps)
    elif ext == ".gif":
        with atomic_path(path) as tmp:
            _write_gif(tmp, frames, fps)
    else:
        with atomic_dir(path) as tmp:
            for i, frame in enumerate(frames):
                _write_png(tmp / f"frame_{i:05d}.png", frame)
    return path


def check_output_path(path: str | os.PathLike) -> Path:
    """An output path write_video accepts (known extension, existing parent folder); checked before any work."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext and ext not in WRITE_EXTS:
        raise InputError(f"cannot write {str(path)!r}: extension {ext!r} is not one of {', '.join(WRITE_EXTS)} "
                         "(or no extension for a folder of PNGs)")
    if not path.parent.is_dir():
        raise InputError(f"output folder {str(path.parent)!r} does not exist")
    _check_writable(path.parent)
    if path.exists() and path.is_dir() != (ext == ""):
        raise InputError(f"output {str(path)!r} exists and is a {'folder' if path.is_dir() else 'file'}")
    return path


def _check_writable(folder: Path) -> None:
    """Create and remove a hidden probe file: the only check that also holds for root and read-only mounts."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".vdt-write-probe.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"output folder {str(folder)!r} is not writable: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)


def _check_frames(frames) -> np.ndarray:
    f = as_array(frames, "frames to write", "uint8 [T, H, W, 3]")
    if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3 or f.shape[0] == 0:
        raise InputError(f"frames to write must be uint8 [T, H, W, 3] with T >= 1, got {f.dtype} {tuple(f.shape)}")
    return f


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """[H, W] gray, [H, W, 1], [H, W, 3] or [H, W, 4] (alpha dropped) → uint8 [H, W, 3]."""
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image // 257).astype(np.uint8)
        else:
            raise InputError(f"unsupported pixel dtype {image.dtype}; expected 8- or 16-bit images")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"unsupported image shape {tuple(image.shape)}")
    if image.shape[-1] in (1, 2):  # gray (+ alpha)
        image = np.repeat(image[..., :1], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _to_rgb(np.asarray(im.convert("RGBA") if im.mode == "P" else im))
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"cannot read image {str(path)!r}: {e}") from None


def _read_gif(path: Path) -> np.ndarray:
    from PIL import Image, ImageSequence

    frames, durations = [], []
    with Image.open(path) as im:
        for frame in ImageSequence.Iterator(im):
            frames.append(_to_rgb(np.asarray(frame.convert("RGB"))))
            durations.append(frame.info.get("duration") or 0)
    # constant frame rate: a frame shown k times the shortest duration counts k times (GIF writers,
    # Pillow included, merge identical consecutive frames into one longer frame)
    base = min((d for d in durations if d > 0), default=0)
    repeats = [max(1, min(round(d / base), 1000)) if base else 1 for d in durations]
    return np.repeat(np.stack(frames), repeats, axis=0)


def _read_ffmpeg(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    import imageio_ffmpeg

    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # even H, W
    writer = imageio_ffmpeg.write_frames(
        str(path), (frames.shape[2], frames.shape[1]), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
        macro_block_size=1, quality=None, output_params=["-crf", "18", "-f", "mp4"], ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    duration = max(int(round(1000 / fps)), 20)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0,
                   optimize=False, disposal=1)


def _write_png(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(frame).save(path, format="PNG")


def _natural_key(p: Path):
    """frame_2.png before frame_10.png."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]
