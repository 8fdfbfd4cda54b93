"""`vdt` command line: run a task, describe a bundle, benchmark its stages."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

from vdt_runtime.backends import CHOICES, PRECISIONS
from vdt_runtime.bundle import Bundle
from vdt_runtime.errors import InputError, VDTError
from vdt_runtime.limits import MAX_DECODED_PIXELS, shorten
from vdt_runtime.requests import ROLLOUT, TASKS, Request
from vdt_runtime.samplers import SAMPLERS

CLI_TASKS = TASKS + (ROLLOUT,)
_TASK_ARGS = ("cond", "total", "stride", "given", "box", "box_frames", "window")  # flag -> Request field
_MAX_MASK_BYTES = 8 * MAX_DECODED_PIXELS  # a float64 pixel mask of the largest input, plus its header


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _box(text: str) -> tuple[int, int, int, int]:
    values = _int_list(text)
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected y0,x0,y1,x1 (4 integers), got {text!r}")
    return tuple(values)


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE for a backend option; VALUE true/false → bool, digits → int, none → None, else the string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    if lowered == "none":
        return key.strip(), None
    try:
        return key.strip(), int(value)
    except ValueError:
        return key.strip(), value


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors whose echoed values are cut (the usage text stays in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message, 300)}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vdt", description="Run exported VDT video diffusion bundles.")
    sub = p.add_subparsers(dest="command", required=True)

    def backend_args(sp):
        sp.add_argument("--backend", default="auto", choices=list(CHOICES),
                        help="execution backend (auto: the fastest lossless one here, printed as 'chosen')")
        sp.add_argument("--precision", default=None, choices=list(PRECISIONS),
                        help="compute precision (default: the backend's lossless one)")
        sp.add_argument("-o", "--option", dest="options", action="append", type=_option, default=[],
                        metavar="KEY=VALUE", help="a backend option, repeatable (e.g. device=GPU, cache_dir=DIR)")
        sp.add_argument("--threads", type=int, default=None, help="option threads: intra-op threads")
        sp.add_argument("--no-spinning", dest="spinning", action="store_false",
                        help="option spinning=false: idle onnxruntime threads sleep instead of busy-waiting")
        sp.add_argument("--vae-slice", type=int, default=None,
                        help="frames per VAE call (default: 1 at 256 px, 64 at 32 px); lower it to save memory")
        sp.add_argument("--no-fused", dest="fused", action="store_false",
                        help="option fused=false: the standard-operator denoiser even where the bundle has an "
                             "onnxruntime-fused one")

    def task_args(sp):
        sp.add_argument("--task", required=True, choices=CLI_TASKS)
        sp.add_argument("--cond", type=int, help="given frames (predict, backward, rollout)")
        sp.add_argument("--total", type=int, help="output frames")
        sp.add_argument("--stride", type=int, help="keyframe spacing (interpolate)")
        sp.add_argument("--given", type=_int_list, help="given frame indices, e.g. 0,3,5 (complete)")
        sp.add_argument("--box", type=_box, help="pixel box y0,x0,y1,x1 to regenerate (inpaint)")
        sp.add_argument("--box-frames", type=_int_list, help="frames the box applies to (inpaint; default all)")
        sp.add_argument("--mask", type=Path, help=".npy mask, 1 = generate, latent or pixel size (inpaint)")
        sp.add_argument("--window", type=int, help="frames per window (rollout; default max_frames)")
        sp.add_argument("--sampler", choices=list(SAMPLERS),
                        help="default: the bundle's recommended sampler (vdt info shows it; else ddpm)")
        sp.add_argument("--steps", type=int,
                        help="denoiser calls (default: the bundle's recommendation for its sampler, else 50)")
        sp.add_argument("--eta", type=float, help="noise level for ddim and dpmpp: 0 = deterministic, "
                        "1 = DDPM-like / DPM-Solver++ SDE (default: the recommendation's, else 0)")

    r = sub.add_parser("run", help="generate a video for a task")
    r.add_argument("--input", type=Path, help="video file, image or PNG folder (not needed for unconditional)")
    r.add_argument("--out", type=Path, required=True, help=".mp4, .gif, or a folder name for PNGs")
    r.add_argument("--bundle", type=Path, default=None, help="bundle folder or installed name (default: default)")
    task_args(r)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--fps", type=float, default=8)
    r.add_argument("--timings", action="store_true", help="print per-stage seconds")
    r.add_argument("--no-progress", action="store_true")
    backend_args(r)

    i = sub.add_parser("info", help="describe a bundle and the providers each stage gets")
    i.add_argument("bundle", type=Path, nargs="?", default=None)
    i.add_argument("--verify", action="store_true", help="check every file's sha256")
    backend_args(i)

    s = sub.add_parser("serve", help="serve the pipeline over KServe v2 HTTP/gRPC (Triton via PyTriton; extra 'serve')")
    s.add_argument("bundle", type=Path, nargs="?", default=None)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--max-batch", type=int, default=None, help="videos per batch (default: the bundle's batch max)")
    s.add_argument("--queue-delay-us", type=int, default=2000, help="how long Triton waits to fill a batch")
    s.add_argument("--exit-timeout-s", type=int, default=10, help="on SIGTERM / Ctrl-C, seconds Triton gives "
                   "in-flight requests before it stops (stopping takes about this long; default 10)")
    s.add_argument("--verbose", action="store_true", help="Triton's own logs")
    backend_args(s)

    j = sub.add_parser("batch", help="one video per clip of a folder, on Ray Data: local or a cluster (extra 'ray')")
    j.add_argument("inputs", help="folder of clips (one video file or image each): a path or a URI (s3://, gs://, ...)")
    j.add_argument("outputs", help="folder for the outputs and results.jsonl: a path or a URI")
    j.add_argument("--bundle", type=Path, default=None, help="bundle folder or installed name (default: default)")
    task_args(j)
    j.add_argument("--seed", type=int, default=0, help="clip i (sorted by name) gets seed + i")
    j.add_argument("--suffix", default=".mp4", help="output type: .mp4, .gif, .webm, or '' for PNG folders")
    j.add_argument("--actors", type=int, default=1, help="pipelines at once (one per actor)")
    j.add_argument("--gpus-per-actor", type=float, default=0, help="GPUs each actor reserves (default 0)")
    j.add_argument("--address", default=None,
                   help="an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray on loopback)")
    j.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all; not with a "
                   "cluster)")
    j.add_argument("--batch-size", type=int, default=8, help="rows per map_batches call")
    j.add_argument("--fps", type=float, default=8)
    backend_args(j)

    b = sub.add_parser("bench", help="per-stage time table on a random predict workload")
    b.add_argument("bundle", type=Path, nargs="?", default=None)
    b.add_argument("--steps", type=int, help="default: the bundle's recommendation for the sampler, else 50")
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--sampler", choices=list(SAMPLERS), help="default: the bundle's recommended sampler")
    backend_args(b)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; typed errors print one `error: ...` line and return 2. No input gives a traceback: anything
    else that escapes is a bug, reported as one `error: internal error ...` line with status 1."""
    args = _parser().parse_args(argv)
    commands = {"run": _run, "info": _info, "bench": _bench, "serve": _serve, "batch": _batch}
    return run_guarded(lambda: commands[args.command](args))


