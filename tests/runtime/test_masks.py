"""Masks: every task's frame pattern, the inpaint box mapping, user masks and their errors."""
import numpy as np
import pytest

from vdt_runtime.errors import InputError
from vdt_runtime.masks import given_frames, user_mask, validate_mask
from vdt_runtime.requests import TASKS, task_mask

HW = (4, 6)  # latent h, w


def _frames(mask):
    """Per-frame generate flags, checking each frame is uniform."""
    for f in mask:
        assert (f == f.flat[0]).all()
    return mask[:, 0, 0].astype(int).tolist()


def test_tasks_tuple():
    assert set(TASKS) == {"predict", "backward", "interpolate", "image_to_video", "unconditional", "complete", "inpaint"}


@pytest.mark.parametrize(
    "task, total, kwargs, want",
    [
        ("predict", 6, {"cond": 2}, [0, 0, 1, 1, 1, 1]),
        ("predict", 2, {"cond": 1}, [0, 1]),
        ("backward", 6, {"cond": 2}, [1, 1, 1, 1, 0, 0]),
        ("interpolate", 7, {"stride": 3}, [0, 1, 1, 0, 1, 1, 0]),  # last frame falls on the stride
        ("interpolate", 6, {"stride": 2}, [0, 1, 0, 1, 0, 1]),  # it does not here
        ("interpolate", 3, {"stride": 5}, [0, 1, 1]),
        ("image_to_video", 4, {}, [0, 1, 1, 1]),
        ("unconditional", 3, {}, [1, 1, 1]),
        ("unconditional", 1, {}, [1]),
        ("complete", 5, {"given": [0, 3]}, [0, 1, 1, 0, 1]),
        ("complete", 3, {"given": np.array([2])}, [1, 1, 0]),
    ],
)
def test_frame_tasks(task, total, kwargs, want):
    m = task_mask(task, total, HW, **kwargs)
    assert m.dtype == np.float32 and m.shape == (total,) + HW
    assert _frames(m) == want
    assert given_frames(m) == tuple(i for i, g in enumerate(want) if g == 0)


def test_inpaint_box_covers_every_touched_cell_on_its_frames():
    # image 32×48 over latent 4×6: 8 px per cell; rows 9..16 touch cells 1, 2; cols 8..8 touch cell 1 only
    m = task_mask("inpaint", 3, HW, box=(9, 8, 17, 9), image_hw=(32, 48), box_frames=[0, 2])
    want = np.zeros((3,) + HW, np.float32)
    want[[0, 2], 1:3, 1:2] = 1
    np.testing.assert_array_equal(m, want)
    assert given_frames(m) == (1,)


def test_inpaint_default_is_all_frames_and_aligned_box_is_exact():
    m = task_mask("inpaint", 2, HW, box=(0, 40, 32, 48), image_hw=(32, 48))
    want = np.zeros((2,) + HW, np.float32)
    want[:, :, 5] = 1
    np.testing.assert_array_equal(m, want)


@pytest.mark.parametrize(
    "task, total, kwargs, word",
    [
        ("zoom", 4, {}, "unknown task 'zoom'.*predict, backward, interpolate"),
        ("predict", 4, {}, "needs cond"),
        ("predict", 4, {"cond": 0}, r"cond must be in 1\.\.3, got 0"),
        ("predict", 4, {"cond": 4}, r"cond must be in 1\.\.3, got 4"),
        ("predict", 4, {"cond": 1.5}, "cond must be an integer"),
        ("predict", 1, {"cond": 1}, "total >= 2"),
        ("backward", 4, {"cond": 5}, r"1\.\.3, got 5"),
        ("predict", 4, {"cond": 1, "stride": 2}, "does not take stride"),
        ("interpolate", 4, {}, "needs stride"),
        ("interpolate", 4, {"stride": 1}, "stride must be >= 2, got 1"),
        ("interpolate", 1, {"stride": 2}, "nothing to generate"),
        ("image_to_video", 1, {}, "nothing to generate"),
        ("unconditional", 0, {}, "total must be >= 1, got 0"),
        ("unconditional", 3, {"given": [1]}, "does not take given"),
        ("complete", 3, {"given": [0, 3]}, r"0\.\.2, got 3"),
        ("complete", 3, {"given": [-1]}, r"0\.\.2, got -1"),
        ("complete", 3, {"given": [0, 1, 2]}, "nothing to generate"),
        ("complete", 3, {"given": 1}, "sequence of frame indices"),
        ("inpaint", 3, {"box": (0, 0, 8, 8)}, "needs image_hw"),
        ("inpaint", 3, {}, "needs box"),
        ("inpaint", 3, {"box": (0, 0, 8), "image_hw": (32, 48)}, "4 pixel coordinates"),
        ("inpaint", 3, {"box": (8, 0, 8, 8), "image_hw": (32, 48)}, "non-empty and inside"),
        ("inpaint", 3, {"box": (0, 0, 33, 8), "image_hw": (32, 48)}, "y1 <= 32"),
        ("inpaint", 3, {"box": (0, -1, 8, 8), "image_hw": (32, 48)}, "box coordinate must be >= 0, got -1"),
        ("inpaint", 3, {"box": (0, 0, 8, 8), "image_hw": (30, 48)}, "whole multiple"),
        ("inpaint", 3, {"box": (0, 0, 8, 8), "image_hw": (32, 48), "box_frames": [3]}, r"0\.\.2, got 3"),
        ("inpaint", 3, {"box": (0, 0, 8, 8), "image_hw": (32, 48), "box_frames": []}, "box_frames is empty"),
        ("complete", 5, {"given": [0, 3, 3]}, r"given names frame position\(s\) \[3\] more than once"),  # one lost
        ("complete", 3, {"given": []}, "given is empty"),  # every supplied frame ignored
        ("unconditional", 3, {}, None),  # control: no error
    ],
)
def test_task_errors(task, total, kwargs, word):
    if word is None:
        task_mask(task, total, HW, **kwargs)
        return
    with pytest.raises(InputError, match=word):
        task_mask(task, total, HW, **kwargs)


