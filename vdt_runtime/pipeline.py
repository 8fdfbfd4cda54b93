"""The deployable pipeline: frames → VAE encode → masked sampling (NumPy) → VAE decode → frames."""
from __future__ import annotations

import numbers
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from vdt_runtime._arrays import as_array
from vdt_runtime.backends import Backend, open_backend, plan
from vdt_runtime.bundle import STAGES, Bundle, default_bundle_path
from vdt_runtime.errors import InputError
from vdt_runtime.masks import TASKS, task_mask, user_mask
from vdt_runtime.samplers import get_sampler, standard_normal
from vdt_runtime.schedule import Schedule, _check_int, make_schedule
from vdt_runtime.timing import Timer
from vdt_runtime.video import read_video

Frames = "np.ndarray | str | os.PathLike | None"


@dataclass
class Result:
    """One generated video."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    mask: np.ndarray  # float32 [T, h, w] latent mask, 1 = generated, 0 = given
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds (when asked for)
    providers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # stage -> what really ran


@dataclass(frozen=True)
class _Sampling:
    """Validated sampling settings."""

    sample: Callable
    schedule: Schedule
    options: dict
    seed: int
    progress: bool
    timings: bool


class Pipeline:
    """A bundle with one backend per stage. Build with `Pipeline.load(path)`.

    Frames in and out are uint8 [T, H, W, 3] with H = W = the bundle's image_size (or a video path).
    Float input in [0, 1] is accepted and quantised first (round(x·255)). Every pixel the mask marks as
    given comes back as the ORIGINAL input pixel, bit for bit; only frames with generated cells go
    through the VAE decoder. Everything is validated before any backend runs.

    Thread-safe: one Pipeline may serve concurrent calls from several threads (each call keeps its state in
    locals; onnxruntime sessions allow concurrent run()), and threads may load their own. Same seed, bundle
    and backend give byte-identical frames, whichever thread runs them.
    """

    def __init__(self, bundle: Bundle, backends: dict[str, Backend], *, backend: str = "", chosen: str | None = None):
        self.bundle = bundle
        self.backends = backends
        self.backend = backend  # the backend choice that runs (auto resolved)
        self.chosen = chosen  # backend="auto": what it picked and why
        self._enc, self._den, self._dec = backends["vae_encoder"], backends["denoiser"], backends["vae_decoder"]

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, backend: str = "auto", precision: str | None = None,
             options: Mapping[str, Any] | None = None, verify: bool = False) -> "Pipeline":
        """Open a bundle (default: engines/default) on `backend`: auto | cpu | cuda | ort-tensorrt | openvino.

        `precision` is a compute precision (fp32 | fp16 | bf16 | int8) that runs on every stage able to run it
        (the others keep their default); None is the backend's lossless default. "auto" picks the fastest
        lossless backend and precision for this machine and says so in `pipe.chosen`. `options` are the chosen
        backend's settings (onnxruntime: threads, graph_optimization, spinning, fused; see README); an unknown
        key is refused. `pipe.describe()` says what really runs. Close with `pipe.close()` or a `with` block.
        """
        bundle = Bundle.load(default_bundle_path() if path is None else path, verify=verify)
        p = plan(bundle, backend, precision, options)
        backends: dict[str, Backend] = {}
        try:
            for stage in STAGES:
                backends[stage] = open_backend(bundle, stage, p.backend, p.precisions[stage], p.options)
        except BaseException:
            for b in backends.values():
                b.close()
            raise
        return cls(bundle, backends, backend=p.backend, chosen=p.chosen)

    def close(self) -> None:
        """Release every stage's backend (idempotent); the pipeline cannot run afterwards."""
        for b in self.backends.values():
            b.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        """What runs: the backend choice (and why, for auto), then each stage's precision, graph and device."""
        lines = [f"backend    {self.backend}" + (f"  ({self.chosen})" if self.chosen else "")]
        lines += [f"  {stage:<12} {b.precision:<5} {b.graph:<8} graph, runs on {', '.join(b.providers)}"
                  for stage, b in self.backends.items()]
        return "\n".join(lines)

    @property
    def providers(self) -> dict[str, tuple[str, ...]]:
        """Stage -> the execution providers that really run it."""
        return {stage: b.providers for stage, b in self.backends.items()}

    @property
    def graphs(self) -> dict[str, str]:
        """Stage -> "fused" (onnxruntime contrib operators), "standard" or "engine" graph, as loaded."""
        return {stage: b.graph for stage, b in self.backends.items()}

    @property
    def image_size(self) -> int:
        return self.bundle.image_size

    @property
    def max_frames(self) -> int:
        return self.bundle.max_frames

    # --- the general entry point ------------------------------------------------------------
    def run(self, frames: Frames = None, *, mask=None, task: str | None = None, total: int | None = None,
            cond=None, stride=None, given=None, box=None, box_frames=None, steps: int = 50,
            sampler: str = "ddpm", eta: float = 0.0, seed: int = 0, progress: bool = False,
            timings: bool = False) -> Result:
        """Generate `total` frames under a task's mask or a user `mask` (1 = generate).

        `frames` is aligned with the output: frames[i] is output frame i, for i < len(frames) <= total;
        every frame with a given cell must be supplied. Frames not supplied are generated.
        """
        sampling = self._sampling(steps, sampler, eta, seed, progress, timings)
        video = self._frames(frames)
        if total is None:
            total = len(video) if video is not None else (np.shape(mask)[-3] if mask is not None else None)
        total = self._total(self.bundle.num_frames if total is None else total)
        m = self._mask(mask, task, total, cond=cond, stride=stride, given=given, box=box, box_frames=box_frames)
        self._check_supplied(video, m, total, task or "mask")
        timer, bar = Timer(), self._bar(sampling, 1)
        try:
            with timer.stage("total"):
                out = self._generate(video, m, sampling, np.random.default_rng(sampling.seed), timer, bar)
        finally:
            if bar is not None:
                bar.close()
        return self._result(out, m, timer, sampling)

    # --- task conveniences --------------------------------------------------------------------
    def predict(self, frames: Frames, *, cond: int | None = None, total: int | None = None, **kw) -> Result:
        """Continue the first `cond` frames (default: all supplied) to `total` frames."""
        video = self._need_frames(frames, "predict")
        cond = _check_int("cond", len(video) if cond is None else cond, 1, None)
        self._enough(video, cond, f"predict with cond={cond}")
        return self.run(video[:cond], task="predict", cond=cond, total=self._default_total(total), **kw)

    def backward(self, frames: Frames, *, cond: int | None = None, total: int | None = None, **kw) -> Result:
        """Generate what came before: the first `cond` supplied frames become the LAST cond output frames."""
        video = self._need_frames(frames, "backward")
        total = self._total(self._default_total(total))
        cond = _check_int("cond", len(video) if cond is None else cond, 1, total - 1)
        self._enough(video, cond, "backward")
        return self.run(self._place(video[:cond], range(total - cond, total), total), task="backward",
                        cond=cond, total=total, **kw)

    def interpolate(self, frames: Frames, *, stride: int = 2, total: int | None = None, **kw) -> Result:
        """Keyframes go to frames 0, s, 2s, … < total (default total: (keyframes − 1)·s + 1); the rest is generated."""
        video = self._need_frames(frames, "interpolate")
        stride = _check_int("stride", stride, 2, None)
        total = self._total((len(video) - 1) * stride + 1 if total is None else total)
        slots = range(0, total, stride)
        self._enough(video, len(slots), f"interpolate with stride={stride} over total={total}")
        return self.run(self._place(video[: len(slots)], slots, total), task="interpolate", stride=stride,
                        total=total, **kw)

    def image_to_video(self, image: Frames, *, total: int | None = None, **kw) -> Result:
        """Animate one image (uint8 [H, W, 3], or the first frame of [T, H, W, 3] or of a file)."""
        if isinstance(image, np.ndarray) and image.ndim == 3:
            image = image[None]
        video = self._need_frames(image, "image_to_video")
        return self.run(video[:1], task="image_to_video", total=self._default_total(total), **kw)

    def unconditional(self, *, total: int | None = None, **kw) -> Result:
        """Generate `total` frames from nothing."""
        return self.run(None, task="unconditional", total=self._default_total(total), **kw)

    def complete(self, frames: Frames, *, given, total: int | None = None, **kw) -> Result:
        """Frames supplied one per entry of `given`, in that order, are placed at those indices; the rest is generated."""
        video = self._need_frames(frames, "complete")
        total = self._total(self._default_total(total))
        if isinstance(given, (str, bytes)) or not hasattr(given, "__iter__"):
            raise InputError(f"given must be a sequence of frame indices in 0..{total - 1}, got {given!r}")
        given = [_check_int("given index", i, 0, total - 1) for i in given]
        self._enough(video, len(given), f"complete with given={given}")
        return self.run(self._place(video[: len(given)], given, total), task="complete", given=given,
                        total=total, **kw)

    def inpaint(self, frames: Frames, *, box=None, box_frames=None, mask=None, **kw) -> Result:
        """Regenerate a pixel box (y0, x0, y1, x1) on `box_frames` (default all), or a user `mask`, of a whole clip."""
        video = self._need_frames(frames, "inpaint")
        if mask is not None:
            if box is not None or box_frames is not None:
                raise InputError("inpaint takes either mask= or box= (with box_frames=), not both")
            return self.run(video, mask=mask, **kw)
        return self.run(video, task="inpaint", box=box, box_frames=box_frames, total=len(video), **kw)

    def rollout(self, frames: Frames, total: int, cond: int, window: int | None = None, *, steps: int = 50,
                sampler: str = "ddpm", eta: float = 0.0, seed: int = 0, progress: bool = False,
                timings: bool = False) -> Result:
        """Any length: windows of `window` (default max_frames) frames, each conditioned on the last `cond` so far.

        The first `cond` supplied frames start the video; one Generator seeded once drives every window.
        """
        sampling = self._sampling(steps, sampler, eta, seed, progress, timings)
        video = self._need_frames(frames, "rollout")
        window = _check_int("window", self.max_frames if window is None else window, 2, self.max_frames)
        cond = _check_int("cond", cond, 1, window - 1)
        total = _check_int("total", total, cond + 1, None)
        self._enough(video, cond, "rollout")
        hw = (self.bundle.latent_size,) * 2
        video, masks = video[:cond], [np.zeros((cond,) + hw, np.float32)]
        rng, timer = np.random.default_rng(sampling.seed), Timer()
        windows = -(-(total - cond) // (window - cond))
        bar = self._bar(sampling, windows)
        try:
            with timer.stage("total"):
                while len(video) < total:
                    new = min(window - cond, total - len(video))
                    m = task_mask("predict", cond + new, hw, cond=cond)  # [cond + new, h, w]
                    out = self._generate(video[-cond:], m, sampling, rng, timer, bar)
                    video = np.concatenate([video, out[cond:]])
                    masks.append(m[cond:])
        finally:
            if bar is not None:
                bar.close()
        return self._result(video, np.concatenate(masks), timer, sampling)

    # --- validation -----------------------------------------------------------------------------
    def _sampling(self, steps, sampler, eta, seed, progress, timings) -> _Sampling:
        sample = get_sampler(sampler)
        d = self.bundle.diffusion
        schedule = make_schedule(_check_int("steps", steps, 1, int(d["num_timesteps"])),
                                 num_timesteps=d["num_timesteps"], beta_schedule=d["beta_schedule"],
                                 prediction_type=d["prediction_type"], variance_type=d["variance_type"])
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
            raise InputError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
        options = {}
        if sampler in ("ddim", "dpmpp"):
            options["eta"] = eta
        elif eta != 0.0:
            raise InputError(f"eta={eta!r} applies only to samplers 'ddim' and 'dpmpp', not {sampler!r}")
        return _Sampling(sample, schedule, options, int(seed), bool(progress), bool(timings))

    def _frames(self, frames: Frames) -> np.ndarray | None:
        """None, a path or an array → uint8 [T, H, W, 3] of the bundle's image size (or None)."""
        if frames is None:
            return None
        if isinstance(frames, (str, os.PathLike)):
            frames = read_video(frames)
        f = as_array(frames, "frames", f"uint8 [T, H, W, 3] with H = W = {self.image_size}")
        if f.ndim != 4 or f.shape[-1] != 3:
            raise InputError(f"frames must be [T, H, W, 3] (RGB), got shape {tuple(f.shape)}")
        if f.shape[0] == 0:
            raise InputError("frames is empty (T = 0)")
        size = self.image_size
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

    def _need_frames(self, frames: Frames, task: str) -> np.ndarray:
        video = self._frames(frames)
        if video is None:
            raise InputError(f"task {task!r} needs input frames")
        return video

    @staticmethod
    def _enough(video: np.ndarray, needed: int, what: str) -> None:
        if len(video) < needed:
            raise InputError(f"{what} needs {needed} input frame(s), got {len(video)}")

    def _default_total(self, total):
        return self.bundle.num_frames if total is None else total

    def _total(self, total) -> int:
        total = _check_int("total", total, 1, None)
        if total > self.max_frames:
            raise InputError(f"total={total} frames exceeds this bundle's max_frames={self.max_frames}; "
                             "use rollout for longer videos")
        if total > self.bundle.num_frames:
            warnings.warn(f"total={total} frames is beyond the trained length {self.bundle.num_frames} "
                          f"(the bundle allows up to {self.max_frames}); quality may drop", RuntimeWarning,
                          stacklevel=3)
        return total

    def _mask(self, mask, task, total: int, **task_args) -> np.ndarray:
        """The latent mask float32 [T, h, w] from a task or a user mask."""
        hw = (self.bundle.latent_size,) * 2
        if mask is None:
            if task is None:
                raise InputError(f"give task= (one of {', '.join(TASKS)}) or mask=")
            return task_mask(task, total, hw, image_hw=(self.image_size,) * 2, **task_args)
        extra = {k: v for k, v in task_args.items() if v is not None}
        if task is not None or extra:
            drop = ([f"task={task!r}"] if task is not None else []) + [f"{k}={v!r}" for k, v in sorted(extra.items())]
            raise InputError(f"a user mask replaces the task; drop {', '.join(drop)}")
        m = user_mask(mask, total, hw, image_hw=(self.image_size,) * 2)
        if m.ndim == 4:
            if m.shape[0] != 1:
                raise InputError(f"the pipeline generates one video; mask batch must be 1, got {m.shape[0]}")
            m = m[0]
        return m

    @staticmethod
    def _check_supplied(video, m: np.ndarray, total: int, what: str) -> None:
        supplied = 0 if video is None else len(video)
        if supplied > total:
            raise InputError(f"got {supplied} frames for total={total}; supply at most total frames")
        given = np.flatnonzero((m < 1).any(axis=(1, 2)))
        missing = given[given >= supplied]
        if missing.size:
            raise InputError(f"{what} gives frame(s) {missing.tolist()} but only {supplied} frame(s) were supplied")

    @staticmethod
    def _place(video: np.ndarray, indices, total: int) -> np.ndarray:
        """uint8 [total, H, W, 3]: video[j] at indices[j], zeros elsewhere (those frames are generated)."""
        out = np.zeros((total,) + video.shape[1:], np.uint8)
        out[list(indices)] = video
        return out

    # --- the work ---------------------------------------------------------------------------
    def _generate(self, video, m: np.ndarray, s: _Sampling, rng: np.random.Generator, timer: Timer, bar) -> np.ndarray:
        """uint8 [T, H, W, 3] for mask m [T, h, w]; given cells are the input pixels."""
        total = m.shape[0]
        given = np.flatnonzero((m < 1).any(axis=(1, 2)))  # frames with any given cell
        generated = np.flatnonzero((m > 0).any(axis=(1, 2)))
        x_given = np.zeros((1,) + self.bundle.latent_shape(total), np.float32)  # [1, T, C, h, w]
        if given.size:
            with timer.stage("vae_encoder"):
                x_given[0, given] = self._encode(video[given])
        x_T = standard_normal(rng, x_given.shape)

        den = self._den
        names = [spec.name for spec in den.inputs]
        out_name = den.outputs[0].name

        def denoise(x, t):  # x [1, T, C, h, w] float32, t [1] float32 → [1, T, outC, h, w]
            start = time.perf_counter()
            out = den.run({names[0]: x, names[1]: t})[out_name]
            timer.add("denoiser", time.perf_counter() - start)
            return out

        callback = (lambda i, n, x: bar.update(1)) if bar is not None else None
        start, before = time.perf_counter(), timer.seconds.get("denoiser", 0.0)
        x0 = s.sample(denoise, x_T, s.schedule, rng=rng, mask=m, x_given=x_given, callback=callback, **s.options)
        timer.add("sampler", time.perf_counter() - start - (timer.seconds.get("denoiser", 0.0) - before))

        out = np.zeros((total, self.image_size, self.image_size, 3), np.uint8)
        with timer.stage("vae_decoder"):
            out[generated] = self._decode(x0[0, generated])
        if given.size:
            f = self.bundle.vae["downsample"]
            keep = np.repeat(np.repeat(m[given] == 0, f, axis=1), f, axis=2)  # [G, H, W] pixel is given
            out[given] = np.where(keep[..., None], video[given], out[given])
        return out

    def _encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] → scaled latents float32 [N, C, h, w], in batches the encoder accepts."""
        images = frames.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0  # [N, 3, H, W] in [-1, 1]
        return self._batched(self._enc, images)

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        """float32 [N, C, h, w] → uint8 [N, H, W, 3] (clipped to [-1, 1], rounded)."""
        if len(latents) == 0:
            return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        images = self._batched(self._dec, latents.astype(np.float32))  # [N, 3, H, W]
        pixels = np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
        return pixels.transpose(0, 2, 3, 1)

    def _batched(self, backend: Backend, x: np.ndarray) -> np.ndarray:
        """Run a VAE stage over x [N, ...] in chunks of at most the manifest's batch max."""
        cap = self.bundle.stage(backend.stage).axis_max("batch", len(x)) or len(x)
        name, out = backend.inputs[0].name, backend.outputs[0].name
        return np.concatenate([backend.run({name: x[i: i + cap]})[out] for i in range(0, len(x), cap)])

    def _bar(self, s: _Sampling, windows: int):
        if not s.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=windows * s.schedule.steps, desc="sampling", unit="step", leave=False)

    def _result(self, frames: np.ndarray, m: np.ndarray, timer: Timer, s: _Sampling) -> Result:
        return Result(frames=frames, mask=m, timings=dict(timer.seconds) if s.timings else {},
                      providers=self.providers)
