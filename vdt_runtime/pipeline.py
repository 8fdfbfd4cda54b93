"""The deployable pipeline: frames → VAE encode → masked sampling (NumPy) → VAE decode → frames."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from vdt_runtime._arrays import as_array
from vdt_runtime._xp import to_numpy
from vdt_runtime.backends import Backend, open_backend, plan
from vdt_runtime.bundle import STAGES, Bundle
from vdt_runtime.errors import InputError
from vdt_runtime.limits import DEFAULT_VAE_SLICE_PIXELS, MAX_ROLLOUT_FRAMES
from vdt_runtime.requests import ROLLOUT, Plan, Request, as_frames
from vdt_runtime.checks import check_int as _check_int
from vdt_runtime.samplers import get_sampler, per_item_normal
from vdt_runtime.schedule import Schedule, make_schedule
from vdt_runtime.settings import ETA_SAMPLERS, Sampling
from vdt_runtime.timing import Timer

Frames = "np.ndarray | str | os.PathLike | None"


@dataclass
class Result:
    """One generated video."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    mask: np.ndarray  # float32 [T, h, w] latent mask, 1 = generated, 0 = given
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds of its batch (when asked for)
    providers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # stage -> what really ran
    sampling: Sampling | None = None  # the sampler, steps and η that ran


class RolloutStream:
    """Iterator of a rollout's uint8 [n, H, W, 3] frame chunks (Pipeline.rollout_stream); `timings` (stage ->
    seconds, when asked for) fill in as it runs; `close()` stops it."""

    def __init__(self, chunks, timer: Timer | None):
        self._chunks, self._timer = chunks, timer

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        return next(self._chunks)

    @property
    def timings(self) -> dict[str, float]:
        return dict(self._timer.seconds) if self._timer is not None else {}

    def close(self) -> None:
        self._chunks.close()


@dataclass(frozen=True)
class _Sampling:
    """A sampler with its schedule and options, shared by a batch."""

    sample: Callable
    schedule: Schedule
    options: dict


