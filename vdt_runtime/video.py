"""Read and write videos as uint8 [T, H, W, 3]: .mp4 / .webm (ffmpeg), .gif, single images, PNG folders.

Reading is bounded: the header (size, stated frame count) is read first, a wrong size is refused before
anything is decoded, decoding stops at the frames the caller needs and at limits.MAX_DECODED_PIXELS, and a
file that yields fewer frames than its header states is refused as truncated. Writing never destroys what
it did not write: a file output replaces only a regular file, a PNG-folder output goes only into a new or
empty folder or one holding only this tool's frame_NNNNN.png files, and the caller can protect paths (the
input, the bundle) that an output must neither be nor lie in. Frames may arrive as one array or as an
iterable of chunks, written as they come (a streamed rollout never sits in memory).
"""
from __future__ import annotations

import itertools
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePath

import numpy as np

from vdt_runtime._arrays import as_array
from vdt_runtime._atomic import atomic_dir, atomic_path, check_replaceable, is_regular_file
from vdt_runtime.errors import InputError
from vdt_runtime.limits import MAX_DECODED_PIXELS, MAX_IMAGE_SIDE, shorten

FFMPEG_EXTS = (".mp4", ".webm", ".mov", ".mkv")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
READ_EXTS = FFMPEG_EXTS + (".gif",) + IMAGE_EXTS
WRITE_EXTS = (".mp4", ".webm", ".gif")  # plus a folder (no extension) of PNGs
FRAME_NAME = re.compile(r"frame_\d{5,}\.png")  # what a PNG-folder output holds, and all it may hold
_MAX_OUTPUT_NAME = 200  # bytes: the temp entry ".<name>.<random>.tmp" must fit the usual 255-byte NAME_MAX
_GIF_MAX_REPEAT = 1000  # a GIF frame shown k times the shortest duration counts k times, k capped here


