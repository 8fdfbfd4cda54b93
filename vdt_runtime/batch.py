"""Batch jobs on Ray Data: one Pipeline per actor, `map_batches` over rows of (input, request, seed, output).

    rows = clip_rows("clips/", "out/", task="predict", cond=8, total=16, steps=50)
    ds = ray.data.from_items(rows).map_batches(GenerateBatch, fn_constructor_kwargs={"bundle": None},
                                               concurrency=2, batch_size=8)
    for row in ds.iter_rows(): ...   # input, output, seed, frames written, error ("" when written)

Each actor loads the bundle once and runs every batch Ray hands it through `Pipeline.generate` (compatible rows
stack on B). Each row's frames are byte-identical to a single-process `Pipeline.generate([Request(...)])` with the
same seed, whichever actor or batch ran it. Outputs are written to a temp file and renamed. A row that is refused
(bad parameters, unreadable clip, unwritable output) gets its `error` and writes nothing; the other rows go on.
`run_folder` (the `vdt batch` command) does all of it on a local Ray. Ray is optional (`pip install 'vdt[ray]'`)
and imported only by `run_folder`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vdt_runtime.errors import BackendError, InputError, VDTError
from vdt_runtime.requests import Request

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".png")


def clip_rows(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *, suffix: str = ".mp4", seed: int = 0,
              mask: np.ndarray | None = None, **request: Any) -> list[dict[str, Any]]:
    """One row per clip in input_dir (video files and PNG folders, sorted by name): clip i gets seed + i and the
    output `output_dir/<clip name><suffix>`; `request` holds the Request fields every row shares (task, total, …).
    A user `mask` (shared by every row, given to GenerateBatch) is checked here with them but is not in the rows."""
    src = Path(input_dir).resolve()  # absolute: Ray workers need not share the driver's folder
    if not src.is_dir():
        raise InputError(f"input folder {str(src)!r} does not exist")
    if "frames" in request or "seed" in request:
        raise InputError("frames and seed come from each row; give the other Request fields")
    Request(frames="", mask=mask, **request)  # check the shared fields now, before any clip is read ("": each row's)
    clips = sorted(p for p in src.iterdir() if not p.name.startswith(".")
                   and (p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES))
    if not clips:
        raise InputError(f"input folder {str(src)!r} holds no clips ({', '.join(VIDEO_SUFFIXES)} or PNG folders)")
    out = Path(output_dir).resolve()
    params = json.dumps(request)
    return [{"input": str(p), "output": str(out / (p.stem + suffix)), "request": params, "seed": seed + i}
            for i, p in enumerate(clips)]


class GenerateBatch:
    """Callable class for `Dataset.map_batches`: holds one Pipeline (one per actor); a batch of rows in, one
    result row per input row out (input, output, seed, frames, error). `mask`: a user mask (1 = generate) that
    every row's request takes instead of a task, as `vdt run --mask`."""

    def __init__(self, bundle: str | os.PathLike | None = None, backend: str = "auto", precision: str | None = None,
                 options: dict | None = None, fps: float = 8, mask: np.ndarray | None = None):
        from vdt_runtime.pipeline import Pipeline

        self.pipe = Pipeline.load(bundle, backend=backend, precision=precision, options=options)
        self.fps, self.mask = fps, mask

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vdt_runtime.video import read_video, write_video

        n = len(batch["input"])
        errors, written = [""] * n, [0] * n
        requests: dict[int, Request] = {}
        b = self.pipe.bundle
        for i in range(n):
            try:
                params = json.loads(str(batch["request"][i]))
                # decode only what a request can use, at the bundle's size (as `vdt run`)
                frames = read_video(str(batch["input"][i]), max_frames=b.max_frames, size=(b.image_size,) * 2)
                req = Request(frames=frames, mask=self.mask, seed=int(batch["seed"][i]), **params)
                req.plan(b)  # every check first, so one bad row cannot stop the batch
                requests[i] = req
            except (VDTError, TypeError, ValueError) as e:
                errors[i] = _one_line(e)
        for (i, _), result in zip(requests.items(), self.pipe.generate(list(requests.values()))):
            try:
                Path(str(batch["output"][i])).parent.mkdir(parents=True, exist_ok=True)
                write_video(str(batch["output"][i]), result.frames, fps=self.fps)
                written[i] = len(result.frames)
            except (VDTError, OSError) as e:
                errors[i] = _one_line(e)
        return {"input": np.asarray(batch["input"]), "output": np.asarray(batch["output"]),
                "seed": np.asarray(batch["seed"]), "frames": np.array(written), "error": np.array(errors, dtype=object)}


def run_folder(input_dir, output_dir, *, bundle=None, backend: str = "auto", precision: str | None = None,
               options: dict | None = None, actors: int = 1, cpus_per_actor: int = 1, num_cpus: int | None = None,
               batch_size: int = 8, suffix: str = ".mp4", seed: int = 0, fps: float = 8,
               mask: np.ndarray | None = None, **request) -> list[dict[str, Any]]:
    """Generate a video for every clip in input_dir on a local Ray (`ray.init(num_cpus=...)`), `actors` Pipelines
    at once, each reserving `cpus_per_actor` CPUs (give the backend as many threads in `options`); returns the
    result rows (sorted by input) and writes them to output_dir/results.jsonl."""
    try:
        import ray
    except ImportError as e:
        raise BackendError(f"batch jobs need Ray Data: pip install 'vdt[ray]' ({e})") from None
    from vdt_runtime._atomic import atomic_path

    rows = clip_rows(input_dir, output_dir, suffix=suffix, seed=seed, mask=mask, **request)
    if mask is not None:  # a mask that cannot fit the bundle is refused now, not once per row after Ray starts
        _check_mask_fits(bundle, mask, request)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.from_items(rows).map_batches(
            GenerateBatch, batch_size=batch_size, concurrency=actors, num_cpus=cpus_per_actor,
            fn_constructor_kwargs=dict(bundle=_absolute(bundle), backend=backend, precision=precision,
                                       options=options, fps=fps, mask=mask))
        results = sorted(({k: _plain(v) for k, v in r.items()} for r in ds.iter_rows()), key=lambda r: r["input"])
    finally:
        if started:
            ray.shutdown()
    with atomic_path(Path(output_dir) / "results.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    return results


def _check_mask_fits(bundle, mask: np.ndarray, request: dict) -> None:
    """Plan the shared request with the mask on blank frames of the bundle's size: InputError if it cannot run."""
    from vdt_runtime.bundle import Bundle

    b = Bundle.load(bundle)
    frames = np.zeros((len(mask) if np.ndim(mask) == 3 else 1, b.image_size, b.image_size, 3), np.uint8)
    Request(frames=frames, mask=mask, **request).plan(b)


def _absolute(bundle):
    """A bundle folder as an absolute path (an installed bundle's name, or None, as given)."""
    if bundle is not None and Path(bundle).exists():
        return str(Path(bundle).resolve())
    return None if bundle is None else str(bundle)


def _plain(value):
    """numpy scalars → Python values, for JSON."""
    return value.item() if isinstance(value, np.generic) else value


def _one_line(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}".splitlines()[0]
    return text if len(text) <= 300 else text[:297] + "..."