class Pipeline:
    """A bundle with one backend per stage. Build with `Pipeline.load(path)`.

    Frames in and out are uint8 [T, H, W, 3] with H = W = the bundle's image_size (or a video path).
    Float input in [0, 1] is accepted and quantised first (round(x·255)). Every pixel the mask marks as
    given comes back as the ORIGINAL input pixel, bit for bit; only frames with generated cells go
    through the VAE decoder. Everything is validated before any backend runs.

    Every call builds `Request`s (vdt_runtime.requests) and runs them through `generate`, which batches compatible
    requests; a request's frames are the same bytes alone or in any batch (each has its own seeded noise stream).

    Thread-safe: one Pipeline may serve concurrent calls from several threads (each call keeps its state in
    locals; onnxruntime sessions allow concurrent run()), and threads may load their own. Same seed, bundle
    and backend give byte-identical frames, whichever thread runs them.
    """

    def __init__(self, bundle: Bundle, backends: dict[str, Backend], *, backend: str = "", chosen: str | None = None,
                 vae_slice: int | None = None):
        self.bundle = bundle
        self.backends = backends
        self.backend = backend  # the backend choice that runs (auto resolved)
        self.chosen = chosen  # backend="auto": what it picked and why
        self.vae_slice = vae_slice
        self._enc, self._den, self._dec = backends["vae_encoder"], backends["denoiser"], backends["vae_decoder"]

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, backend: str = "auto", precision: str | None = None,
             options: Mapping[str, Any] | None = None, verify: bool = False,
             vae_slice: int | None = None, selftest: bool = False) -> "Pipeline":
        """Open a bundle (default: engines/default) on `backend`: auto | cpu | cuda | ort-tensorrt | openvino.

        `precision` is a compute precision (fp32 | fp16 | bf16 | int8) that runs on every stage able to run it
        (the others keep their default); None is the backend's lossless default. "auto" picks the fastest
        lossless backend and precision for this machine and says so in `pipe.chosen`. `options` are the chosen
        backend's settings (onnxruntime: threads, graph_optimization, spinning, fused; see README); an unknown
        key is refused. `pipe.describe()` says what really runs. Close with `pipe.close()` or a `with` block.
        `vae_slice`: frames per VAE call (default: see Pipeline.vae_slice), the memory knob of the VAE stages.
        `selftest`: replay the bundle's golden cases on what was opened (vdt_runtime.selftest); SelfTestError, naming
        the stage, its error and tolerance, when one fails or the bundle has none (never a silent fallback).
        """
        if vae_slice is not None:
            _check_int("vae_slice", vae_slice, 1, None)
        bundle = Bundle.load(path, verify=verify)
        p = plan(bundle, backend, precision, options)
        backends: dict[str, Backend] = {}
        try:
            for stage in STAGES:
                backends[stage] = open_backend(bundle, stage, p.backend, p.precisions[stage], p.options)
            if selftest:
                from vdt_runtime.selftest import run_selftest

                run_selftest(bundle, backends).raise_if_failed()
        except BaseException:
            for b in backends.values():
                b.close()
            raise
        return cls(bundle, backends, backend=p.backend, chosen=p.chosen, vae_slice=vae_slice)

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

    # --- requests -----------------------------------------------------------------------------
    def generate(self, requests: Iterable[Request], *, progress: bool = False, timings: bool = False) -> list[Result]:
        """Run a list of Requests; one Result each, in order.

        Requests with the same total, sampler, steps and eta (rollouts: also cond and window) run as one batch,
        stacked on B up to the denoiser's batch max (split beyond). Each request draws its noise from its own
        Generator seeded with its seed, so its frames are byte-identical alone or in any batch, at any position.
        Every request is checked before any backend runs. `timings` gives each Result its batch's stage seconds.
        """
        if isinstance(requests, Request):
            raise InputError("generate takes a list of Requests; wrap a single one in [...]")
        requests = list(requests)
        for i, r in enumerate(requests):
            if not isinstance(r, Request):
                raise InputError(f"requests[{i}] is a {type(r).__name__}, not a vdt_runtime.Request")
        plans = [r.plan(self.bundle) for r in requests]
        for p in plans:
            if p.cond is not None and p.total > MAX_ROLLOUT_FRAMES:
                raise InputError(f"rollout total={p.total} frames is above the maximum {MAX_ROLLOUT_FRAMES} returned "
                                 "in memory; rollout_stream writes longer ones window by window")
        samplings = {p.sampling: self._sampling(*p.sampling) for p in plans}
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(plans):
            groups.setdefault(p.batch_key, []).append(i)
        cap = self.bundle.stage("denoiser").axis_max("batch") or len(plans) or 1
        chunks = [idx[i: i + cap] for idx in groups.values() for i in range(0, len(idx), cap)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            steps = sum(plans[c[0]].sampling[1] * plans[c[0]].windows for c in chunks)
            bar = tqdm(total=steps, desc="sampling", unit="step", leave=False)
        results: list[Result | None] = [None] * len(plans)
        try:
            for chunk in chunks:
                batch, timer = [plans[i] for i in chunk], Timer()
                sampling = samplings[batch[0].sampling]
                with timer.stage("total"):
                    rngs = [np.random.default_rng(p.seed) for p in batch]
                    if batch[0].cond is None:
                        outs, masks = self._batch(batch, sampling, rngs, timer, bar), [p.mask for p in batch]
                    else:
                        outs, masks = self._rollout(batch, sampling, rngs, timer, bar)
                for i, out, m in zip(chunk, outs, masks):
                    results[i] = Result(frames=out, mask=m, timings=dict(timer.seconds) if timings else {},
                                        providers=self.providers, sampling=batch[0].sampling)
        finally:
            if bar is not None:
                bar.close()
        return results

    def run(self, frames: Frames = None, *, mask=None, task: str | None = None, total: int | None = None,
            cond=None, stride=None, given=None, box=None, box_frames=None, steps: int | None = None,
            sampler: str | None = None, eta: float | None = None, seed: int = 0, progress: bool = False,
            timings: bool = False) -> Result:
        """Generate `total` frames under a task's mask or a user `mask` (1 = generate).

        `frames` is aligned with the output: frames[i] is output frame i, for i < len(frames) <= total;
        every frame with a given cell must be supplied. Frames not supplied are generated.
        """
        video = as_frames(frames, self.image_size)
        aligned = video is not None and mask is None and task != ROLLOUT
        if total is None and aligned:
            total = len(video)
        request = Request(task=task, frames=video, mask=mask, total=total, cond=cond, stride=stride, given=given,
                          box=box, box_frames=box_frames, at=range(len(video)) if aligned else None,
                          steps=steps, sampler=sampler, eta=eta, seed=seed)
        return self._one(request, progress, timings)

    # --- task conveniences: each builds one Request ------------------------------------------
    def predict(self, frames: Frames, *, cond: int | None = None, total: int | None = None, **kw) -> Result:
        """Continue the first `cond` frames (default: all supplied) to `total` frames."""
        return self._task("predict", frames, cond=cond, total=total, **kw)

    def backward(self, frames: Frames, *, cond: int | None = None, total: int | None = None, **kw) -> Result:
        """Generate what came before: the first `cond` supplied frames become the LAST cond output frames."""
        return self._task("backward", frames, cond=cond, total=total, **kw)

    def interpolate(self, frames: Frames, *, stride: int = 2, total: int | None = None, **kw) -> Result:
        """Keyframes go to frames 0, s, 2s, … < total (default total: (keyframes − 1)·s + 1); the rest is generated."""
        return self._task("interpolate", frames, stride=stride, total=total, **kw)

    def image_to_video(self, image: Frames, *, total: int | None = None, **kw) -> Result:
        """Animate one image (uint8 [H, W, 3], or the first frame of [T, H, W, 3] or of a file)."""
        return self._task("image_to_video", image, total=total, **kw)

    def unconditional(self, *, total: int | None = None, **kw) -> Result:
        """Generate `total` frames from nothing."""
        return self._task("unconditional", None, total=total, **kw)

    def complete(self, frames: Frames, *, given, total: int | None = None, **kw) -> Result:
        """Frames supplied one per entry of `given`, in that order, are placed at those indices; the rest is generated."""
        return self._task("complete", frames, given=given, total=total, **kw)

    def inpaint(self, frames: Frames, *, box=None, box_frames=None, mask=None, **kw) -> Result:
        """Regenerate a pixel box (y0, x0, y1, x1) on `box_frames` (default all), or a user `mask`, of a whole clip."""
        if mask is not None:
            if box is not None or box_frames is not None:
                raise InputError("inpaint takes either mask= or box= (with box_frames=), not both")
            return self._task(None, frames, mask=mask, **kw)
        return self._task("inpaint", frames, box=box, box_frames=box_frames, **kw)

    def rollout(self, frames: Frames, total: int, cond: int, window: int | None = None, **kw) -> Result:
        """Any length: windows of `window` (default max_frames) frames, each conditioned on the last `cond` so far.

        The first `cond` supplied frames start the video; one Generator seeded once drives every window.
        """
        return self._task(ROLLOUT, frames, total=total, cond=cond, window=window, **kw)

    def rollout_stream(self, frames: Frames, total: int, cond: int, window: int | None = None, *,
                       timings: bool = False, **kw) -> "RolloutStream":
        """rollout() as an iterator of uint8 [n, H, W, 3] chunks — the `cond` given frames, then each window's new
        frames as soon as they are decoded — up to limits.MAX_STREAMED_FRAMES (rollout() stops at
        MAX_ROLLOUT_FRAMES). Peak memory does not grow with `total`: hand it to write_video(path, stream) and
        one window is all that is held. Same frames, bit for bit, as rollout(). Validated here, before the first
        chunk is asked for."""
        p = Request(task=ROLLOUT, frames=frames, total=total, cond=cond, window=window, **kw).plan(self.bundle)
        timer = Timer()
        return RolloutStream(self._stream(p, timer), timer if timings else None)

    def _stream(self, p: Plan, timer: Timer):
        """The chunks of one rollout plan: its given frames, then each window's new frames (as _rollout makes them:
        one Generator seeded once drives every window; only the last `cond` frames carry over)."""
        s, rngs = self._sampling(*p.sampling), [np.random.default_rng(p.seed)]
        sampler, steps, eta = p.sampling
        yield p.frames
        context, done = p.frames, p.cond
        while done < p.total:
            new = min(p.window - p.cond, p.total - done)
            wp = Request(task="predict", frames=context[-p.cond:], cond=p.cond, total=p.cond + new, steps=steps,
                         sampler=sampler, eta=eta, seed=p.seed).plan(self.bundle)
            with timer.stage("total"):
                out = self._batch([wp], s, rngs, timer, None)[0]
            context, done = out[-p.cond:], done + new
            yield out[p.cond:]

    def _task(self, task, frames, *, progress: bool = False, timings: bool = False, **kw) -> Result:
        return self._one(Request(task=task, frames=frames, **kw), progress, timings)

    def _one(self, request: Request, progress: bool, timings: bool) -> Result:
        return self.generate([request], progress=progress, timings=timings)[0]

    # --- the work ---------------------------------------------------------------------------
    def _sampling(self, sampler: str, steps: int, eta: float) -> _Sampling:
        d = self.bundle.diffusion
        schedule = make_schedule(steps, num_timesteps=d["num_timesteps"], beta_schedule=d["beta_schedule"],
                                 prediction_type=d["prediction_type"], variance_type=d["variance_type"])
        return _Sampling(get_sampler(sampler), schedule, {"eta": eta} if sampler in ETA_SAMPLERS else {})

    def _batch(self, plans: list[Plan], s: _Sampling, rngs: list[np.random.Generator], timer: Timer,
               bar) -> list[np.ndarray]:
        """uint8 [T, H, W, 3] per plan (all of one total T), sampled as one batch; given cells are the input pixels."""
        total = plans[0].total
        givens = [np.flatnonzero((p.mask < 1).any(axis=(1, 2))) for p in plans]  # frames with any given cell
        generated = [np.flatnonzero((p.mask > 0).any(axis=(1, 2))) for p in plans]
        shape = self.bundle.latent_shape(total)  # [T, C, h, w]
        x_given = np.zeros((len(plans),) + shape, np.float32)  # [B, T, C, h, w]
        if any(g.size for g in givens):
            with timer.stage("vae_encoder"):
                latents = self._encode([p.frames[g] for p, g in zip(plans, givens) if g.size])
            for b, lat in zip([b for b, g in enumerate(givens) if g.size], latents):
                x_given[b, givens[b]] = lat
        den = self._den
        xp = den.array_namespace()  # NumPy, or CuPy for a GPU backend: the sampler state stays where it runs
        x_T = per_item_normal(rngs, shape, xp)  # each item's own seed, made where the sampler state lives
        names = [spec.name for spec in den.inputs]
        out_name = den.outputs[0].name
        together = den.batch_invariant

        def denoise(x, t):  # x [B, T, C, h, w] float32, t [B] float32 → [B, T, outC, h, w]
            start = time.perf_counter()
            if together:
                out = den.run({names[0]: x, names[1]: t})[out_name]
            else:  # one call per item, so a per-call activation scale sees only that item
                out = xp.concatenate([den.run({names[0]: x[b: b + 1], names[1]: t[b: b + 1]})[out_name]
                                      for b in range(len(x))])
            timer.add("denoiser", time.perf_counter() - start)
            return out

        callback = (lambda i, n, x: bar.update(1)) if bar is not None else None
        start, before = time.perf_counter(), timer.seconds.get("denoiser", 0.0)
        x0 = to_numpy(s.sample(denoise, x_T, s.schedule, rng=rngs, mask=xp.asarray(np.stack([p.mask for p in plans])),
                               x_given=xp.asarray(x_given), callback=callback, **s.options))
        timer.add("sampler", time.perf_counter() - start - (timer.seconds.get("denoiser", 0.0) - before))

        with timer.stage("vae_decoder"):
            decoded = self._decode([x0[b, g] for b, g in enumerate(generated)])
        outs = []
        f = self.bundle.vae["downsample"]
        for p, given, gen, pixels in zip(plans, givens, generated, decoded):
            out = np.zeros((total, self.image_size, self.image_size, 3), np.uint8)
            out[gen] = pixels
            if given.size:
                keep = np.repeat(np.repeat(p.mask[given] == 0, f, axis=1), f, axis=2)  # [G, H, W] pixel is given
                out[given] = np.where(keep[..., None], p.frames[given], out[given])
            outs.append(out)
        return outs

    def _rollout(self, plans: list[Plan], s: _Sampling, rngs, timer: Timer, bar):
        """Rollouts of one (total, cond, window) in lockstep: each window is a batch of predict requests."""
        p0 = plans[0]
        cond, window, total = p0.cond, p0.window, p0.total
        hw = (self.bundle.latent_size,) * 2
        videos = [p.frames for p in plans]
        masks = [[np.zeros((cond,) + hw, np.float32)] for _ in plans]
        sampler, steps, eta = p0.sampling
        while len(videos[0]) < total:
            new = min(window - cond, total - len(videos[0]))
            window_plans = [Request(task="predict", frames=v[-cond:], cond=cond, total=cond + new, steps=steps,
                                    sampler=sampler, eta=eta, seed=p.seed).plan(self.bundle)
                            for v, p in zip(videos, plans)]
            outs = self._batch(window_plans, s, rngs, timer, bar)
            videos = [np.concatenate([v, out[cond:]]) for v, out in zip(videos, outs)]
            for m, wp in zip(masks, window_plans):
                m.append(wp.mask[cond:])
        return videos, [np.concatenate(m) for m in masks]

    def _encode(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 [N, H, W, 3] per clip → scaled latents float32 [N, C, h, w] per clip."""
        images = [c.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0 for c in clips]  # [N, 3, H, W] in [-1, 1]
        return self._stage(self._enc, images)

    def _decode(self, latents: list[np.ndarray]) -> list[np.ndarray]:
        """float32 [N, C, h, w] per clip → uint8 [N, H, W, 3] per clip (clipped to [-1, 1], rounded)."""
        images = self._stage(self._dec, [x.astype(np.float32) for x in latents])  # [N, 3, H, W] each
        return [np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
                for x in images]

    def _stage(self, backend: Backend, parts: list[np.ndarray]) -> list[np.ndarray]:
        """Run a VAE stage over every part's items [N, ...]: together when batch-invariant, else part by part."""
        if not backend.batch_invariant:
            return [self._batched(backend, x) for x in parts]
        sizes = np.cumsum([len(x) for x in parts])[:-1]
        return np.split(self._batched(backend, np.concatenate(parts)), sizes) if parts else []

    def _batched(self, backend: Backend, x: np.ndarray) -> np.ndarray:
        """Run a VAE stage over x [N, ...] in slices of `vae_slice` frames (at most the manifest's batch max): peak
        memory follows the slice, not N (diffusers' "VAE slicing")."""
        name, out = backend.inputs[0].name, backend.outputs[0].name
        cap = min(self.vae_slice, self.bundle.stage(backend.stage).axis_max("batch", len(x)) or len(x))
        return np.concatenate([backend.run({name: x[i: i + cap]})[out] for i in range(0, len(x), cap)])

    @property
    def vae_slice(self) -> int:
        """Frames per VAE encoder / decoder call. Default: as many as make limits.DEFAULT_VAE_SLICE_PIXELS
        pixels (1 frame at 256 px, 64 at 32 px); smaller saves memory (BENCHMARKS.md §8)."""
        return self._vae_slice or max(1, DEFAULT_VAE_SLICE_PIXELS // self.image_size ** 2)

    @vae_slice.setter
    def vae_slice(self, frames: int | None) -> None:
        self._vae_slice = None if frames is None else _check_int("vae_slice", frames, 1, None)