def test_bad_latent_hw():
    with pytest.raises(InputError, match="latent_hw"):
        task_mask("unconditional", 2, (4,))
    with pytest.raises(InputError, match="latent_hw width must be >= 1, got 0"):
        task_mask("unconditional", 2, (4, 0))


@pytest.mark.parametrize("dtype", [bool, np.int64, np.float32, np.float64])
def test_user_mask_latent_size_any_dtype(dtype):
    m = np.zeros((3,) + HW, dtype)
    m[1:, 2] = 1
    got = user_mask(m, 3, HW)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, m.astype(np.float32))


def test_user_mask_batched():
    m = np.ones((2, 3) + HW, np.float32)
    m[1, 0] = 0
    got = user_mask(m, 3, HW)
    assert got.shape == (2, 3) + HW
    assert given_frames(got) == ()
    np.testing.assert_array_equal(got, m)


@pytest.mark.parametrize("batched", [False, True])
def test_user_mask_pixel_size_any_pixel_marks_the_cell(batched):
    px = np.zeros((2, 32, 48), np.uint8)
    px[0, 9, 47] = 1  # lone pixel in cell (1, 5)
    px[1, 0:16, 0:8] = 1  # exactly cells (0, 0), (1, 0)
    want = np.zeros((2,) + HW, np.float32)
    want[0, 1, 5] = 1
    want[1, 0:2, 0] = 1
    if batched:
        px, want = px[None], want[None]
    np.testing.assert_array_equal(user_mask(px, 2, HW, image_hw=(32, 48)), want)


@pytest.mark.parametrize(
    "mask, kwargs, word",
    [
        (np.full((3,) + HW, 0.5), {}, r"0 \(given\) or 1.*0\.5"),
        (np.full((3,) + HW, 2), {}, r"found \[2\]"),
        (np.full((3,) + HW, np.nan), {}, "NaN"),
        (np.array([["a"]]), {}, "dtype"),
        (np.ones((2,) + HW), {}, r"T = total = 3"),
        (np.ones(HW), {}, r"T = total = 3"),
        (np.ones((3, 4, 5)), {}, r"\(4, 5\) matches neither latent \(4, 6\)"),
        (np.ones((3, 32, 48)), {"image_hw": (32, 40)}, "matches neither"),
        (np.ones((3, 30, 48)), {"image_hw": (30, 48)}, "whole multiple"),
        (np.zeros((3,) + HW), {}, "nothing to generate"),
        (np.stack([np.ones((3,) + HW), np.zeros((3,) + HW)]), {}, r"batch items \[1\]"),
    ],
)
def test_user_mask_errors(mask, kwargs, word):
    with pytest.raises(InputError, match=word):
        user_mask(mask, 3, HW, **kwargs)


def test_validate_mask():
    ok = np.ones((2,) + HW, np.int8)
    assert validate_mask(ok, 2, HW).dtype == np.float32
    with pytest.raises(InputError, match=r"\[T, h, w\] = \(3, 4, 6\)"):
        validate_mask(ok, 3, HW)
    with pytest.raises(InputError, match="0 \\(given\\) or 1"):
        validate_mask(ok * 3, 2, HW)


def test_given_frames_needs_frames_axis():
    with pytest.raises(InputError, match="shape"):
        given_frames(np.zeros((4, 6)))
