"""`vdt` command line: run a task, describe a bundle, benchmark its stages."""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

import numpy as np

from vdt_runtime.backends import CHOICES
from vdt_runtime.bundle import Bundle
from vdt_runtime.checks import check_int
from vdt_runtime.cli_support import one_line, run_guarded
from vdt_runtime.errors import InputError, VDTError
from vdt_runtime.requests import PARAMS, ROLLOUT, TASKS, Request, parse_params
from vdt_runtime.settings import PRECISIONS, SAMPLERS
from vdt_runtime.video import MAX_FPS, MIN_FPS

CLI_TASKS = TASKS + (ROLLOUT,)
_FLAGS = tuple(name for name in PARAMS if name not in ("task", "seed"))  # --flag per Request wire parameter

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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # a value such as "-1,0,8,8" (a box) is a value, not a flag, like "-1" already is: Request refuses it by range
        self._negative_number_matcher = re.compile(r"^-\d+(,-?\d+)*$|^-\d*\.\d+$")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message, 300)}\n")


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

    def task_args(sp):  # the Request's wire parameters as flags; Request.from_params parses and checks them
        sp.add_argument("--task", required=True, choices=CLI_TASKS)
        for name in _FLAGS:
            kind, help = PARAMS[name]
            shape = {"choices": list(SAMPLERS)} if name == "sampler" else {"metavar": kind.upper()}
            sp.add_argument("--" + name.replace("_", "-"), dest=name, help=help, **shape)
        sp.add_argument("--mask", type=Path, help=".npy mask, 1 = generate, latent or pixel size (inpaint)")

    r = sub.add_parser("run", help="generate a video for a task")
    r.add_argument("--input", type=Path, help="video file, image or PNG folder (not needed for unconditional)")
    r.add_argument("--out", type=Path, required=True, help=".mp4, .gif, or a folder name for PNGs")
    r.add_argument("--bundle", type=Path, default=None, help="bundle folder or installed name (default: default)")
    task_args(r)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--fps", type=float, default=8, help=f"frames per second of --out, {MIN_FPS:g}..{MAX_FPS} (default 8)")
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
    s.add_argument("--selftest", action="store_true",
                   help="replay the bundle's golden cases at load and refuse to start if one fails")
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

    t = sub.add_parser("selftest", help="replay the bundle's golden cases on this backend, precision and device "
                       "(run it first on a new device)")
    t.add_argument("bundle", type=Path, nargs="?", default=None)
    backend_args(t)

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
    commands = {"run": _run, "info": _info, "bench": _bench, "serve": _serve, "batch": _batch,
                "selftest": _selftest}
    return run_guarded(lambda: commands[args.command](args))


def _load(args, bundle=None, *, verify: bool = False, selftest: bool = False):
    from vdt_runtime.pipeline import Pipeline

    return Pipeline.load(args.bundle if bundle is None else bundle, backend=args.backend, precision=args.precision,
                         options=_options(args), verify=verify, vae_slice=args.vae_slice, selftest=selftest)


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
    """Flags → one Request (which parses and checks them) → the pipeline. Every check that needs no backend comes
    first: the bundle, the output path (never the input, never inside the bundle), fps, the mask, the request."""
    from vdt_runtime.video import check_fps, check_output_path, read_mask, write_video

    bundle = Bundle.load(args.bundle)
    protect = {"input": args.input, "bundle": bundle.path}
    check_output_path(args.out, protect=protect)
    check_fps(args.fps)
    mask = None if args.mask is None else read_mask(args.mask)
    request = Request.from_params(_params(args, seed=args.seed), frames=args.input, mask=mask)
    streamed = request.task == ROLLOUT  # streamed: one window in memory at a time, whatever --total
    planned = request.plan(bundle, streamed=streamed)  # refused here, before a backend loads; run as planned
    pipe = _load(args, bundle)
    if pipe.chosen:
        print(f"chosen     {pipe.chosen}")
    if streamed:
        stream = pipe._stream(planned, timings=args.timings)
        out = write_video(args.out, stream, fps=args.fps, protect=protect)
        print(f"wrote {out} ({request.total} frames {bundle.image_size}x{bundle.image_size}; denoiser on "
              f"{', '.join(pipe.providers['denoiser'])})")
        _print_timings(stream.timings)
        return 0
    result = pipe._generate([planned], progress=not args.no_progress, timings=args.timings)[0]
    out = write_video(args.out, result.frames, fps=args.fps, protect=protect)
    t, h, w, _ = result.frames.shape
    print(f"wrote {out} ({t} frames {h}x{w}; {result.sampling}; denoiser on {', '.join(result.providers['denoiser'])})")
    _print_timings(result.timings)
    return 0


