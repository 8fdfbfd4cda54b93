"""Property-based tests on the tiny bundle: random masks and task settings never crash.

`broken_rules` states the rules a task call must obey, independently of the pipeline. A call that breaks one
must raise InputError whose message names a broken rule; a call that breaks none must give finite uint8
frames of the right shape with every given pixel returned exactly. The default run is small; `-m slow` runs
>= 1,000 examples each.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vdt_runtime import SAMPLERS, TASKS
from vdt_runtime.errors import InputError, VDTError

SMALL = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

CLIP = np.random.default_rng(7).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
LATENT, PIXEL, FACTOR, MAX_FRAMES = 8, 16, 2, 8


@pytest.fixture(scope="module")
def pipe(tiny_pipeline):
    return tiny_pipeline


samplings = st.fixed_dictionaries({
    "steps": st.integers(1, 2),
    "sampler": st.sampled_from(sorted(SAMPLERS)),
    "seed": st.integers(0, 2**63 - 1),
})


@st.composite
def user_masks(draw):
    """A 0/1 mask [T, h, w] at latent or pixel size, as bool, uint8 or float32; may give everything."""
    total = draw(st.integers(1, 8))
    size = draw(st.sampled_from([LATENT, PIXEL]))
    mask = draw(arrays(np.bool_, (total, size, size)))
    return mask.astype(draw(st.sampled_from([np.bool_, np.uint8, np.float32])))


def _mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    """Values from `valid`, and about one time in five from `invalid`."""
    return st.one_of(valid, valid, valid, valid, invalid)


@st.composite
def task_settings(draw):
    """Any task with arguments mostly in range, sometimes out of it (or missing, or supplied frames short)."""
    task = draw(st.sampled_from(TASKS))
    total = draw(_mostly(st.integers(2, 8), st.sampled_from([0, 1, 9, 10])))
    kw = {"total": total, "frames": draw(_mostly(st.just(total), st.integers(0, 9)))}
    if task in ("predict", "backward"):
        kw["cond"] = draw(_mostly(st.integers(1, max(1, total - 1)), st.integers(-1, 9)))
    elif task == "interpolate":
        kw["stride"] = draw(_mostly(st.integers(2, 4), st.integers(0, 1)))
    elif task == "complete":
        kw["given"] = draw(st.lists(_mostly(st.integers(0, max(0, total - 1)), st.integers(-1, 9)), max_size=4))
    elif task == "inpaint":
        y0, x0 = draw(st.integers(0, 15)), draw(st.integers(0, 15))
        box = (y0, x0, draw(st.integers(y0 + 1, 16)), draw(st.integers(x0 + 1, 16)))
        kw["box"] = draw(_mostly(st.just(box), st.tuples(*[st.integers(-2, 18)] * 4)))
    return task, kw


def check_result(result, frames: np.ndarray | None, total: int) -> None:
    """Finite uint8 [total, 16, 16, 3]; every pixel of a given latent cell is the input pixel."""
    assert result.frames.dtype == np.uint8 and result.frames.shape == (total, PIXEL, PIXEL, 3)
    assert result.mask.shape == (total, LATENT, LATENT) and np.isin(result.mask, (0, 1)).all()
    assert result.mask.any(), "something must have been generated"
    keep = (result.mask == 0).repeat(FACTOR, axis=1).repeat(FACTOR, axis=2)  # [T, H, W] pixel is given
    if keep.any():
        assert frames is not None and not keep[len(frames):].any(), "a given frame was not supplied"
        n = min(len(frames), total)
        np.testing.assert_array_equal(result.frames[:n][keep[:n]], frames[:n][keep[:n]])


def run_user_mask(pipe, mask: np.ndarray, sampling: dict) -> None:
    total = mask.shape[0]
    latent = mask.astype(bool).reshape(total, LATENT, mask.shape[1] // LATENT, LATENT, -1).any(axis=(2, 4))
    if not latent.any():  # nothing to generate: the only acceptable outcome is the typed error
        with pytest.raises(InputError, match="nothing to generate"):
            pipe.run(CLIP[:total], mask=mask, **sampling)
        return
    result = pipe.run(CLIP[:total], mask=mask, **sampling)
    np.testing.assert_array_equal(result.mask, latent.astype(np.float32))
    check_result(result, CLIP, total)


def broken_rules(task: str, kw: dict, supplied: int) -> dict[str, str]:
    """The rules a run(frames[:supplied], task=task, **kw) call breaks: {rule: what its error message names}."""
    total, broken = kw["total"], {}
    if not 1 <= total <= MAX_FRAMES:
        broken["total is 1..max_frames"] = "total"
        return broken  # no frame layout to reason about
    if supplied > total:
        broken["at most total frames supplied"] = "at most total"
    given = set()  # frames with a given cell
    if task in ("predict", "backward"):
        cond = kw["cond"]
        if not 1 <= cond <= total - 1:
            broken["cond is 1..total-1"] = "cond"
        else:
            given = set(range(cond)) if task == "predict" else set(range(total - cond, total))
    elif task == "interpolate":
        if kw["stride"] < 2:
            broken["stride >= 2"] = "stride"
        else:
            given = set(range(0, total, kw["stride"]))
    elif task == "image_to_video":
        given = {0}
    elif task == "complete":
        if not all(0 <= i < total for i in kw["given"]):
            broken["given indices are 0..total-1"] = "given"
        elif not kw["given"]:
            broken["given names at least one position"] = "given is empty"
        elif len(set(kw["given"])) < len(kw["given"]):
            broken["each given position once (one frame each)"] = "more than once"
        else:
            given = set(kw["given"])
    elif task == "inpaint":
        y0, x0, y1, x1 = kw["box"]
        if not (0 <= y0 < y1 <= PIXEL and 0 <= x0 < x1 <= PIXEL):
            broken["box is non-empty, inside the image"] = "box"
        elif (y0 // FACTOR, x0 // FACTOR, -(-y1 // FACTOR), -(-x1 // FACTOR)) != (0, 0, LATENT, LATENT):
            # a box that does not touch every latent cell leaves cells given (a box of 15 px still touches all 8)
            given = set(range(total))
    if task != "inpaint" and len(given) == total:  # per-frame tasks give whole frames; a box always generates
        broken["something to generate"] = "nothing to generate"
    if any(i >= supplied for i in given):
        broken["every given frame supplied"] = "supplied"
    return broken


def run_task(pipe, task: str, kw: dict, sampling: dict) -> None:
    kw = dict(kw)
    n = kw.pop("frames")
    frames = CLIP[:n] if n else None
    broken = broken_rules(task, kw, 0 if frames is None else len(frames))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # total beyond the trained length
        try:
            result = pipe.run(frames, task=task, **kw, **sampling)
        except VDTError as e:  # only a rule-breaking call may fail, and only with an InputError naming a rule
            assert isinstance(e, InputError), f"{type(e).__name__}: {e}"
            assert broken, f"{task} {kw} with {n} frame(s) breaks no rule, yet was refused: {e}"
            assert any(re.search(word, str(e)) for word in broken.values()), (str(e), broken)
            event(f"refused: {' & '.join(sorted(broken))}")
            return
    assert not broken, f"{task} {kw} with {n} frame(s) breaks {sorted(broken)}, yet was accepted"
    event("generated")
    check_result(result, frames, kw["total"])
    given = [i for i in range(kw["total"]) if not result.mask[i].any()]
    if task in ("predict", "backward"):
        assert len(given) == kw["cond"]


@SMALL
@given(mask=user_masks(), sampling=samplings)
def test_random_user_masks_keep_given_pixels(pipe, mask, sampling):
    run_user_mask(pipe, mask, sampling)


@SMALL
@given(case=task_settings(), sampling=samplings)
def test_random_task_settings_never_crash(pipe, case, sampling):
    run_task(pipe, *case, sampling)


@pytest.mark.slow
@MANY
@given(mask=user_masks(), sampling=samplings)
def test_random_user_masks_keep_given_pixels_many(pipe, mask, sampling):
    run_user_mask(pipe, mask, sampling)


@pytest.mark.slow
@MANY
@given(case=task_settings(), sampling=samplings)
def test_random_task_settings_never_crash_many(pipe, case, sampling):
    run_task(pipe, *case, sampling)
