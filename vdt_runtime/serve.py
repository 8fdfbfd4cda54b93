"""`vdt serve BUNDLE`: one Pipeline behind Triton Inference Server (through PyTriton), KServe v2 over HTTP and gRPC.

Triton's dynamic batcher collects requests; each batch it hands over becomes one `Pipeline.generate` call, which
stacks the compatible ones on B. One request = one video:

  inputs      task    BYTES [1, 1]            a task name, "rollout", or "mask" (a user mask instead of a task)
              frames  UINT8 [1, N, H, W, 3]   the task's given frames (H = W = the bundle's image size); optional
              mask    FP32  [1, T, h, w]      the user mask (1 = generate) for task "mask"; optional
  parameters  the Request's wire parameters (vdt_runtime.requests.PARAMS, parsed by Request.from_params):
              total, cond, stride, window, steps, seed (int, or a string "8"), sampler (string), eta (a number or
              a string "0.5"), given, box, box_frames, at (string "0,3,5")
  outputs     frames  UINT8 [1, T, H, W, 3]   the video (absent when the request was refused)
              error   BYTES [1, 1]            empty, or the one-line reason the request was refused

PyTriton fails every request of a dynamic batch when its callable raises, so a refused request does not raise:
it answers with `error` set, and the requests batched with it are served. Malformed tensors (dtype, rank,
image size) are refused by Triton itself with a protocol error. PyTriton and tritonclient are optional
(`pip install 'vdt[serve]'`) and imported only here.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import Any

import numpy as np

from vdt_runtime.errors import BackendError, InputError, VDTError
from vdt_runtime.requests import Plan, Request

MODEL = "vdt"


def request_from(data: dict[str, np.ndarray], parameters: dict[str, Any] | None) -> Request:
    """One KServe v2 request (input arrays with their batch axis, request parameters) → a Request."""
    params = dict(parameters or {})
    params.pop("headers", None)  # Triton forwards HTTP/gRPC headers in the same dict
    if "task" in params:
        raise InputError("the task travels as the input tensor 'task', not as a parameter")
    task = np.asarray(data.get("task", np.array([[b""]], dtype=object))).reshape(-1)
    if task.size != 1:
        raise InputError(f"input 'task' must hold one name, got {task.size}")
    arrays = {}
    for name in ("frames", "mask"):
        if name in data:
            x = np.asarray(data[name])
            if x.shape[:1] != (1,):
                raise InputError(f"input {name!r} must hold one video (batch axis 1), got shape {tuple(x.shape)}; "
                                 "send one request per video, Triton batches them")
            arrays[name] = x[0]
    return Request.from_params({**params, "task": task[0]}, **arrays)


class InferCallable:
    """PyTriton's inference callable: a list of requests in, one response dict each out.

    A request that is refused (by its plan) or fails (a backend error while it runs) answers with `error` and no
    frames; the requests batched with it are served."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __call__(self, requests) -> list[dict[str, np.ndarray]]:
        built: list[Plan | str] = []
        for r in requests:
            try:  # the plan makes every refusal generate could make, so the plans below all run
                built.append(request_from(r.data, getattr(r, "parameters", None)).plan(self.pipe.bundle))
            except VDTError as e:
                built.append(_error(e))
        good = [b for b in built if isinstance(b, Plan)]
        try:
            results = self.pipe._generate(good) if good else []
        except VDTError:  # a backend failure: one at a time, so only the request that meets it fails
            results = [self._alone(b) for b in good]
        out = iter(results)
        responses = []
        for b in built:
            result = b if isinstance(b, str) else next(out)
            if isinstance(result, str):
                responses.append({"error": np.array([[result.encode()]], dtype=object)})  # no frames
            else:
                responses.append({"frames": result.frames[None], "error": np.array([[b""]], dtype=object)})
        return responses

    def _alone(self, plan: Plan):
        try:
            return self.pipe._generate([plan])[0]
        except VDTError as e:
            return _error(e)


def _error(e: VDTError) -> str:
    return f"{type(e).__name__}: {e}"


def serve(pipe, *, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
          max_batch: int | None = None, queue_delay_us: int = 2000, verbose: bool = False, exit_timeout_s: int = 10,
          ready=None) -> None:
    """Serve `pipe` as model "vdt" until SIGTERM or Ctrl-C, then stop Triton (its ports closed, PyTriton's
    workspace removed) and return; Triton gives in-flight requests `exit_timeout_s` seconds, and stopping takes
    about that long. `ready()` (if given) is called once the endpoints are up.

    `pipe` is loaded before Triton starts, so Triton's /v2/health/ready (server and model ready) answers 200 only
    once the pipeline is loaded; /v2/health/live answers while the server runs; Prometheus metrics are on
    `metrics_port` at /metrics."""
    problem = interpreter_problem()
    if problem:
        raise BackendError(problem)
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as e:
        raise BackendError(f"serving needs PyTriton: pip install 'vdt[serve]' ({e})") from None
    size = pipe.image_size
    cap = pipe.bundle.stage("denoiser").axis_max("batch") or 16
    max_batch = cap if max_batch is None else max_batch
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                          metrics_address=host, metrics_port=metrics_port, log_verbose=1 if verbose else 0,
                          exit_timeout_secs=exit_timeout_s)
    if not verbose:
        logging.getLogger("pytriton").setLevel(logging.WARNING)
    with _stop_on_sigterm():
        try:
            with Triton(config=config) as triton:  # leaving this block stops Triton and removes its workspace
                triton.bind(
                    model_name=MODEL,
                    infer_func=InferCallable(pipe),
                    inputs=[Tensor(name="task", dtype=bytes, shape=(1,)),
                            Tensor(name="frames", dtype=np.uint8, shape=(-1, size, size, 3), optional=True),
                            Tensor(name="mask", dtype=np.float32, shape=(-1, -1, -1), optional=True)],
                    outputs=[Tensor(name="frames", dtype=np.uint8, shape=(-1, size, size, 3)),
                             Tensor(name="error", dtype=bytes, shape=(1,))],
                    config=ModelConfig(max_batch_size=max_batch,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us)),
                    strict=True,
                )
                if ready is not None:
                    ready()
                triton.serve()
        except (_Stop, KeyboardInterrupt):
            pass


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM, so `with Triton(...)` unwinds and stops Triton."""


@contextlib.contextmanager
def _stop_on_sigterm():
    """SIGTERM (systemd, Docker, Kubernetes) stops serving like Ctrl-C does, through the same cleanup."""
    def stop(signum, frame):
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interpreter_problem(base_prefix: str | None = None) -> str | None:
    """Why this interpreter cannot run Triton's Python-backend stub, with the fix (README, Serving), or None.
    The stub links the system libpython: an interpreter of another build (pyenv's, conda's) fails inside it."""
    base = os.path.realpath(sys.base_prefix if base_prefix is None else base_prefix)
    if base == "/usr" or os.environ.get("VDT_SERVE_ANY_PYTHON") == "1":
        return None
    return (f"vdt serve needs the system Python: Triton's Python-backend stub (PyTriton) links the system "
            f"libpython, and {sys.executable} is built elsewhere (base {base}). Fix (README, Serving): "
            "/usr/bin/python3 -m venv .venv-serve && .venv-serve/bin/pip install 'vdt[serve]' (in a checkout: "
            "-e '.[serve]'), then run .venv-serve/bin/vdt serve; VDT_SERVE_ANY_PYTHON=1 skips this check")
