"""One request = one video: a task (or a user mask), its frames, the total length, sampling settings and a seed.

The one place a task is defined. Each task names the arguments it takes and the output frames its supplied
frames go to ("slots"); the mask follows from the slots: 1 (generate) everywhere except the slots, which
are given (inpaint: the pixel box is generated, everything else given). The Python API, the CLI, the
server and the batch job all build a `Request`; `Pipeline.generate` runs a list of them.
"""
from __future__ import annotations

import numbers
import os
import re
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from vdt_runtime._arrays import as_array
from vdt_runtime.errors import InputError
from vdt_runtime.limits import MAX_ROLLOUT_FRAMES, MAX_STREAMED_FRAMES, shorten
from vdt_runtime.masks import box_mask, check_not_all_given, check_hw, frame_indices, user_mask
from vdt_runtime.checks import check_int as _check_int
from vdt_runtime.settings import DEFAULT_SAMPLING, Sampling, check_eta, check_eta_applies, check_sampler, check_sampling


@dataclass(frozen=True)
class _Task:
    takes: tuple[str, ...]  # the task arguments it reads
    needs: str | None  # the argument it cannot do without (predict/backward default it to the frames supplied)
    slots: Callable[[int, dict], Sequence[int]]  # (total, args) -> output index of each supplied frame, in order


_TASKS: dict[str, _Task] = {
    "predict": _Task(("cond",), "cond", lambda total, a: range(a["cond"])),
    "backward": _Task(("cond",), "cond", lambda total, a: range(total - a["cond"], total)),
    "interpolate": _Task(("stride",), "stride", lambda total, a: range(0, total, a["stride"])),
    "image_to_video": _Task((), None, lambda total, a: (0,)),
    "unconditional": _Task((), None, lambda total, a: ()),
    "complete": _Task(("given",), "given", lambda total, a: a["given"]),
    "inpaint": _Task(("box", "box_frames"), "box", lambda total, a: range(total)),
}
TASKS = tuple(_TASKS)  # the tasks one mask describes
ROLLOUT = "rollout"  # any length: windows of predict, each conditioned on the last `cond` frames so far
_ARGS = ("cond", "stride", "given", "box", "box_frames")
_ROLLOUT_ARGS = ("cond", "window")


def task_mask(task: str, total: int, latent_hw: tuple[int, int], *, cond=None, stride=None, given=None,
              box=None, box_frames=None, image_hw=None) -> np.ndarray:
    """The mask of a named task over `total` frames of latent size latent_hw: float32 [T, h, w], 1 = generate.

    predict: the first `cond` frames given · backward: the last `cond` given · interpolate: frames
    0, s, 2s, … given · image_to_video: frame 0 given · unconditional: nothing given · complete: the
    frames in `given` given · inpaint: the pixel box (y0, x0, y1, x1) of an image_hw image is generated
    on `box_frames` (default all), every latent cell it touches included, everything else given.
    """
    args = dict(cond=cond, stride=stride, given=given, box=box, box_frames=box_frames)
    return _mask_and_slots(task, total, latent_hw, image_hw, args)[0]


def _mask_and_slots(task: str, total, latent_hw, image_hw, args: dict) -> tuple[np.ndarray, Sequence[int]]:
    """A task's mask [T, h, w] and the output index of each supplied frame, its arguments checked."""
    checked = _task_args(task, total, args)
    total = checked["total"]
    h, w = check_hw("latent_hw", latent_hw)
    if task == "inpaint":
        mask = box_mask(total, (h, w), args["box"], args["box_frames"], image_hw)
        return check_not_all_given(mask, task), range(total)
    slots = _TASKS[task].slots(total, {**args, **checked})
    frames = np.ones(total, dtype=bool)  # [T] True = generated
    frames[list(slots)] = False
    mask = np.broadcast_to(frames[:, None, None], (total, h, w)).astype(np.float32)
    return check_not_all_given(mask, task), slots


def _task_args(task: str, total, args: dict) -> dict:
    """Check a task's name and arguments against `total`; the checked arguments (plus total) back."""
    spec = _takes(task, args)
    if spec.needs is not None and args.get(spec.needs) is None:
        raise InputError(f"task {shorten(task)} needs {spec.needs}")
    total = _check_int("total", total, 1, None)
    out = {"total": total}
    if task in ("predict", "backward"):
        if total < 2:
            raise InputError(f"task {shorten(task)} needs total >= 2 so that cond can be 1..total-1, got total={total}")
        out["cond"] = _check_int("cond", args["cond"], 1, total - 1)
    elif task == "interpolate":
        out["stride"] = _check_int("stride", args["stride"], 2, None)
    elif task == "complete":
        out["given"] = frame_indices("given", args["given"], total)
    return out


