"""Batch jobs on Ray Data: one Pipeline per actor, `map_batches` over rows of (input, request, seed, output).

    rows = clip_rows("clips/", "out/", task="predict", cond=8, total=16, steps=50)
    ds = ray.data.from_items(rows).map_batches(GenerateBatch, fn_constructor_kwargs={"bundle": None},
                                               compute=ray.data.ActorPoolStrategy(size=2), batch_size=8)
    for row in ds.iter_rows(): ...   # input, output, seed, frames written, error ("" when written)

Each actor loads the bundle once and runs every batch Ray hands it through `Pipeline.generate` (compatible rows
stack on B). Each row's frames are byte-identical to a single-process `Pipeline.generate([Request(...)])` with the
same seed, whichever actor or batch ran it. A row that is refused (bad parameters, unreadable clip, unwritable
output) gets its `error` and writes nothing; the other rows go on.

`run_folder` (the `vdt batch` command) does all of it, on a Ray it starts on this machine (loopback only) or on an
existing cluster (`address`, or RAY_ADDRESS). Folders may be local or any pyarrow filesystem URI (storage.Folder):
clips travel as bytes through Ray Data (a URI folder read by `read_binary_files` on the workers, a local folder by
the driver), and outputs, their records and results.jsonl are written through the same layer, so no worker needs
the driver's disk (a local output folder is refused on a cluster with nodes on other machines).
Before an output is written, vdt records it in `.vdt-batch/<name>.json` beside it; an existing output without its
record is one vdt batch did not write, and is never replaced. A rerun skips the outputs its records say are
finished for the same clip, request, seed and fps. Ray is optional (`pip install 'vdt[ray]'`), imported only by
`run_folder`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vdt_runtime.checks import check_int
from vdt_runtime.errors import BackendError, InputError, VDTError
from vdt_runtime.limits import shorten
from vdt_runtime.requests import Request
from vdt_runtime.storage import Folder
from vdt_runtime.video import WRITE_EXTS

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".png")  # clips: one file each
OUTPUT_SUFFIXES = (*WRITE_EXTS, "")  # "": a folder of PNGs (local output folders only)
RECORDS = ".vdt-batch"  # in the output folder: one <output name>.json per output vdt batch wrote
RESULTS = "results.jsonl"
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
RAY_DATA_CPUS = 1  # CPUs left free for Ray Data's own tasks (reading clips, moving blocks)


def clip_rows(input_dir, output_dir, *, suffix: str = ".mp4", seed: int = 0, mask: np.ndarray | None = None,
              **request: Any) -> list[dict[str, Any]]:
    """One row per clip file in input_dir (sorted by name): clip i gets seed + i and the output
    `output_dir/<clip name><suffix>`; `request` holds the Request fields every row shares (task, total, …).
    Folders are local paths or URIs (storage.Folder). A user `mask` (shared by every row, given to GenerateBatch)
    is checked here with them but is not in the rows. Nothing is read or written: every refusal comes first."""
    if "frames" in request or "seed" in request:
        raise InputError("frames and seed come from each row; give the other Request fields")
    src, out = _folder(input_dir), _folder(output_dir)
    _check_suffix(suffix, out)
    Request.from_params(request, frames="", mask=mask)  # the shared fields checked now, before any clip is read
    how = out.relation(src)
    if how:
        raise InputError(f"output folder {shorten(str(out))} {how} the input folder {shorten(str(src))}; "
                         "give a folder apart from it (an output never overwrites its input)")
    if not src.exists():
        raise InputError(f"input folder {shorten(str(src))} does not exist")
    entries = {n: d for n, d in src.entries().items() if not n.startswith(".")}
    folders = sorted(n for n, is_dir in entries.items() if is_dir)
    if folders:
        raise InputError(f"input folder {shorten(str(src))} holds the folder {shorten(folders[0])}; vdt batch takes "
                         f"one file per clip ({', '.join(VIDEO_SUFFIXES)}): write it as a video (vdt run ... --out "
                         f"{folders[0]}.gif) or move it out")
    clips = sorted(n for n in entries if PurePosixPath(n).suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        raise InputError(f"input folder {shorten(str(src))} holds no clips ({', '.join(VIDEO_SUFFIXES)})")
    outputs: dict[str, str] = {}
    for name in clips:
        target = PurePosixPath(name).stem + suffix
        if target in outputs:
            raise InputError(f"clips {shorten(outputs[target])} and {shorten(name)} would both write {shorten(target)}")
        outputs[target] = name
    params = json.dumps(request)
    return [{"input": src.uri(name), "output": out.uri(target), "request": params, "seed": seed + i}
            for i, (target, name) in enumerate(outputs.items())]


class GenerateBatch:
    """Callable class for `Dataset.map_batches`: holds one Pipeline (one per actor); a batch of rows in, one
    result row per input row out (input, output, seed, frames, error, node: the Ray node id). A batch may carry each clip's bytes
    (column `bytes`, as Ray Data's read_binary_files gives them); else `input` is read from this machine's disk.
    `out`: the output folder (a storage.Folder; default: each output's local parent folder). `mask`: a user mask
    (1 = generate) that every row's request takes instead of a task, as `vdt run --mask`."""

    def __init__(self, bundle: str | os.PathLike | None = None, backend: str = "auto", precision: str | None = None,
                 options: dict | None = None, fps: float = 8, mask: np.ndarray | None = None,
                 out: Folder | None = None):
        from vdt_runtime.pipeline import Pipeline

        self.pipe = Pipeline.load(bundle, backend=backend, precision=precision, options=options)
        self.fps, self.mask, self.out = fps, mask, out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["input"])
        errors, written = [""] * n, [0] * n
        requests: dict[int, Request] = {}
        b = self.pipe.bundle
        for i in range(n):
            try:
                params = json.loads(str(batch["request"][i]))
                data = batch["bytes"][i] if "bytes" in batch else None
                frames = _read_clip(str(batch["input"][i]), data, b)
                req = Request.from_params({**params, "seed": int(batch["seed"][i])}, frames=frames, mask=self.mask)
                req.plan(b)  # every check first, so one bad row cannot stop the batch
                requests[i] = req
            except (VDTError, TypeError, ValueError) as e:
                errors[i] = _one_line(e)
        for (i, _), result in zip(requests.items(), self.pipe.generate(list(requests.values()))):
            try:
                written[i] = self._write(batch, i, result.frames)
            except (VDTError, OSError) as e:
                errors[i] = _one_line(e)
        return {"input": np.asarray(batch["input"]), "output": np.asarray(batch["output"]),
                "seed": np.asarray(batch["seed"]), "frames": np.array(written), "error": np.array(errors, dtype=object),
                "node": np.array([_node_id()] * n, dtype=object)}

    def _write(self, batch, i: int, frames: np.ndarray) -> int:
        """Record the output (claim), write it, record it finished; returns the frames written."""
        output = str(batch["output"][i])
        out = self.out or Folder(Path(output).parent)
        name = output.rstrip("/").rsplit("/", 1)[-1]
        record = _record(batch, i, self.fps)
        state, _ = output_state(out, name, record)  # the rule run_folder planned with, asserted at the last moment
        if state == "foreign":
            raise InputError(f"{shorten(output)} exists and vdt batch did not write it; it is left alone")
        out.makedirs(RECORDS)
        out.write(_record_name(name), json.dumps({**record, "frames": 0}).encode())
        out.write_video(name, frames, self.fps, protect=None if self.out else {"input": str(batch["input"][i])})
        out.write(_record_name(name), json.dumps({**record, "frames": len(frames)}).encode())
        return len(frames)


def output_state(out: Folder, name: str, record: dict,
                 entries: dict[str, bool] | None = None) -> tuple[str, dict | None]:
    """What entry `name` of the output folder is to a job that would write it with `record`, and vdt batch's record
    of it (None when there is none): "free" (absent), "done" (written whole by vdt batch for this same clip, request,
    seed and fps: skip it), "ours" (written or begun by vdt batch for other settings: replace it), or "foreign"
    (never replaced). `entries` (the folder's listing, when the caller has it) saves a lookup."""
    present = out.has(name) if entries is None else name in entries
    if not present:
        return "free", None
    raw = out.read(_record_name(name))
    try:
        prior = json.loads(raw) if raw is not None else None
    except ValueError:
        prior = None
    if not isinstance(prior, dict):
        return "foreign", None
    same = {k: prior.get(k) for k in record} == record and prior.get("frames", 0) > 0
    return ("done" if same else "ours"), prior


def run_folder(input_dir, output_dir, *, bundle=None, backend: str = "auto", precision: str | None = None,
               options: dict | None = None, actors: int = 1, cpus_per_actor: int = 1, gpus_per_actor: float = 0,
               num_cpus: int | None = None, address: str | None = None, batch_size: int = 8,
               suffix: str = ".mp4", seed: int = 0, fps: float = 8, mask: np.ndarray | None = None,
               **request) -> list[dict[str, Any]]:
    """Generate a video for every clip in input_dir, `actors` Pipelines at once, each reserving `cpus_per_actor`
    CPUs (give the backend as many threads in `options`) and `gpus_per_actor` GPUs. Ray: the one already
    initialised in this process, else the cluster at `address` (or $RAY_ADDRESS), else a local Ray of `num_cpus`
    CPUs on loopback. Every refusal (folders, outputs vdt did not write, request, mask, resources) comes before
    Ray starts work. Returns the result rows (sorted by input; finished outputs of an earlier run are kept and
    marked `skipped`) and writes them to output_dir/results.jsonl."""
    try:
        import ray
    except ImportError as e:
        raise BackendError(f"batch jobs need Ray Data: pip install 'vdt[ray]' ({e})") from None
    from vdt_runtime.video import check_fps

    actors = check_int("actors", actors, 1, None)
    cpus_per_actor = check_int("CPUs per actor (threads)", cpus_per_actor, 1, None)
    batch_size = check_int("batch_size", batch_size, 1, None)
    if not isinstance(gpus_per_actor, (int, float)) or isinstance(gpus_per_actor, bool) or not gpus_per_actor >= 0:
        raise InputError(f"GPUs per actor must be a number >= 0, got {shorten(gpus_per_actor)}")
    if num_cpus is not None:
        num_cpus = check_int("num_cpus", num_cpus, 1, None)
    check_fps(fps)
    src, out = _folder(input_dir), _folder(output_dir)
    rows = clip_rows(src, out, suffix=suffix, seed=seed, mask=mask, **request)
    if mask is not None:  # a mask that cannot fit the bundle is refused now, not once per row after Ray starts
        _check_mask_fits(bundle, mask, request)
    if out.local and bundle is not None and Path(bundle).exists() and out.relation(Folder(bundle)):
        raise InputError(f"output folder {shorten(str(out))} {out.relation(Folder(bundle))} the bundle "
                         f"{shorten(str(bundle))}; an output never goes into a bundle")
    todo, done = _plan(out, rows, fps)
    started = _connect(ray, address or os.environ.get("RAY_ADDRESS"), num_cpus)
    try:
        check_resources(ray, actors, cpus_per_actor, gpus_per_actor)
        _check_local_output(ray, out)
        results = _run(ray, src, out, todo, actors, cpus_per_actor, gpus_per_actor, batch_size,
                       dict(bundle=_absolute(bundle), backend=backend, precision=precision, options=options, fps=fps,
                            mask=mask, out=out)) if todo else []
    finally:
        if started:
            ray.shutdown()
    results = sorted(results + done, key=lambda r: r["input"])
    for r in results:
        r.setdefault("skipped", False)
    out.makedirs(RECORDS)
    _check_results_file(out, None)  # planned before the job; asserted again before the write
    out.write(_record_name(RESULTS), json.dumps({"results": True, "frames": 1}).encode())
    out.write(RESULTS, "".join(json.dumps(r) + "\n" for r in results).encode())
    return results


def check_resources(ray, actors: int, cpus_per_actor: int, gpus_per_actor: float) -> None:
    """InputError, saying what Ray has, unless `actors` actors of `cpus_per_actor` CPUs and `gpus_per_actor` GPUs
    each fit the nodes of the connected Ray with RAY_DATA_CPUS CPUs to spare: an actor that can never be placed
    would leave the job waiting forever."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus = [int(n.get("CPU", 0)) for n in nodes]
    gpus = [float(n.get("GPU", 0)) for n in nodes]
    has = (f"Ray has {sum(cpus)} CPUs and {sum(gpus):g} GPUs on {len(nodes)} node(s)"
           + (f" ({', '.join(f'{c} CPUs/{g:g} GPUs' for c, g in sorted(zip(cpus, gpus), reverse=True))})"
              if len(nodes) > 1 else ""))
    fits = sum(c // cpus_per_actor if gpus_per_actor == 0 else min(c // cpus_per_actor, int(g // gpus_per_actor))
               for c, g in zip(cpus, gpus))
    need = actors * cpus_per_actor + RAY_DATA_CPUS
    if need > sum(cpus) or actors > fits:
        gpu_part = f" and {gpus_per_actor:g} GPUs" if gpus_per_actor else ""
        room = max(0, min(fits, (sum(cpus) - RAY_DATA_CPUS) // cpus_per_actor))
        raise InputError(f"{actors} actor(s) × {cpus_per_actor} CPUs{gpu_part} (threads) + {RAY_DATA_CPUS} CPU for "
                         f"Ray Data's own tasks cannot be placed: {has}, room for {room} such actor(s); lower --actors "
                         "or --threads, or add nodes")


def _connect(ray, address: str | None, num_cpus: int | None) -> bool:
    """Connect to Ray; True when this call started it (and must shut it down). A local Ray is a new one (never
    another process's), listening on loopback only, dashboard off; a cluster's size is its own, so `num_cpus`
    (a local Ray's size) is refused there."""
    if ray.is_initialized():
        return False
    if address and num_cpus is not None:
        raise InputError(f"--num-cpus sizes the local Ray vdt batch starts; the cluster at {shorten(address)} "
                         "has its own CPUs (ray status shows them): leave it out")
    host = (address or "127.0.0.1").split("://")[-1].rsplit(":", 1)[0].strip("[]")
    with _loopback_node(host in ("127.0.0.1", "localhost", "::1")):
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    return True


@contextlib.contextmanager
def _loopback_node(loopback: bool):
    """While Ray starts or connects on this machine's loopback, make 127.0.0.1 its node address. ray.init turns
    127.0.0.1 into the machine's interface address (ray-project/ray#59110), and its servers then listen on every
    interface; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray's node address on loopback (read by the processes it
    starts, and by ray_constants at import, hence both)."""
    if not loopback:
        yield
        return
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):  # another Ray: its own resolution applies
        yield
        return
    saved = os.environ.get(_RAY_CLUSTER_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_CLUSTER_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(_RAY_CLUSTER_ENV, None)
        else:
            os.environ[_RAY_CLUSTER_ENV] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


def _run(ray, src: Folder, out: Folder, rows: list[dict], actors: int, cpus: int, gpus: float, batch_size: int,
         kwargs: dict) -> list[dict]:
    """The Ray Data job: each row with its clip's bytes (a URI folder: read by Ray Data's read_binary_files on the
    workers; a local folder: read here, on the driver), then map_batches on the actor pool."""
    if src.local:
        ds = ray.data.from_items([{**row, "bytes": src.read(row["input"].rsplit("/", 1)[-1])} for row in rows])
    else:
        jobs = {row["input"].split("://", 1)[1]: row for row in rows}
        ds = ray.data.read_binary_files(list(jobs), filesystem=src.fs, include_paths=True,
                                        override_num_blocks=len(jobs)).map_batches(_Attach(jobs))
    # Ray Data's actor pool restarts an actor that dies (max_restarts=-1) and retries the batch it held
    # (max_task_retries=-1): a killed actor costs time, never rows. One batch in flight per actor: a batch is
    # seconds of sampling, and Ray Data's default (two, sent to the actor beside the block first) queues a second
    # batch behind a busy actor while another actor idles
    pool = ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1)
    ds = ds.map_batches(GenerateBatch, batch_size=batch_size, num_cpus=cpus, num_gpus=gpus or None, compute=pool,
                        fn_constructor_kwargs=kwargs)
    return [{k: _plain(v) for k, v in r.items()} for r in ds.iter_rows()]


def _check_local_output(ray, out: Folder) -> None:
    """A local output folder is this machine's: refused when the cluster has nodes on other machines (their
    actors would write to their own disks)."""
    here = ray.util.get_node_ip_address()
    others = sorted({n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")} - {here})
    if out.local and others:
        raise InputError(f"output folder {shorten(str(out))} is on this machine ({here}) but the cluster also has "
                         f"nodes at {', '.join(others[:3])}; give a folder they all reach as a URI (s3://..., gs://...)")


class _Attach:
    """Ray Data read_binary_files rows (bytes, path) → GenerateBatch rows (input, output, request, seed, bytes)."""

    def __init__(self, jobs: dict[str, dict]):
        self.jobs = jobs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.jobs[str(p)] for p in batch["path"]]
        cols = {k: np.array([r[k] for r in rows]) for k in ("input", "output", "request", "seed")}
        return {**cols, "bytes": batch["bytes"]}


def _plan(out: Folder, rows: list[dict], fps: float) -> tuple[list[dict], list[dict]]:
    """(rows to run, result rows of outputs already finished); InputError on any output vdt batch did not write."""
    entries = out.entries() if out.exists() else {}
    _check_results_file(out, entries)
    todo, done = [], []
    for row in rows:
        name = row["output"].rsplit("/", 1)[-1]
        state, prior = output_state(out, name, _record(row, None, fps), entries)
        if state == "foreign":
            raise InputError(f"output folder {shorten(str(out))} already holds {shorten(name)}, which vdt batch did "
                             f"not write (no {RECORDS}/{name}.json); it is never replaced: move it, or give another "
                             "folder")
        if state == "done":
            done.append({"input": row["input"], "output": row["output"], "seed": row["seed"],
                         "frames": prior["frames"], "error": "", "node": "",
                         "skipped": True})
        else:
            todo.append(row)
    return todo, done


def _node_id() -> str:
    """The Ray node this runs on ("" outside Ray): results.jsonl says which node made each output."""
    import sys

    ray = sys.modules.get("ray")
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else ""


def _check_results_file(out: Folder, entries: dict[str, bool] | None) -> None:
    if output_state(out, RESULTS, {"results": True}, entries)[0] == "foreign":
        raise InputError(f"output folder {shorten(str(out))} already holds {RESULTS}, which vdt batch did not write; "
                         "it is never replaced: move it, or give another folder")


def _record(rows, i: int | None, fps: float) -> dict:
    """What an output was (or would be) written from: clip, request, seed, fps."""
    get = (lambda k: rows[k]) if i is None else (lambda k: rows[k][i])
    return {"input": str(get("input")), "request": str(get("request")), "seed": int(get("seed")), "fps": fps}


def _record_name(name: str) -> str:
    return f"{RECORDS}/{name}.json"


def _read_clip(location: str, data, bundle) -> np.ndarray:
    """A row's frames, decoded only as far as a request can use (as `vdt run`): from its bytes when the batch
    carries them (written to a private temp file of the same name, for the decoders), else from `location`."""
    from vdt_runtime.video import read_video

    size = (bundle.image_size,) * 2
    if data is None:
        return read_video(location, max_frames=bundle.max_frames, size=size)
    with tempfile.TemporaryDirectory(prefix="vdt-clip-") as tmp:
        path = Path(tmp) / location.rstrip("/").rsplit("/", 1)[-1]
        path.write_bytes(bytes(data))
        try:
            return read_video(path, max_frames=bundle.max_frames, size=size)
        except InputError as e:
            raise InputError(str(e).replace(str(path), location)) from None


def _folder(location) -> Folder:
    return location if isinstance(location, Folder) else Folder(location)


def _check_suffix(suffix: str, out: Folder) -> None:
    allowed = OUTPUT_SUFFIXES if out.local else OUTPUT_SUFFIXES[:-1]
    if not isinstance(suffix, str) or suffix.lower() not in allowed:
        raise InputError(f"output suffix {shorten(suffix)} is not one of "
                         f"{', '.join(repr(s) for s in allowed)}" + ("" if out.local else
                         " (a folder of PNGs is for local output folders only)"))


def _check_mask_fits(bundle, mask: np.ndarray, request: dict) -> None:
    """Plan the shared request with the mask on blank frames of the bundle's size: InputError if it cannot run."""
    from vdt_runtime.bundle import Bundle

    b = Bundle.load(bundle)
    frames = np.zeros((len(mask) if np.ndim(mask) == 3 else 1, b.image_size, b.image_size, 3), np.uint8)
    Request.from_params(request, frames=frames, mask=mask).plan(b)


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