def read_video(path: str | os.PathLike, *, max_frames: int | None = None,
               size: tuple[int, int] | None = None) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] from a video file, an image (T = 1) or a folder of PNGs (sorted by name).

    `max_frames`: decode at most this many (the rest of the file is never decoded). `size` (H, W): the frame
    size the caller needs; another size is refused from the header, before decoding. Without `max_frames`,
    a video of more than limits.MAX_DECODED_PIXELS pixels in all is refused rather than decoded.
    """
    try:
        return _read_video(Path(path), max_frames, size)
    except OSError as e:  # a name too long, a loop of symlinks, a folder that cannot be listed, ...
        raise InputError(f"cannot read {shorten(str(path))}: {e.strerror or e}") from None


def _read_video(path: Path, max_frames: int | None, size) -> np.ndarray:
    name = shorten(str(path))
    if path.is_dir():
        header = _png_folder(path)
    else:
        ext = path.suffix.lower()
        if not path.is_file():
            raise InputError(f"input {name} does not exist")
        if ext not in READ_EXTS:
            raise InputError(f"cannot read {name}: extension {shorten(ext)} is not one of {', '.join(READ_EXTS)} "
                             "(or a PNG folder)")
        if path.stat().st_size == 0:
            raise InputError(f"video {name} is empty (0 bytes); expected a readable {ext} file")
        header = _decoding(path, ext, lambda: _open(path, ext))
    (h, w), stated, frames = header
    try:
        return _decode(path, h, w, stated, frames, max_frames, size)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()  # stops an ffmpeg process still decoding the frames not needed


def _decode(path: Path, h: int, w: int, stated: int | None, frames: Iterator, max_frames, size) -> np.ndarray:
    name, ext = shorten(str(path)), path.suffix.lower() or "PNG folder"
    if size is not None and (h, w) != tuple(size):
        raise InputError(f"video {name} is {h}x{w} pixels; this bundle takes {size[0]}x{size[1]}")
    if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
        raise InputError(f"video {name} is {h}x{w} pixels; at most {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} is read")
    budget = MAX_DECODED_PIXELS // (h * w)
    limit = budget if max_frames is None else min(max_frames, budget)
    out, decoded = [], _decoding(path, ext, lambda: frames)
    for frame in decoded:
        if frame.shape != (h, w, 3):
            raise InputError(f"video {name} changes frame size mid-stream: {frame.shape[:2]} after {(h, w)}")
        out.append(frame)
        if len(out) == limit:
            break
    if len(out) == limit and limit < (max_frames or math.inf) and next(decoded, None) is not None:
        more = "" if stated is None else f" (its header states {stated})"
        raise InputError(f"video {name} has more than {limit} frames of {h}x{w}{more}: over the "
                         f"{MAX_DECODED_PIXELS} decoded pixels read from one input; pass max_frames to read fewer")
    if not out:
        raise InputError(f"video {name} has no frames")
    if stated is not None and len(out) < min(stated, limit) - 1:  # one frame of slack for rounded durations
        raise InputError(f"video {name} is truncated or corrupt: decoded {len(out)} of the {stated} frames its "
                         "header states")
    return np.stack(out)


def _decoding(path: Path, ext: str, step):
    """step() with any decoder failure turned into one InputError naming the file; iterators stay guarded."""
    try:
        result = step()
    except InputError:
        raise
    except Exception as e:  # decoders raise many types on corrupt input
        raise _corrupt(path, ext, e) from None
    if isinstance(result, Iterator):
        return _guarded(path, ext, result)
    return result


def _guarded(path: Path, ext: str, frames: Iterator) -> Iterator[np.ndarray]:
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except InputError:
            raise
        except Exception as e:
            raise _corrupt(path, ext, e) from None
        yield frame


def _corrupt(path: Path, ext: str, e: Exception) -> InputError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # not ffmpeg's whole log
    return InputError(f"cannot read video {shorten(str(path))} (corrupt or not a {ext} file): {shorten(first)}")


def _open(path: Path, ext: str):
    """((H, W), frames the header states or None, iterator of uint8 [H, W, 3]) without decoding pixels."""
    if ext in FFMPEG_EXTS:
        return _open_ffmpeg(path)
    if ext == ".gif":
        return _open_gif(path)
    return _image_size(path), 1, iter([_read_image(path)])


def write_video(path: str | os.PathLike, frames, fps: float = 8, *,
                protect: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Write uint8 [T, H, W, 3] — or an iterable of such chunks, written as they arrive — to .mp4, .webm, .gif
    or a folder of PNGs (no extension), atomically; returns the path.

    `protect` maps a label to a path (e.g. {"input": clip, "bundle": folder}) that the output must not be,
    lie inside, or contain. mp4 / webm (yuv420p) need even H and W: odd sizes are padded by repeating the
    last row/column.
    """
    path = check_output_path(path, protect=protect)
    ext = path.suffix.lower()
    check_fps(fps)
    chunks = _chunks(frames)
    first = next(chunks)  # the first chunk is checked before anything is written
    stream = itertools.chain.from_iterable(itertools.chain([first], chunks))
    if ext in (".mp4", ".webm"):
        with atomic_path(path) as tmp:
            (_write_mp4 if ext == ".mp4" else _write_webm)(tmp, stream, fps)
    elif ext == ".gif":
        with atomic_path(path) as tmp:
            _write_gif(tmp, stream, fps)
    else:
        with atomic_dir(path, _is_frame_file) as tmp:
            for i, frame in enumerate(stream):
                _write_png(tmp / f"frame_{i:05d}.png", frame)
    return path


