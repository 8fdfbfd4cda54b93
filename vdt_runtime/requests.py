"""One request = one video: a task (or a user mask), its frames, the total length, sampling settings and a seed.

The one place a task is defined. Each task names the arguments it takes and the output frames its supplied
frames go to ("slots"); the mask follows from the slots: 1 (generate) everywhere except the slots, which
are given (inpaint: the pixel box is generated, everything else given). The Python API, the CLI, the
server and the batch job all build a `Request`; `Pipeline.generate` runs a list of them.
"""
from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from vdt_runtime._arrays import as_array
from vdt_runtime.errors import InputError
from vdt_runtime.limits import MAX_STREAMED_FRAMES, shorten
from vdt_runtime.masks import box_mask, check_not_all_given, check_hw, frame_indices, user_mask
from vdt_runtime.checks import check_int as _check_int
from vdt_runtime.settings import DEFAULT_SAMPLING, ETA_SAMPLERS, SAMPLERS, Sampling, check_eta, check_sampling


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


@dataclass(frozen=True, eq=False)
class Request:
    """One video to generate. Build with keywords; everything that can be checked without a bundle is checked here.

    task     one of TASKS or "rollout"; or leave it None and give `mask` (float/bool [T, h, w] or pixel-size
             [T, H, W], 1 = generate)
    frames   uint8 [N, H, W, 3] (float in [0, 1] is rounded to uint8), a video path, or None. By default they are
             the task's given frames in order: predict the first `cond`, backward the last `cond`, interpolate the
             keyframes, image_to_video one image ([H, W, 3] accepted), complete one per `given` index, inpaint
             and a user mask the whole clip. `at` places them at other output indices instead (frames[j] → at[j]).
    total    output frames (default: the bundle's trained length; interpolate (N − 1)·stride + 1; inpaint N;
             a user mask its T)
    cond, stride, given, box, box_frames, window   the task's arguments (only those it takes)
    steps, sampler, eta, seed   sampling; the same request gives byte-identical frames alone or in any batch.
             Without `sampler`, the bundle's recommended sampler, steps and η run (bundle.sampling: the manifest's
             "sampling", else DDPM 50); `steps` or `eta` given alone replace just that value. A sampler other than
             the recommended one defaults to 50 steps and η = 0.
    """

    task: str | None = None
    frames: Any = None
    mask: Any = None
    total: int | None = None
    cond: int | None = None
    stride: int | None = None
    given: Sequence[int] | None = None
    box: Sequence[int] | None = None
    box_frames: Sequence[int] | None = None
    window: int | None = None
    at: Sequence[int] | None = None
    steps: int | None = None
    sampler: str | None = None
    eta: float | None = None
    seed: int = 0

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
        if self.sampler is not None and (not isinstance(self.sampler, str) or self.sampler not in SAMPLERS):
            raise InputError(f"unknown sampler {shorten(self.sampler)}; expected one of {', '.join(SAMPLERS)}")
        if self.sampler is not None and self.sampler not in ETA_SAMPLERS and self.eta not in (None, 0.0):
            raise InputError(f"eta={shorten(self.eta)} applies only to samplers 'ddim' and 'dpmpp', not {shorten(self.sampler)}")
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

    def plan(self, bundle) -> "Plan":
        """Check this request against a bundle's sizes; frames placed on the output timeline and the latent mask."""
        sampling = self.sampling(bundle)
        frames = self.frames
        if self.task == "image_to_video" and isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = frames[None]  # one image
        video = as_frames(frames, bundle.image_size)
        n = 0 if video is None else len(video)
        if self.task == ROLLOUT:
            return self._plan_rollout(bundle, video, sampling)
        total, m, slots, what = self._mask(bundle, n)
        if self.at is not None or self.mask is not None:  # frames at explicit positions (default 0, 1, 2, …)
            if n > total:
                raise InputError(f"got {n} frames for total={total}; supply at most total frames")
            slots = range(n) if self.at is None else frame_indices("at", self.at, total)
            if len(slots) != n:
                raise InputError(f"at= gives {len(slots)} position(s) for {n} frame(s); give one per frame")
        elif n < len(slots):
            if n == 0:
                raise InputError(f"{what} needs input frames (none were supplied)")
            raise InputError(f"{what} needs {len(slots)} input frame(s), got {n}; every given frame must be supplied")
        placed = _place(video, list(slots)[:n], total)
        given = np.flatnonzero((m < 1).any(axis=(1, 2)))
        missing = sorted(set(given.tolist()) - set(list(slots)[:n]))
        if missing:
            raise InputError(f"{what} gives frame(s) {missing} but only {n} frame(s) were supplied")
        return Plan(total=total, mask=m, frames=placed, sampling=sampling, seed=int(self.seed))

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
            total = {"interpolate": lambda: (n - 1) * _check_int("stride", args["stride"], 2, None) + 1,
                     "inpaint": lambda: n}.get(self.task, lambda: bundle.num_frames)()
        total = _frames_total(bundle, total)
        m, slots = _mask_and_slots(self.task, total, hw, image_hw, args)
        named = ", ".join(f"{k}={shorten(v)}" for k, v in {**args, "total": total}.items() if v is not None)
        return total, m, slots, f"task {shorten(self.task)} ({named})"

    def _plan_rollout(self, bundle, video: np.ndarray, sampling: Sampling) -> "Plan":
        n = len(video)
        if self.at is not None:
            raise InputError("task 'rollout' does not take at=; its frames start the video")
        window = _check_int("window", bundle.max_frames if self.window is None else self.window, 2, bundle.max_frames)
        cond = _check_int("cond", self.cond, 1, window - 1)
        total = _check_int("total", self.total, cond + 1, MAX_STREAMED_FRAMES)
        if n < cond:
            raise InputError(f"task 'rollout' (cond={cond}) needs {cond} input frame(s), got {n}")
        return Plan(total=total, mask=None, frames=video[:cond], sampling=sampling, seed=int(self.seed),
                    cond=cond, window=window)


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


def as_frames(frames, size: int) -> np.ndarray | None:
    """None, a video path or an array → uint8 [T, size, size, 3] (float in [0, 1] is rounded), or None."""
    if frames is None:
        return None
    if isinstance(frames, (str, os.PathLike)):
        from vdt_runtime.video import read_video

        frames = read_video(frames, size=(size, size))  # another size is refused before decoding
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


def _place(video: np.ndarray | None, slots: list[int], total: int) -> np.ndarray | None:
    """uint8 [total, H, W, 3]: video[j] at slots[j], zeros elsewhere (those frames are generated)."""
    if video is None:
        return None
    out = np.zeros((total,) + video.shape[1:], np.uint8)
    out[slots] = video[: len(slots)]
    return out