def run_guarded(command, expected: tuple[type[BaseException], ...] = (VDTError,)) -> int:
    """Run a CLI command under the CLIs' error contract (`vdt` and `vdt-export`): an `expected` (typed) error
    prints one `error: ...` line and returns 2; Ctrl-C returns 130; anything else is a bug, printed as one
    `error: internal error ...` line with status 1, or re-raised with its traceback when VDT_TRACEBACK=1.
    Warnings print as one `warning: ...` line each."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda msg, cat, *a, **k: print(f"warning: {_one_line(msg)}", file=sys.stderr)
        try:
            return command()
        except expected as e:
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001 - the promise is one line, never a traceback
            if os.environ.get("VDT_TRACEBACK") == "1":
                raise
            print(f"error: internal error ({type(e).__name__}): {_one_line(e)} -- please report this with the "
                  "command that caused it (VDT_TRACEBACK=1 shows the traceback)", file=sys.stderr)
            return 1


def _one_line(message, limit: int = 1000) -> str:
    """A message on one line, at most `limit` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _load(args, *, verify: bool = False):
    from vdt_runtime.pipeline import Pipeline

    return Pipeline.load(args.bundle, backend=args.backend, precision=args.precision, options=_options(args),
                         verify=verify, vae_slice=args.vae_slice)