def _takes(task, args: dict) -> _Task:
    """The task's definition, after refusing an unknown task or an argument it does not take."""
    if not isinstance(task, str) or task not in _TASKS:
        raise InputError(f"unknown task {shorten(task)}; expected one of {', '.join(TASKS + (ROLLOUT,))}")
    spec = _TASKS[task]
    for name, value in args.items():
        if value is not None and name not in spec.takes:
            raise InputError(f"task {shorten(task)} does not take {name}={shorten(value)}")
    return spec


def _param(kind: str, help: str, default=None):
    """A Request field that travels as a wire parameter: its kind (int | float | str | ints) and a one-line help."""
    return field(default=default, metadata={"wire": kind, "help": help})


@dataclass(frozen=True, eq=False)
class Request:
    """One video to generate. Build with keywords; everything that can be checked without a bundle is checked here.

    task     one of TASKS or "rollout"; or leave it None and give `mask` (float/bool [T, h, w] or pixel-size
             [T, H, W], 1 = generate)
    frames   uint8 [N, H, W, 3] (float in [0, 1] is rounded to uint8), a video path (its first `total` frames,
             rollout: `cond`), or None. Either exactly the task's given frames, in order: predict the first `cond`,
             backward the last `cond`, interpolate the keyframes, image_to_video one image ([H, W, 3] accepted),
             complete one per `given` position, inpaint the whole clip; or any other count: a clip from output
             frame 0 (e.g. full length), each given position taking the frame at that position (the clip's other
             frames are the ones the task generates, or lie past `total`). A user mask takes frames from 0; `at` places them at other
             output positions instead (frames[j] → at[j]). Every supplied frame has exactly one position: duplicate
             or empty position lists (given, at, box_frames) are refused.
    total    output frames (default: the bundle's trained length; interpolate (N − 1)·stride + 1 for keyframes, N
             when that exceeds the bundle's window (a full-length clip); inpaint N; a user mask its T)
    cond, stride, given, box, box_frames, window   the task's arguments (only those it takes)
    steps, sampler, eta, seed   sampling; the same request gives byte-identical frames alone or in any batch.
             Without `sampler`, the bundle's recommended sampler, steps and η run (bundle.sampling: the manifest's
             "sampling", else DDPM 50); `steps` or `eta` given alone replace just that value. A sampler other than
             the recommended one defaults to 50 steps and η = 0.
    """

    task: str | None = _param("str", "one of the tasks, or rollout")
    frames: Any = None
    mask: Any = None
    total: int | None = _param("int", "output frames")
    cond: int | None = _param("int", "given frames (predict, backward, rollout)")
    stride: int | None = _param("int", "keyframe spacing (interpolate)")
    given: Sequence[int] | None = _param("ints", "given frame positions, e.g. 0,3,5 (complete)")
    box: Sequence[int] | None = _param("ints", "pixel box y0,x0,y1,x1 to regenerate (inpaint)")
    box_frames: Sequence[int] | None = _param("ints", "frames the box applies to (inpaint; default all)")
    window: int | None = _param("int", "frames per window (rollout; default max_frames)")
    at: Sequence[int] | None = _param("ints", "output positions of the supplied frames, one each, e.g. 0,1,6")
    steps: int | None = _param("int", "denoiser calls (default: the bundle's recommendation for its sampler, else 50)")
    sampler: str | None = _param("str", "default: the bundle's recommended sampler (vdt info shows it; else ddpm)")
    eta: float | None = _param("float", "noise level for ddim and dpmpp: 0 = deterministic, 1 = DDPM-like / "
                                        "DPM-Solver++ SDE (default: the recommendation's, else 0)")
    seed: int = _param("int", "seed of the request's noise", default=0)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, frames=None, mask=None) -> "Request":
        """A Request from wire parameters (the CLI's flags, Triton's request parameters, a batch row): see PARAMS."""
        return cls(frames=frames, mask=mask, **parse_params(params, mask=mask))

    def __post_init__(self):
        if self.mask is None and self.task is None:
            raise InputError(f"give task= (one of {', '.join(TASKS + (ROLLOUT,))}) or mask=")
        args = {k: getattr(self, k) for k in _ARGS + ("window",)}
        if self.mask is not None:
            drop = ([f"task={shorten(self.task)}"] if self.task is not None else []) + \
                   [f"{k}={shorten(v)}" for k, v in args.items() if v is not None]
            if drop:
                raise InputError(f"a user mask replaces the task; drop {', '.join(drop)}")
        elif self.task == ROLLOUT:
            extra = [k for k, v in args.items() if v is not None and k not in _ROLLOUT_ARGS]
            if extra:
                raise InputError(f"task 'rollout' does not take {extra[0]}={shorten(args[extra[0]])}")
            for name in ("cond", "total"):
                if getattr(self, name) is None:
                    raise InputError(f"task 'rollout' needs {name}")
        else:
            _takes(self.task, args)
        if self.sampler is not None:
            check_eta_applies(check_sampler(self.sampler), self.eta)
        if self.eta is not None:
            check_eta(self.eta)
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
            raise InputError(f"seed must be an integer in 0..2**63-1, got {shorten(seed)}")
        if self.frames is not None and self.task == "unconditional" and self.at is None:
            raise InputError("task 'unconditional' takes no frames")

    def sampling(self, bundle) -> Sampling:
        """(sampler, steps, eta) that run on `bundle`: the caller's, completed from the bundle's recommendation."""
        base = bundle.sampling
        if self.sampler is not None and self.sampler != base.sampler:
            base = DEFAULT_SAMPLING._replace(sampler=self.sampler)
        return check_sampling(base.sampler, base.steps if self.steps is None else self.steps,
                              base.eta if self.eta is None else self.eta, bundle.diffusion["num_timesteps"])

    def plan(self, bundle, *, streamed: bool = False) -> "Plan":
        """Check this request against a bundle: everything `Pipeline.generate` (or, `streamed`, the window-by-window
        rollout of `Pipeline.rollout_stream`) would refuse is refused here, before anything runs. The Plan back has
        the frames placed on the output timeline and the latent mask."""
        if streamed and self.task != ROLLOUT:
            raise InputError(f"only task 'rollout' streams, not {shorten(self.task)}")
        sampling = self.sampling(bundle)
        frames = self.frames
        if self.task == "image_to_video" and isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = frames[None]  # one image
        video = as_frames(frames, bundle.image_size, max_frames=self._read_limit(bundle))
        n = 0 if video is None else len(video)
        if self.task == ROLLOUT:
            return self._plan_rollout(bundle, video, sampling, streamed)
        total, m, slots, what = self._mask(bundle, n)
        slots = list(slots)
        if self.at is not None or self.mask is not None:  # frames at explicit positions (default 0, 1, 2, …)
            if n > total:
                raise InputError(f"got {n} frames for total={total}; supply at most total frames")
            slots = list(range(n) if self.at is None else frame_indices("at", self.at, total))
            if len(slots) != n:
                raise InputError(f"at= gives {len(slots)} position(s) for {n} frame(s); give one per frame")
            sources = range(n)
        elif n == len(slots):  # the task's given frames, in order (keyframes)
            sources = range(n)
        elif n == 0:
            raise InputError(f"{what} needs input frames (none were supplied)")
        else:  # a clip from output frame 0 (e.g. full length): each given position takes the frame at that position
            if slots and max(slots) >= n:
                raise InputError(f"{what} needs {len(slots)} input frame(s), got {n}: supply the given frames in "
                                 f"order, or a clip reaching frame {max(slots)} (every given frame must be supplied)")
            sources = slots
        placed = _place(video, sources, slots, total)
        given = np.flatnonzero((m < 1).any(axis=(1, 2)))
        missing = sorted(set(given.tolist()) - set(slots))
        if missing:
            raise InputError(f"{what} gives frame(s) {missing} but only {n} frame(s) were supplied")
        return Plan(total=total, mask=m, frames=placed, sampling=sampling, seed=int(self.seed))

    def _read_limit(self, bundle) -> int:
        """Frames read from a video path: what the request can use (rollout: cond; else total, or the window)."""
        limit = self.cond if self.task == ROLLOUT else self.total
        ok = isinstance(limit, numbers.Integral) and not isinstance(limit, bool) and 1 <= limit <= bundle.max_frames
        return int(limit) if ok else bundle.max_frames

    def _mask(self, bundle, n: int) -> tuple[int, np.ndarray, Sequence[int], str]:
        """(total, latent mask [T, h, w], the task's slots for the n supplied frames, a name for messages)."""
        hw, image_hw = (bundle.latent_size,) * 2, (bundle.image_size,) * 2
        if self.mask is not None:
            mask = as_array(self.mask, "mask", "[T, h, w] or [B, T, h, w] of 0 (given) / 1 (generate)")
            mask_t = mask.shape[-3] if mask.ndim >= 3 else None
            total = _frames_total(bundle, self.total if self.total is not None else (n or mask_t))
            m = user_mask(mask, total, hw, image_hw=image_hw)
            if m.ndim == 4:
                if m.shape[0] != 1:
                    raise InputError(f"one request generates one video; mask batch must be 1, got {m.shape[0]}")
                m = m[0]
            return total, m, range(n), "mask"
        args = {k: getattr(self, k) for k in _ARGS}
        if self.task in ("predict", "backward") and args["cond"] is None and self.at is None:
            if n == 0:
                raise InputError(f"task {shorten(self.task)} needs input frames (none were supplied)")
            args["cond"] = n  # default: every supplied frame is given
        total = self.total
        if total is None:
            total = {"interpolate": lambda: _interpolate_total(n, args["stride"], bundle.max_frames),
                     "inpaint": lambda: n}.get(self.task, lambda: bundle.num_frames)()
        total = _frames_total(bundle, total)
        m, slots = _mask_and_slots(self.task, total, hw, image_hw, args)
        named = ", ".join(f"{k}={shorten(v)}" for k, v in {**args, "total": total}.items() if v is not None)
        return total, m, slots, f"task {shorten(self.task)} ({named})"

    def _plan_rollout(self, bundle, video: np.ndarray | None, sampling: Sampling, streamed: bool) -> "Plan":
        n = 0 if video is None else len(video)
        if self.at is not None:
            raise InputError("task 'rollout' does not take at=; its frames start the video")
        window = _check_int("window", bundle.max_frames if self.window is None else self.window, 2, bundle.max_frames)
        cond = _check_int("cond", self.cond, 1, window - 1)
        total = _check_int("total", self.total, cond + 1, MAX_STREAMED_FRAMES if streamed else None)
        if not streamed and total > MAX_ROLLOUT_FRAMES:
            raise InputError(f"rollout total={total} frames is above the maximum {MAX_ROLLOUT_FRAMES} returned in "
                             f"memory; rollout_stream writes longer ones (up to {MAX_STREAMED_FRAMES}) window by window")
        if n < cond:
            raise InputError(f"task 'rollout' (cond={cond}) needs {cond} input frame(s), got {n}")
        return Plan(total=total, mask=None, frames=video[:cond], sampling=sampling, seed=int(self.seed),
                    cond=cond, window=window)


