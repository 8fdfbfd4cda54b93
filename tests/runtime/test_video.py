"""Video I/O: round trips for gif / PNG folder / mp4, colour conversions, atomic writes, errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vdt_runtime import video
from vdt_runtime.errors import InputError
from vdt_runtime.video import read_video, write_video


def palette_frames(t=5, h=16, w=18) -> np.ndarray:
    """Few-colour frames (GIF-exact), with two identical consecutive frames."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (6, 3), dtype=np.uint8)
    frames = colours[rng.integers(0, 6, (t, h, w))]
    frames[2] = frames[1]
    return frames


def smooth_frames(t=4, h=32, w=32) -> np.ndarray:
    """Gradients that survive lossy H.264 well."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x * 8 + 20 * i) % 256, y * 8, np.full_like(x, 128)], -1) for i in range(t)]
    return np.asarray(frames, np.uint8)


@pytest.mark.parametrize("name", ["clip.gif", "frames"])
def test_lossless_round_trip(tmp_path, name):
    frames = palette_frames()
    out = write_video(tmp_path / name, frames, fps=10)
    back = read_video(out)
    assert back.dtype == np.uint8 and back.shape == frames.shape
    np.testing.assert_array_equal(back, frames)


def test_mp4_round_trip_is_close(tmp_path):
    frames = smooth_frames()
    back = read_video(write_video(tmp_path / "clip.mp4", frames))
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() < 8


def test_mp4_odd_size_is_padded_to_even(tmp_path):
    frames = smooth_frames(h=15, w=17)
    back = read_video(write_video(tmp_path / "odd.mp4", frames))
    assert back.shape == (4, 16, 18, 3)
    assert np.abs(back[:, :15, :17].astype(int) - frames).mean() < 8


def test_png_folder_natural_order_and_overwrite(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    for i in (10, 2, 1):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(folder / f"frame_{i}.png")
    assert read_video(folder)[:, 0, 0, 0].tolist() == [1, 2, 10]
    out = write_video(tmp_path / "out", palette_frames(t=5))
    write_video(out, palette_frames(t=3))  # a folder of our own frames is replaced whole
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:05d}.png" for i in range(3)]


def test_gray_and_rgba_become_rgb(tmp_path):
    Image.fromarray(np.full((4, 5), 77, np.uint8)).save(tmp_path / "g.png")
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    gray, colour = read_video(tmp_path / "g.png"), read_video(tmp_path / "a.png")
    assert gray.shape == colour.shape == (1, 4, 5, 3)
    assert (gray == 77).all() and (colour[..., 1] == 200).all() and (colour[..., 0] == 0).all()


def test_write_leaves_no_temp_files_and_failure_keeps_old(tmp_path, monkeypatch):
    target = write_video(tmp_path / "v.gif", palette_frames())
    before = target.read_bytes()

    def broken(path, frames, fps):
        path.write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(video, "_write_gif", broken)
    with pytest.raises(RuntimeError):
        write_video(target, palette_frames(t=3))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif"]


@pytest.mark.parametrize("name,content,match", [
    ("missing.mp4", None, "does not exist"),
    ("empty", "folder", "no .png frames"),
    ("bad.gif", b"not a gif", "bad.gif"),
    ("bad.mp4", b"not a video", "bad.mp4"),
    ("x.txt", b"hi", "'.txt'"),
])
def test_read_errors_name_the_path(tmp_path, name, content, match):
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        read_video(path)


@pytest.mark.parametrize("name,frames,match", [
    ("v.avi", palette_frames(), "'.avi'"),
    ("nodir/v.gif", palette_frames(), "does not exist"),
    ("v.gif", palette_frames().astype(np.float32), "uint8"),
    ("v.gif", palette_frames()[..., :2], r"\[T, H, W, 3\]"),
])
def test_write_errors_before_any_work(tmp_path, name, frames, match):
    with pytest.raises(InputError, match=match):
        write_video(tmp_path / name, frames)
    assert list(tmp_path.iterdir()) == []


def test_only_the_needed_frames_are_decoded(tmp_path):
    frames = palette_frames(t=12)
    for name in ("clip.gif", "frames", "clip.mp4"):
        out = write_video(tmp_path / name, frames)
        assert read_video(out, max_frames=5).shape[0] == 5


def test_wrong_size_is_refused_from_the_header(tmp_path, monkeypatch):
    out = write_video(tmp_path / "clip.gif", palette_frames())
    monkeypatch.setattr(video, "_to_rgb", lambda image: (_ for _ in ()).throw(AssertionError("decoded")))
    with pytest.raises(InputError, match="is 16x18 pixels; this bundle takes 8x8"):
        read_video(out, size=(8, 8))


def test_gif_durations_never_multiply_frames_past_the_limit(tmp_path, monkeypatch):
    """Two frames, one shown 65 s: 1000 repeats at most, and never more than the caller asks for."""
    from PIL import Image

    a, b = (Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 255))
    a.save(tmp_path / "bomb.gif", save_all=True, append_images=[b], duration=[10, 65535], loop=0)
    assert read_video(tmp_path / "bomb.gif", max_frames=16).shape == (16, 8, 8, 3)
    monkeypatch.setattr(video, "MAX_DECODED_PIXELS", 64 * 100)  # room for 100 frames of 8x8
    with pytest.raises(InputError, match="more than 100 frames of 8x8"):
        read_video(tmp_path / "bomb.gif")


def test_truncated_gif_and_png_are_refused(tmp_path):
    gif = write_video(tmp_path / "clip.gif", palette_frames(t=6))
    data = gif.read_bytes()
    (tmp_path / "cut.gif").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.gif"):
        read_video(tmp_path / "cut.gif")
    png = write_video(tmp_path / "frames", palette_frames(t=3)) / "frame_00001.png"
    png.write_bytes(png.read_bytes()[:60])
    with pytest.raises(InputError, match="frame_00001.png"):
        read_video(tmp_path / "frames")


def test_streamed_chunks_are_written_as_they_come(tmp_path):
    frames = palette_frames(t=6)
    for name in ("s.gif", "s_frames", "s.mp4", "s.webm"):
        out = write_video(tmp_path / name, iter([frames[:2], frames[2:5], frames[5:]]))
        back = read_video(out)
        assert back.shape[0] == 6
        if name.endswith(("gif", "frames")):
            np.testing.assert_array_equal(back, frames)
    with pytest.raises(InputError, match="change size mid-stream"):
        write_video(tmp_path / "bad.gif", iter([frames[:2], frames[:2, :8]]))
    assert not (tmp_path / "bad.gif").exists()


def test_foreign_file_appearing_during_the_write_is_kept(tmp_path, monkeypatch):
    out = write_video(tmp_path / "out", palette_frames(t=3))
    real = video._write_png

    def sneaky(path, frame):  # someone drops a file into the old output folder mid-write
        (out / "theirs.txt").write_text("keep")
        real(path, frame)
    monkeypatch.setattr(video, "_write_png", sneaky)
    with pytest.raises(InputError, match="theirs.txt"):
        write_video(out, palette_frames(t=3))
    assert (out / "theirs.txt").read_text() == "keep" and (out / "frame_00001.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