def _params(args, **extra) -> dict:
    """The Request wire parameters the command line gave (flags left out are None: unset)."""
    return {"task": args.task, **{name: getattr(args, name) for name in _FLAGS}, **extra}


def _serve(args) -> int:
    from vdt_runtime.serve import MODEL, serve

    pipe = _load(args, selftest=args.selftest)
    endpoints = f"http://{args.host}:{args.http_port} and grpc {args.host}:{args.grpc_port}"
    serve(pipe, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
          max_batch=args.max_batch, queue_delay_us=args.queue_delay_us, verbose=args.verbose,
          exit_timeout_s=check_int("--exit-timeout-s", args.exit_timeout_s, 0, 3600),
          ready=lambda: print(f"serving model {MODEL!r} ({pipe.bundle.name}) on {endpoints}; health "
                              f"http://{args.host}:{args.http_port}/v2/health/ready, metrics "
                              f"http://{args.host}:{args.metrics_port}/metrics", flush=True))
    print("stopped: Triton and its workspace are gone", flush=True)
    return 0


def _batch(args) -> int:
    from vdt_runtime.batch import run_folder

    from vdt_runtime.video import read_mask

    mask = None if args.mask is None else read_mask(args.mask)
    request = parse_params(_params(args), mask=mask)  # typed Request fields every row shares
    options = _options(args)
    rows = run_folder(args.inputs, args.outputs, bundle=args.bundle, backend=args.backend, precision=args.precision,
                      options=options, actors=args.actors, cpus_per_actor=options.get("threads", 1),
                      gpus_per_actor=args.gpus_per_actor, num_cpus=args.num_cpus, address=args.address,
                      batch_size=args.batch_size, suffix=args.suffix, seed=args.seed, fps=args.fps, mask=mask,
                      **request)
    failed = [r for r in rows if r["error"]]
    for r in failed:
        print(f"error: {r['input']}: {r['error']}", file=sys.stderr)
    print(f"wrote {len(rows) - len(failed)} of {len(rows)} videos to {args.outputs} (results.jsonl lists each)")
    return 1 if failed else 0


def _print_timings(timings: dict[str, float]) -> None:
    for stage, seconds in timings.items():
        print(f"  {stage:<12} {seconds:8.3f} s")


def _info(args) -> int:
    from vdt_runtime.backends import BACKENDS, available, machine, plan, runnable

    bundle = Bundle.load(args.bundle, verify=args.verify)
    print(bundle.describe())
    golden = bundle.manifest.get("golden")
    print("golden     no golden cases (vdt selftest cannot check this bundle; add them with vdt-export golden)"
          if golden is None else f"golden     {golden['file']}: " + ", ".join(f"{n} {s}" for s, n in golden["cases"].items())
          + f" case(s) + 1 end-to-end; tolerances for {', '.join(golden['tolerances'])} (run vdt selftest)")
    if args.verify:
        print(f"sha256     all {len(bundle.manifest['files'])} files match the manifest")
    print(f"machine    {machine()}")
    with _load(args, bundle) as pipe:  # planned once; with --backend auto its plan is the auto line's
        try:
            chosen = pipe.chosen or plan(bundle, "auto", args.precision, _options(args)).chosen
            print(f"auto       {chosen.replace('auto chose', 'chooses', 1)}")
        except VDTError as e:  # e.g. options of a backend auto never picks
            print(f"auto       chooses nothing with these settings: {e}")
        print("backends   precisions each can run for this bundle on this machine (default first)")
        for choice in BACKENDS:
            reason = available(choice)
            print(f"  {choice:<12} " + (f"unavailable: {reason}" if reason else
                                        _precision_summary(runnable(bundle, choice))))
        print(pipe.describe())
    return 0


def _selftest(args) -> int:
    """Print what runs and the self-test table; 0 when every check passes, else one error line (status 2)."""
    from vdt_runtime.selftest import run_selftest

    with _load(args) as pipe:
        print(pipe.describe())
        report = run_selftest(pipe.bundle, pipe.backends)
        print(report.table())
    report.raise_if_failed()
    print(f"self-test passed: bundle {pipe.bundle.name!r} on {pipe.backend}")
    return 0


def _precision_summary(can: dict[str, tuple[str, ...]]) -> str:
    """"fp32, int8 (int8: denoiser only)": every precision, and which stages a partial one covers."""
    union = list(dict.fromkeys(p for ps in can.values() for p in ps))
    partial = [f"{p}: {', '.join(s for s, ps in can.items() if p in ps)} only"
               for p in union if not all(p in ps for ps in can.values())]
    return ", ".join(union) + (f" ({'; '.join(partial)})" if partial else "")


def _bench(args) -> int:

    repeat = check_int("--repeat", args.repeat, 1, None)
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
