"""No given frame is silently dropped (issue 21, class 1): every supplied frame has exactly one output position.

Two frames for one position (`at=[3, 3]`, `given=[2, 2]`) used to keep one and drop the other; an empty position list
(`given=""` over the server) used to ignore every frame sent. Both are refused by the Request, naming the list.
A full-length clip is the other way to supply frames: each given position takes the frame at that position.
"""
from __future__ import annotations

import numpy as np
import pytest

from vdt_runtime import Request
from vdt_runtime.errors import InputError

CLIP = np.random.default_rng(11).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize("kw,match", [
    (dict(task="predict", frames=CLIP[:2], cond=1, at=[3, 3], total=6), r"at names frame position\(s\) \[3\] more"),
    (dict(task="complete", frames=CLIP[:2], given=[2, 2], total=6), r"given names frame position\(s\) \[2\] more"),
    (dict(task="complete", frames=CLIP[:3], given=[1, 4, 1], total=6), r"given names frame position\(s\) \[1\]"),
    (dict(task="complete", frames=CLIP[:2], given=[], total=6), "given is empty"),
    (dict(task="predict", frames=CLIP[:0], cond=1, at=[], total=6), "frames is empty"),
    (dict(mask=np.ones((6, 8, 8)), frames=CLIP[:2], at=[], total=6), "at is empty"),
    (dict(task="inpaint", frames=CLIP[:6], box=(0, 0, 8, 8), box_frames=[1, 1]), "box_frames names"),
    (dict(task="inpaint", frames=CLIP[:6], box=(0, 0, 8, 8), box_frames=[]), "box_frames is empty"),
])
def test_duplicate_or_empty_positions_are_refused_by_name(tiny_pipeline, kw, match):
    with pytest.raises(InputError, match=match):
        Request(**kw).plan(tiny_pipeline.bundle)


def test_empty_given_over_the_wire_is_refused(tiny_pipeline):
    """`given=""` from the server or CLI parses to no positions, which the Request refuses (it used to drop frames)."""
    request = Request.from_params({"task": "complete", "given": "", "total": 6}, frames=CLIP[:2])
    assert request.given == ()
    with pytest.raises(InputError, match="given is empty"):
        request.plan(tiny_pipeline.bundle)


@pytest.mark.parametrize("kw,positions", [
    (dict(task="interpolate", stride=3, total=7), [0, 3, 6]),
    (dict(task="complete", given=[5, 1], total=7), [1, 5]),
    (dict(task="backward", cond=2, total=7), [5, 6]),
    (dict(task="predict", cond=3, total=7), [0, 1, 2]),
    (dict(task="image_to_video", total=7), [0]),
])
def test_a_full_length_clip_gives_the_frames_at_the_given_positions(tiny_pipeline, kw, positions):
    plan = Request(frames=CLIP[:7], **kw).plan(tiny_pipeline.bundle)
    np.testing.assert_array_equal(plan.frames[positions], CLIP[positions])
    assert not plan.frames[[i for i in range(7) if i not in positions]].any()


def test_keyframes_still_work_and_a_clip_too_short_is_refused(tiny_pipeline):
    bundle = tiny_pipeline.bundle
    plan = Request(task="interpolate", frames=CLIP[:3], stride=3).plan(bundle)  # keyframes: total (3 − 1)·3 + 1
    assert plan.total == 7
    np.testing.assert_array_equal(plan.frames[[0, 3, 6]], CLIP[:3])
    plan = Request(task="interpolate", frames=CLIP[:8], stride=3).plan(bundle)  # 22 frames do not fit: full length
    assert plan.total == 8
    np.testing.assert_array_equal(plan.frames[[0, 3, 6]], CLIP[[0, 3, 6]])
    with pytest.raises(InputError, match="needs 3 input frame.*reaching frame 6"):
        Request(task="interpolate", frames=CLIP[:5], stride=3, total=7).plan(bundle)
    plan = Request(task="complete", frames=CLIP[:8], given=[0, 6], total=7).plan(bundle)  # a longer clip: its start
    np.testing.assert_array_equal(plan.frames[[0, 6]], CLIP[[0, 6]])