def check_output_path(path: str | os.PathLike, *, protect: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """An output path write_video accepts, checked before any work: a known extension, an existing writable
    parent folder, nothing there that is not ours to replace, and none of the `protect`ed paths involved."""
    try:
        return _check_output_path(Path(path), protect)
    except OSError as e:  # a name too long, a loop of symlinks, ...
        raise InputError(f"output {shorten(str(path))} cannot be used: {e.strerror or e}") from None


def _check_output_path(path: Path, protect) -> Path:
    name = shorten(str(path))
    if len(os.fsencode(path.name)) > _MAX_OUTPUT_NAME:
        raise InputError(f"output name {shorten(path.name)} has {len(os.fsencode(path.name))} bytes; at most "
                         f"{_MAX_OUTPUT_NAME} (room for the hidden temp name written beside it)")
    ext = path.suffix.lower()
    if ext and ext not in WRITE_EXTS:
        raise InputError(f"cannot write {name}: extension {shorten(ext)} is not one of {', '.join(WRITE_EXTS)} "
                         "(or no extension for a folder of PNGs)")
    if not path.parent.is_dir():
        raise InputError(f"output folder {shorten(str(path.parent))} does not exist")
    for label, other in (protect or {}).items():
        if other is not None:
            _check_apart(path, Path(other), label)
    _check_writable(path.parent)
    if ext:
        if os.path.lexists(path) and not is_regular_file(path):
            kind = "folder" if path.is_dir() else "symlink" if path.is_symlink() else "special file"
            raise InputError(f"output {name} exists and is a {kind}; a file output replaces only a regular file")
    else:
        check_replaceable(path, _is_frame_file, "output folder")
    return path


def _check_apart(out: Path, other: Path, label: str) -> None:
    """`out` is not `other`, not inside it, and does not contain it (paths resolved, symlinks followed)."""
    how = overlap(out.resolve(), other.resolve())
    if how:
        raise InputError(f"output {shorten(str(out))} {how} the {label} {shorten(str(other))}; "
                         f"an output never overwrites its {label}")


def overlap(a: PurePath, b: PurePath) -> str | None:
    """How path `a` overlaps path `b`: "is", "lies inside", "contains", or None (both absolute, as resolved)."""
    return "is" if a == b else "lies inside" if b in a.parents else "contains" if a in b.parents else None


def _is_frame_file(entry: Path) -> bool:
    return FRAME_NAME.fullmatch(entry.name) is not None and is_regular_file(entry)


MIN_FPS, MAX_FPS = 0.01, 1000  # GIF keeps a frame's duration in 16 bits of 1/100 s: 100 s a frame fits, 1000 s not


def check_fps(fps) -> None:
    """InputError unless fps is a number in [MIN_FPS, MAX_FPS], which every output type can store."""
    if not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and MIN_FPS <= fps <= MAX_FPS):
        raise InputError(f"fps must be a number in [{MIN_FPS:g}, {MAX_FPS}] (at most {1 / MIN_FPS:g} s a frame), "
                         f"got {shorten(fps)}")


_MAX_MASK_BYTES = 8 * MAX_DECODED_PIXELS  # a float64 pixel mask of the largest input


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask array from a .npy file. The header is read first: a file that is not a .npy array (an .npz, a
    pickle), or whose header claims more data than the file holds or than MAX_DECODED_PIXELS float64 values, is
    refused naming the file, before anything is allocated."""
    path = Path(path)
    name = shorten(str(path))
    if path.suffix.lower() != ".npy":
        raise InputError(f"mask {name} must be a .npy file (numpy.save of one array), got {shorten(path.suffix)}")
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                f.seek(0)
                kind = "an .npz archive (a zip)" if f.read(4) == b"PK\x03\x04" else "not a .npy array"
                raise InputError(f"cannot read mask {name}: it is {kind}; give one array saved with numpy.save")
            f.seek(0)
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise InputError(f"cannot read mask {name}: .npy format version {version}; this reads 1.0 and 2.0")
            shape, _, dtype = read_header(f)
            offset, size = f.tell(), os.fstat(f.fileno()).st_size
            if dtype.hasobject:
                raise InputError(f"cannot read mask {name}: it holds Python objects (never unpickled); a mask is "
                                 "numbers 0/1")
            need = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if need > _MAX_MASK_BYTES or need != size - offset:
                raise InputError(f"cannot read mask {name}: its header claims shape {shorten(shape)} of {dtype} ({need} bytes), "
                                 f"but the file holds {size - offset} bytes of data (at most {_MAX_MASK_BYTES})")
            return np.load(path, allow_pickle=False)
    except InputError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read mask {name}: {shorten(str(e))}") from None


def _chunks(frames) -> Iterator[np.ndarray]:
    """Validated uint8 [n, H, W, 3] chunks, all of one H, W: one array(-like), or an iterator of arrays."""
    if not isinstance(frames, Iterator):
        yield _check_frames(frames)
        return
    shape = None
    for chunk in frames:
        chunk = _check_frames(chunk)
        if shape is not None and chunk.shape[1:] != shape:
            raise InputError(f"frames to write change size mid-stream: {chunk.shape[1:3]} after {shape[:2]}")
        shape = chunk.shape[1:]
        yield chunk
    if shape is None:
        raise InputError("frames to write is empty: no chunks")


def _check_writable(folder: Path) -> None:
    """Create and remove a hidden probe file: the only check that also holds for root and read-only mounts."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".vdt-write-probe.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"output folder {shorten(str(folder))} is not writable: {e.strerror or e}") from None
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
        raise InputError(f"cannot read image {shorten(str(path))}: {shorten(str(e))}") from None


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from an image header, without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception as e:
        raise InputError(f"cannot read image {shorten(str(path))}: {shorten(str(e))}") from None