def _options(args) -> dict:
    """--option KEY=VALUE pairs plus the shortcut flags that were given (only those: defaults stay the backend's)."""
    options = dict(args.options)
    shortcuts = {"threads": args.threads, "spinning": None if args.spinning else False,
                 "fused": None if args.fused else False}
    for key, value in shortcuts.items():
        if value is not None:
            if key in options:
                raise InputError(f"option {key!r} given twice (--option {key}=... and its own flag)")
            options[key] = value
    return options


def _run(args) -> int:
    """Flags → one Request (which checks them) → the pipeline. Every check that needs no backend comes first:
    the bundle, the output path (never the input, never inside the bundle), fps, the mask, the input's size."""
    from vdt_runtime.video import check_fps, check_output_path, read_video, write_video

    bundle = Bundle.load(args.bundle)
    protect = {"input": args.input, "bundle": bundle.path}
    check_output_path(args.out, protect=protect)
    check_fps(args.fps)
    task, mask = _task_and_mask(args)
    frames = None if args.input is None else read_video(args.input, max_frames=bundle.max_frames,
                                                        size=(bundle.image_size,) * 2)
    flags = {f: getattr(args, f) for f in _TASK_ARGS if getattr(args, f) is not None}
    sampling = dict(steps=args.steps, sampler=args.sampler, eta=args.eta, seed=args.seed)
    request = Request(task=task, mask=mask, frames=frames, **sampling, **flags)
    pipe = _load(args)
    if pipe.chosen:
        print(f"chosen     {pipe.chosen}")
    if task == ROLLOUT:  # streamed: one window in memory at a time, whatever --total
        stream = pipe.rollout_stream(frames, request.total, request.cond, request.window, timings=args.timings,
                                     **sampling)
        out = write_video(args.out, stream, fps=args.fps, protect=protect)
        print(f"wrote {out} ({request.total} frames {bundle.image_size}x{bundle.image_size}; denoiser on "
              f"{', '.join(pipe.providers['denoiser'])})")
        _print_timings(stream.timings)
        return 0
    result = pipe.generate([request], progress=not args.no_progress, timings=args.timings)[0]
    out = write_video(args.out, result.frames, fps=args.fps, protect=protect)
    t, h, w, _ = result.frames.shape
    print(f"wrote {out} ({t} frames {h}x{w}; {result.sampling}; denoiser on {', '.join(result.providers['denoiser'])})")
    _print_timings(result.timings)
    return 0


def _serve(args) -> int:
    from vdt_runtime.schedule import _check_int
    from vdt_runtime.serve import MODEL, serve

    pipe = _load(args)
    endpoints = f"http://{args.host}:{args.http_port} and grpc {args.host}:{args.grpc_port}"
    serve(pipe, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
          max_batch=args.max_batch, queue_delay_us=args.queue_delay_us, verbose=args.verbose,
          exit_timeout_s=_check_int("--exit-timeout-s", args.exit_timeout_s, 0, 3600),
          ready=lambda: print(f"serving model {MODEL!r} ({pipe.bundle.name}) on {endpoints}; health "
                              f"http://{args.host}:{args.http_port}/v2/health/ready, metrics "
                              f"http://{args.host}:{args.metrics_port}/metrics", flush=True))
    print("stopped: Triton and its workspace are gone", flush=True)
    return 0


def _batch(args) -> int:
    from vdt_runtime.batch import run_folder

    task, mask = _task_and_mask(args)
    flags = {f: getattr(args, f) for f in _TASK_ARGS if getattr(args, f) is not None}
    options = _options(args)
    rows = run_folder(args.inputs, args.outputs, bundle=args.bundle, backend=args.backend, precision=args.precision,
                      options=options, actors=args.actors, cpus_per_actor=options.get("threads", 1),
                      gpus_per_actor=args.gpus_per_actor, num_cpus=args.num_cpus, address=args.address,
                      batch_size=args.batch_size, suffix=args.suffix, seed=args.seed,
                      fps=args.fps, task=task, mask=mask, steps=args.steps, sampler=args.sampler, eta=args.eta, **flags)
    failed = [r for r in rows if r["error"]]
    for r in failed:
        print(f"error: {r['input']}: {r['error']}", file=sys.stderr)
    print(f"wrote {len(rows) - len(failed)} of {len(rows)} videos to {args.outputs} (results.jsonl lists each)")
    return 1 if failed else 0