PARAMS: dict[str, tuple[str, str]] = {f.name: (f.metadata["wire"], f.metadata["help"])
                                      for f in fields(Request) if "wire" in f.metadata}  # name -> (kind, help)
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


def parse_params(params: Mapping[str, Any], *, mask=None) -> dict[str, Any]:
    """Wire parameters → Request keywords. Values are typed (int, float, str, a sequence of ints) or strings: an
    integer "-1" (a value, refused later by its range), a number "0.5", a list "0,3,5" or a box "y0,x0,y1,x1" ("" is
    an empty list). None means unset. Task "mask" (or "inpaint" with a mask) is a user mask instead of a task."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise InputError(f"unknown parameter(s) {', '.join(shorten(u) for u in unknown)}; allowed: {', '.join(PARAMS)}")
    kw = {name: _parse(name, PARAMS[name][0], v) for name, v in params.items() if v is not None}
    task = kw.get("task")
    if mask is not None:
        if task not in (None, "mask", "inpaint"):
            raise InputError(f"a user mask is for task 'inpaint' or 'mask' (it replaces the task), not {shorten(task)}")
        kw.pop("task", None)
    elif task == "mask":
        raise InputError("task 'mask' needs a mask (1 = generate)")
    return kw


def _parse(name: str, kind: str, value):
    """One wire value of `kind`; InputError naming the parameter when it cannot be one."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if kind == "str":
        if not isinstance(value, str):
            raise InputError(f"parameter {name!r} must be a string, got {shorten(value)}")
        return value
    if isinstance(value, bool):
        raise InputError(f"parameter {name!r} must be a number, got {value!r}")
    if kind == "int":
        if isinstance(value, str) and _INTEGER.fullmatch(value):
            return int(value)
        if not isinstance(value, numbers.Integral):
            raise InputError(f"parameter {name!r} must be an integer, got {shorten(value)}")
        return value
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"parameter {name!r} must be a number, got {shorten(value)}") from None
    if not isinstance(value, str):  # ints: a sequence is passed on as it is (the Request checks it)
        return value
    items = [v for v in value.split(",") if v.strip()]
    if not all(_INTEGER.fullmatch(v) for v in items):
        raise InputError(f"parameter {name!r} must be comma-separated integers, e.g. '0,3,5'; got {shorten(value)}")
    return tuple(int(v) for v in items)


