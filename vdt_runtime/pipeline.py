"""The deployable pipeline: frames → VAE encode → masked sampling (NumPy) → VAE decode → frames."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from vdt_runtime import rollout
from vdt_runtime.backends import Backend, plan
from vdt_runtime.bundle import Bundle
from vdt_runtime.checks import check_int as _check_int
from vdt_runtime.errors import InputError, VDTError
from vdt_runtime.limits import shorten
from vdt_runtime.requests import ROLLOUT, Plan, Request, as_frames
from vdt_runtime.runner import Runner
from vdt_runtime.settings import Sampling
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
        self._runner = Runner(bundle, backends)
        self.vae_slice = vae_slice

    @classmethod
    def load(cls, path: str | os.PathLike | Bundle | None = None, *, backend: str = "auto", precision: str | None = None,
             options: Mapping[str, Any] | None = None, verify: bool = False,
             vae_slice: int | None = None, selftest: bool = False) -> "Pipeline":
        """Open a bundle (a folder, an installed name or an already loaded Bundle; default: engines/default) on
        `backend`: auto | cpu | cuda | ort-tensorrt | openvino.

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
        bundle = path if isinstance(path, Bundle) else Bundle.load(path, verify=verify)
        if verify and isinstance(path, Bundle):
            bundle.verify()
        p = plan(bundle, backend, precision, options)  # decided once; every stage opens from it
        backends = p.open_all(bundle)
        if selftest:
            from vdt_runtime.selftest import run_selftest

            try:
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
        if isinstance(requests, (str, bytes, dict)) or not isinstance(requests, Iterable):
            raise InputError(f"generate takes a list of Requests, got {shorten(requests)}")
        requests = list(requests)
        for i, r in enumerate(requests):
            if not isinstance(r, Request):
                raise InputError(f"requests[{i}] is a {type(r).__name__}, not a vdt_runtime.Request")
        plans = []
        for i, r in enumerate(requests):  # every refusal is the plan's: nothing below refuses a planned request
            try:
                plans.append(r.plan(self.bundle))
            except VDTError as e:
                if len(requests) == 1:
                    raise
                raise type(e)(f"requests[{i}]: {e}") from None
        return self._generate(plans, progress=progress, timings=timings)

    def _generate(self, plans: list[Plan], *, progress: bool = False, timings: bool = False) -> list[Result]:
        """generate() for requests already planned on this bundle (`Request.plan(bundle)`, not streamed): the front
        ends (vdt run, the server) plan first, to refuse before a backend loads or per request, and run that plan."""
        done = self._runner.run(plans, progress=progress)
        return [Result(frames=frames, mask=m, timings=dict(seconds) if timings else {}, providers=self.providers,
                       sampling=p.sampling) for p, (frames, m, seconds) in zip(plans, done)]

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
        """Generate what came before: `cond` supplied frames become the LAST cond output frames (or, from a clip of
        `total` frames, its own last cond frames are kept)."""
        return self._task("backward", frames, cond=cond, total=total, **kw)

    def interpolate(self, frames: Frames, *, stride: int = 2, total: int | None = None, **kw) -> Result:
        """Keyframes go to frames 0, s, 2s, … < total (default total: (keyframes − 1)·s + 1); the rest is generated.
        A longer clip (e.g. full length) keeps its own frames 0, s, 2s, … (see Request)."""
        return self._task("interpolate", frames, stride=stride, total=total, **kw)

    def image_to_video(self, image: Frames, *, total: int | None = None, **kw) -> Result:
        """Animate one image (uint8 [H, W, 3], or the first frame of [T, H, W, 3] or of a file)."""
        return self._task("image_to_video", image, total=total, **kw)

    def unconditional(self, *, total: int | None = None, **kw) -> Result:
        """Generate `total` frames from nothing."""
        return self._task("unconditional", None, total=total, **kw)

    def complete(self, frames: Frames, *, given, total: int | None = None, **kw) -> Result:
        """Frames supplied one per entry of `given`, in that order, are placed at those indices (or a longer clip keeps
        its own frames there); the rest is generated. A position named twice, or none, is refused."""
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
        return self.stream(Request(task=ROLLOUT, frames=frames, total=total, cond=cond, window=window, **kw),
                           timings=timings)

    def stream(self, request: Request, *, timings: bool = False) -> "RolloutStream":
        """A rollout Request run window by window, as rollout_stream (which builds one); planned here, before the
        first chunk is asked for."""
        return self._stream(request.plan(self.bundle, streamed=True), timings=timings)

    def _stream(self, plan: Plan, *, timings: bool = False) -> "RolloutStream":
        """stream() for a rollout already planned on this bundle (`Request.plan(bundle, streamed=True)`)."""
        timer = Timer()
        return RolloutStream(rollout.stream(self._runner, plan, timer), timer if timings else None)

    def _task(self, task, frames, *, progress: bool = False, timings: bool = False, **kw) -> Result:
        return self._one(Request(task=task, frames=frames, **kw), progress, timings)

    def _one(self, request: Request, progress: bool, timings: bool) -> Result:
        return self.generate([request], progress=progress, timings=timings)[0]

    @property
    def vae_slice(self) -> int:
        """Frames per VAE encoder / decoder call. Default: as many as make limits.DEFAULT_VAE_SLICE_PIXELS
        pixels (1 frame at 256 px, 64 at 32 px); smaller saves memory (BENCHMARKS.md §8)."""
        return self._runner.slice_frames

    @vae_slice.setter
    def vae_slice(self, frames: int | None) -> None:
        self._runner.vae_slice = None if frames is None else _check_int("vae_slice", frames, 1, None)