def _print_timings(timings: dict[str, float]) -> None:
    for stage, seconds in timings.items():
        print(f"  {stage:<12} {seconds:8.3f} s")


def _task_and_mask(args) -> tuple[str | None, np.ndarray | None]:
    """(task, None), or (None, the --mask array) for --task inpaint --mask: a user mask replaces the task."""
    if args.mask is None:
        return args.task, None
    if args.task != "inpaint":
        raise InputError(f"--mask is for --task inpaint (a user mask replaces the task), not --task {args.task}")
    return None, _read_mask(args.mask)


def _read_mask(path: Path) -> np.ndarray:
    if path.suffix.lower() != ".npy":
        raise InputError(f"--mask must be a .npy file, got {shorten(str(path))}")
    if path.is_file() and path.stat().st_size > _MAX_MASK_BYTES:
        raise InputError(f"mask {shorten(str(path))} has {path.stat().st_size} bytes; at most {_MAX_MASK_BYTES}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read mask {shorten(str(path))}: {shorten(str(e))}") from None


def _info(args) -> int:
    from vdt_runtime.backends import BACKENDS, available, runnable

    bundle = Bundle.load(args.bundle, verify=args.verify)
    print(bundle.describe())
    if args.verify:
        print(f"sha256     all {len(bundle.manifest['files'])} files match the manifest")
    print("backends   precisions each can run for this bundle on this machine (default first)")
    for choice in BACKENDS:
        reason = available(choice)
        print(f"  {choice:<12} " + (f"unavailable: {reason}" if reason else _precision_summary(runnable(bundle, choice))))
    with _load(args) as pipe:
        print(pipe.describe())
    return 0


def _precision_summary(can: dict[str, tuple[str, ...]]) -> str:
    """"fp32, int8 (int8: denoiser only)": every precision, and which stages a partial one covers."""
    union = list(dict.fromkeys(p for ps in can.values() for p in ps))
    partial = [f"{p}: {', '.join(s for s, ps in can.items() if p in ps)} only"
               for p in union if not all(p in ps for ps in can.values())]
    return ", ".join(union) + (f" ({'; '.join(partial)})" if partial else "")


def _bench(args) -> int:
    from vdt_runtime.schedule import _check_int

    repeat = _check_int("--repeat", args.repeat, 1, None)
    pipe = _load(args)
    bundle = pipe.bundle
    frames_total = bundle.num_frames
    cond = max(1, frames_total // 2)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (cond, bundle.image_size, bundle.image_size, 3), dtype=np.uint8)
    runs = []
    for i in range(repeat + 1):  # the first run warms up and is not counted
        result = pipe.predict(video, cond=cond, total=frames_total, steps=args.steps, sampler=args.sampler,
                              seed=i, timings=True)
        if i:
            runs.append(result.timings)
    rows = [  # stage, backend stage (for providers/precision), batch
        ("vae_encoder", "vae_encoder", str(cond)),
        ("denoiser", "denoiser", "1"),
        ("sampler", None, "1"),
        ("vae_decoder", "vae_decoder", str(frames_total - cond)),
        ("total", None, "1"),
    ]
    header = f"{'stage':<12} {'providers':<28} {'precision':<11} {'batch':>5} {'frames':>6} {'steps':>5} {'median s':>10}"
    print(header)
    print("-" * len(header))
    ran = result.sampling
    sampler_cell = f"numpy: {ran.sampler}" + (f" eta {ran.eta:g}" if ran.eta else "")  # what sampled
    for stage, backend_stage, batch in rows:
        median = statistics.median(r.get(stage, 0.0) for r in runs)
        backend = pipe.backends.get(backend_stage) if backend_stage else None
        providers = ", ".join(p.replace("ExecutionProvider", "") for p in backend.providers) if backend else (
            sampler_cell if stage == "sampler" else "-")
        precision = (backend.precision + ("+fused" if backend.graph == "fused" else "")) if backend else "-"
        steps = str(ran.steps) if stage in ("denoiser", "sampler", "total") else "-"
        print(f"{stage:<12} {providers:<28} {precision:<11} {batch:>5} {frames_total:>6} {steps:>5} {median:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