@dataclass(frozen=True, eq=False)
class Plan:
    """A request checked against a bundle: what the pipeline runs."""

    total: int
    mask: np.ndarray | None  # float32 [T, h, w], 1 = generate (None for a rollout: one predict mask per window)
    frames: np.ndarray | None  # uint8 [T, H, W, 3] on the output timeline, zeros where not given (rollout: the start)
    sampling: Sampling  # (sampler, steps, eta) resolved for the bundle
    seed: int
    cond: int | None = None  # rollout only
    window: int | None = None  # rollout only

    @property
    def batch_key(self) -> tuple:
        """Plans with equal keys run as one batch: same frames, same sampling (rollouts: same windows too)."""
        return (self.total, self.sampling, self.cond, self.window)

    @property
    def windows(self) -> int:
        """Denoising passes this plan needs (1, or a rollout's window count)."""
        if self.cond is None:
            return 1
        return -(-(self.total - self.cond) // (self.window - self.cond))


def as_frames(frames, size: int, max_frames: int | None = None) -> np.ndarray | None:
    """None, a video path (its first `max_frames` frames) or an array → uint8 [T, size, size, 3] (float in [0, 1] is
    rounded), or None."""
    if frames is None:
        return None
    if isinstance(frames, (str, os.PathLike)):
        from vdt_runtime.video import read_video

        frames = read_video(frames, max_frames=max_frames, size=(size, size))  # another size: refused from the header
    f = as_array(frames, "frames", f"uint8 [T, H, W, 3] with H = W = {size}")
    if f.ndim != 4 or f.shape[-1] != 3:
        raise InputError(f"frames must be [T, H, W, 3] (RGB), got shape {tuple(f.shape)}")
    if f.shape[0] == 0:
        raise InputError("frames is empty (T = 0)")
    if f.shape[1:3] != (size, size):
        raise InputError(f"frames are {f.shape[1]}x{f.shape[2]} pixels; this bundle takes {size}x{size}")
    if f.dtype == np.uint8:
        return f
    if f.dtype.kind != "f":
        raise InputError(f"frames must be uint8 in 0..255 or float in [0, 1], got dtype {f.dtype}")
    bad = f.size - int(np.isfinite(f).sum())
    if bad:
        raise InputError(f"frames contain {bad} NaN or Inf value(s); float frames must be finite, in [0, 1]")
    if f.min() < 0 or f.max() > 1:
        raise InputError(f"float frames must lie in [0, 1], got range [{f.min():g}, {f.max():g}]")
    return np.round(f.astype(np.float64) * 255).astype(np.uint8)


def _frames_total(bundle, total) -> int:
    """`total` checked against the bundle's window (a warning past the trained length)."""
    total = _check_int("total", bundle.num_frames if total is None else total, 1, None)
    if total > bundle.max_frames:
        raise InputError(f"total={total} frames exceeds this bundle's max_frames={bundle.max_frames}; "
                         "use rollout for longer videos")
    if total > bundle.num_frames:
        warnings.warn(f"total={total} frames is beyond the trained length {bundle.num_frames} "
                      f"(the bundle allows up to {bundle.max_frames}); quality may drop", RuntimeWarning, stacklevel=4)
    return total


def _interpolate_total(n: int, stride, max_frames: int) -> int:
    """interpolate's default total for n input frames: (n − 1)·stride + 1 when they are the keyframes; n when that
    would not fit the bundle's window (the input is then the full-length clip whose every stride-th frame is kept)."""
    keyframes = (n - 1) * _check_int("stride", stride, 2, None) + 1
    return keyframes if keyframes <= max_frames else n


def _place(video: np.ndarray | None, sources: Sequence[int], slots: list[int], total: int) -> np.ndarray | None:
    """uint8 [total, H, W, 3]: video[sources[j]] at slots[j], zeros elsewhere (those frames are generated)."""
    if video is None:
        return None
    out = np.zeros((total,) + video.shape[1:], np.uint8)
    out[slots] = video[list(sources)]
    return out