def _png_folder(path: Path):
    names = sorted((p for p in path.iterdir() if p.suffix.lower() == ".png"), key=_natural_key)
    if not names:
        raise InputError(f"folder {shorten(str(path))} holds no .png frames")
    hw = _image_size(names[0])

    def frames():
        for p in names:
            frame = _read_image(p)
            if frame.shape[:2] != hw:
                raise InputError(f"PNG frames in {shorten(str(path))} differ in size: {p.name} is "
                                 f"{frame.shape[0]}x{frame.shape[1]}, the first is {hw[0]}x{hw[1]}")
            yield frame
    return hw, None, frames()


def _open_gif(path: Path):
    """A frame shown k times the shortest duration counts k times (GIF writers, Pillow included, merge
    identical consecutive frames into one longer frame), k <= 1000; the caller's limits bound the total."""
    from PIL import Image, ImageSequence

    im = Image.open(path)
    try:
        count = im.n_frames  # walks the frame headers; pixels are decoded one frame at a time below
        durations = []
        for i in range(count):
            im.seek(i)
            durations.append(im.info.get("duration") or 0)
        im.seek(0)
    except Exception:
        im.close()
        raise
    base = min((d for d in durations if d > 0), default=0)
    repeats = [max(1, min(round(d / base), _GIF_MAX_REPEAT)) if base else 1 for d in durations]

    def frames():
        try:
            for frame, k in zip(ImageSequence.Iterator(im), repeats):
                rgb = _to_rgb(np.asarray(frame.convert("RGB")))
                for _ in range(k):
                    yield rgb
        finally:
            im.close()
    return (im.size[1], im.size[0]), count, frames()


def _open_ffmpeg(path: Path):
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)  # ffmpeg's reading of the header; no frame decoded yet
    w, h = meta["size"]
    duration, fps = meta.get("duration") or 0, meta.get("fps") or 0
    stated = round(duration * fps) if math.isfinite(duration * fps) and duration * fps >= 1 else None

    def frames():
        try:
            for buf in reader:
                yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
        finally:
            reader.close()
    return (h, w), stated, frames()


def _write_mp4(path: Path, frames: Iterator[np.ndarray], fps: float) -> None:
    _write_ffmpeg(path, frames, fps, "libx264", ["-crf", "18", "-f", "mp4"])


def _write_webm(path: Path, frames: Iterator[np.ndarray], fps: float) -> None:
    _write_ffmpeg(path, frames, fps, "libvpx-vp9", ["-crf", "30", "-b:v", "0", "-f", "webm"])


def _write_ffmpeg(path: Path, frames: Iterator[np.ndarray], fps: float, codec: str, params: list[str]) -> None:
    import imageio_ffmpeg

    frames = iter(frames)
    first = next(frames)
    h, w, _ = first.shape
    pad = ((0, h % 2), (0, w % 2), (0, 0))  # yuv420p needs even H, W
    writer = imageio_ffmpeg.write_frames(
        str(path), (w + w % 2, h + h % 2), fps=fps, codec=codec, pix_fmt_out="yuv420p",
        macro_block_size=1, quality=None, output_params=params, ffmpeg_log_level="error",
    )
    writer.send(None)
    try:
        for frame in itertools.chain([first], frames):
            writer.send(np.ascontiguousarray(np.pad(frame, pad, mode="edge")))
    finally:
        writer.close()


def _write_gif(path: Path, frames: Iterator[np.ndarray], fps: float) -> None:
    from PIL import Image

    frames = iter(frames)
    first = Image.fromarray(next(frames))
    duration = max(int(round(1000 / fps)), 20)
    first.save(path, format="GIF", save_all=True, append_images=(Image.fromarray(f) for f in frames),
               duration=duration, loop=0, optimize=False, disposal=1)


def _write_png(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(frame).save(path, format="PNG")


def _natural_key(p: Path):
    """frame_2.png before frame_10.png."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]
