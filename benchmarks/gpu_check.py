"""GPU checks for the TensorRT path (run by benchmarks/gpu_check.sh on a machine with an NVIDIA GPU).

Each check runs what this machine can run and records SKIP with the reason otherwise:
  env        GPU, CUDA, torch, CuPy, cuda-python, TensorRT and onnxruntime providers as really found
  fp16_onnx  fp16 vs fp32 ONNX of a random VDT-S/2 (onnxruntime, whatever providers it really uses)
  cupy       every sampler on CuPy arrays vs NumPy, same noise, same stand-in denoiser
  buffers    cuda.bindings: allocate, copy host→device→host on one stream, compare
  torch      torch-CUDA eager VDT-S/2 per call: fp32, fp16 autocast, and the fp16 export policy (B=1, T=16)
  default_load  Pipeline.load() with no arguments on this machine: backend, why, the providers sessions really got,
             warnings, and one predict (issue 20: it raised "unknown backend 'ort-auto'" on NVIDIA boxes)
  ort_cuda   onnxruntime's CUDA provider (backend="cuda") vs torch eager CUDA on the same weights, fp32 and fp16:
             parity, per-call time with I/O binding and CUDA graphs on vs off, a 50-call denoiser loop each side
             (and torch.compile where it runs), and predict (DDPM 50) per video; SKIP where the provider is not
             offered or does not really load
  ort_state  the CuPy sampler-state path through onnxruntime (device_state on vs off: same frames, x_T made on
             the device, per-video time)
  tensorrt   engines fp32/fp16 built from the bundle, TRT vs onnxruntime parity, per-call (± CUDA graph) and
             per-video (predict, DDPM 50) timings
  overhead   the runtime's own cost around the engine: predict through the native backend with a stand-in engine,
             sampler state on the host vs on the GPU
Results: one line per measurement on stdout and in --out (JSON lines).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS: list[dict] = []


class Skip(Exception):
    """This machine lacks what a check needs."""


def record(check: str, **fields) -> None:
    row = {"check": check, **fields}
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def guarded(fn):
    def run(*args):
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - a missing package or device is a SKIP, not a crash
            skip = isinstance(e, (ImportError, Skip))
            record(fn.__name__, status="SKIP" if skip else "ERROR", reason=f"{type(e).__name__}: {e}"[:400],
                   **({} if skip else {"trace": traceback.format_exc()[-800:]}))
    return run


def timed(fn, repeats: int = 20, warmup: int = 3, sync=lambda: None) -> dict:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "n": repeats}


@guarded
def env(_):
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True)
        gpu = smi.stdout.strip() or smi.stderr.strip()
    except FileNotFoundError:
        gpu = "no nvidia-smi"
    found = {"gpu": gpu, "python": platform.python_version()}
    for mod in ("torch", "cupy", "tensorrt", "onnxruntime", "cuda.bindings"):
        try:
            m = __import__(mod, fromlist=["_"])
            found[mod] = getattr(m, "__version__", "present")
        except Exception as e:  # noqa: BLE001
            found[mod] = f"missing ({type(e).__name__})"
    import onnxruntime as ort

    found["ort_providers_available"] = ort.get_available_providers()
    record("env", status="OK", **found)


def make_bundle(tmp: Path) -> Path:
    """A random VDT-S/2 (16 frames, 32×32×4 latents, seed 0) + tiny VAE bundle with its fp16 stages."""
    from vdt_export.sources import randomize_
    from vdt_export.bundle import export_bundle
    from vdt_export.fp16 import add_fp16
    from vdt_export.models import VDT, config_from_name
    from vdt_export.sources import build_vae, tiny_vae_config

    vdt = randomize_(VDT(config_from_name("VDT-S/2")), 0).eval()
    vae = randomize_(build_vae(tiny_vae_config()), 1).eval()
    out = export_bundle(vdt, vae, tmp / "s2", name="s2", image_size=64, fused=False)
    add_fp16(out, vdt, vae)
    return out


@guarded
def fp16_onnx(bundle: Path):
    from vdt_export.stage_error import precision_error

    for stage in ("denoiser", "vae_encoder", "vae_decoder"):
        e = precision_error(bundle, precision="fp16", stage=stage, trials=4)
        record("fp16_onnx", status="OK", stage=stage, **e)


@guarded
def cupy(_):
    import cupy as cp

    if cp.cuda.runtime.getDeviceCount() < 1:
        raise Skip("CuPy sees no CUDA device")
    from vdt_runtime._xp import namespace, to_numpy
    from vdt_runtime.samplers import SAMPLERS, standard_normal
    from vdt_runtime.schedule import make_schedule

    schedule = make_schedule(50, variance_type="learned_range")
    x_T = standard_normal(np.random.default_rng(0), (1, 16, 4, 32, 32))
    mask = np.ones((16, 32, 32), np.float32)
    mask[:8] = 0
    given = np.random.default_rng(1).standard_normal(x_T.shape).astype(np.float32)

    def denoise(x, t):
        xp = namespace(x)
        return xp.tanh(xp.concatenate([x, x], axis=2) * 0.7 + t[:, None, None, None, None] / 999)

    def run(name, xp):  # the whole 50-step loop, with the stand-in denoiser, state in xp
        return SAMPLERS[name](denoise, xp.asarray(x_T), schedule, rng=np.random.default_rng(2),
                              mask=xp.asarray(mask), x_given=xp.asarray(given))

    sync = cp.cuda.get_current_stream().synchronize
    for name in SAMPLERS:
        ref, out = run(name, np), run(name, cp)
        diff = np.abs(to_numpy(out) - ref)
        record("cupy", status="OK", sampler=name, steps=50, on_device=isinstance(out, cp.ndarray),
               max_abs=float(diff.max()), mean_abs=float(diff.mean()),
               loop_ms_numpy=timed(lambda: run(name, np), repeats=3, warmup=0)["median_ms"],
               loop_ms_cupy=timed(lambda: run(name, cp), repeats=3, warmup=1, sync=sync)["median_ms"])


@guarded
def buffers(_):
    from cuda.bindings import runtime as cudart

    from vdt_runtime.backends import trt_engines as te

    stream = te.cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
    host = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    back = np.empty_like(host)
    ptr = te.cuda_check(cudart.cudaMalloc(host.nbytes), "cudaMalloc")
    kind = cudart.cudaMemcpyKind
    te.cuda_check(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind.cudaMemcpyHostToDevice, stream), "H2D")
    te.cuda_check(cudart.cudaMemcpyAsync(back.ctypes.data, ptr, host.nbytes, kind.cudaMemcpyDeviceToHost, stream), "D2H")
    te.cuda_check(cudart.cudaStreamSynchronize(stream), "sync")
    cudart.cudaFree(ptr)
    cudart.cudaStreamDestroy(stream)
    record("buffers", status="OK", bytes=host.nbytes, equal=bool(np.array_equal(host, back)))


@guarded
def torch_reference(_):
    import torch

    if not torch.cuda.is_available():
        raise Skip(f"torch {torch.__version__} has no CUDA device")
    from vdt_export.sources import randomize_
    from vdt_export.fp16 import half_vdt
    from vdt_export.models import VDT, config_from_name

    vdt = randomize_(VDT(config_from_name("VDT-S/2")), 0).eval().cuda()
    x = torch.randn(1, 16, 4, 32, 32, device="cuda")
    t = torch.tensor([500.0], device="cuda")
    sync = torch.cuda.synchronize
    with torch.no_grad():
        ref = vdt(x, t)
        record("torch", status="OK", what="VDT-S/2 eager fp32", batch=1, frames=16,
               device=torch.cuda.get_device_name(), **timed(lambda: vdt(x, t), sync=sync))
        with torch.autocast("cuda", dtype=torch.float16):
            record("torch", status="OK", what="VDT-S/2 eager fp16 autocast", batch=1, frames=16,
                   **timed(lambda: vdt(x, t), sync=sync))
        half = half_vdt(vdt)
        out = half(x, t)
        record("torch", status="OK", what="VDT-S/2 eager, fp16 export policy", batch=1, frames=16,
               max_abs_vs_fp32=float((out - ref).abs().max()), **timed(lambda: half(x, t), sync=sync))


@guarded
def default_load(_):
    """What a new user's first line does here."""
    import warnings

    from vdt_runtime import Pipeline

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        pipe = Pipeline.load()
        load_s = time.perf_counter() - start
    frames = np.random.default_rng(0).integers(0, 256, (8, pipe.image_size, pipe.image_size, 3), dtype=np.uint8)
    start = time.perf_counter()
    pipe.predict(frames, cond=8, total=16, steps=50, seed=0)
    record("default_load", status="OK", backend=pipe.backend, chosen=pipe.chosen, load_s=load_s,
           predict_ddpm50_s=time.perf_counter() - start, providers={k: list(v) for k, v in pipe.providers.items()},
           array_namespace=pipe.backends["denoiser"].array_namespace().__name__,
           warnings=[str(w.message) for w in caught])
    pipe.close()


def _cuda_backend(bundle: Path, precision: str, **options):
    """backend="cuda" on the bundle's denoiser; Skip unless the CUDA provider is offered AND really loads."""
    import onnxruntime as ort

    from vdt_runtime.backends import open_backend
    from vdt_runtime.bundle import Bundle

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip(f"onnxruntime {ort.__version__} offers no CUDAExecutionProvider (CPU-only package)")
    be = open_backend(Bundle.load(bundle), "denoiser", "cuda", precision, options)
    if be.providers[0] != "CUDAExecutionProvider":
        be.close()
        raise Skip(f"the CUDA provider did not load; sessions got {be.providers}")
    return be


@guarded
def ort_cuda(bundle: Path):
    """onnxruntime CUDA vs torch eager CUDA, same random VDT-S/2 weights (seed 0), B=1, T=16, t=500."""
    import torch

    if not torch.cuda.is_available():
        raise Skip(f"torch {torch.__version__} has no CUDA device")
    from vdt_export.checkpoint import randomize_
    from vdt_export.models import VDT, config_from_name

    vdt = randomize_(VDT(config_from_name("VDT-S/2")), 0).eval().cuda()
    rng = np.random.default_rng(0)
    feed = {"latents": rng.standard_normal((1, 16, 4, 32, 32), dtype=np.float32),
            "timestep": np.array([500.0], np.float32)}
    x, t = torch.from_numpy(feed["latents"]).cuda(), torch.from_numpy(feed["timestep"]).cuda()
    sync = torch.cuda.synchronize
    with torch.no_grad():
        ref = vdt(x, t).float().cpu().numpy()
        torch_call = {"fp32": lambda: vdt(x, t)}
        record("ort_cuda", status="OK", what="torch eager CUDA fp32 denoiser call", **timed(torch_call["fp32"], sync=sync))
        record("ort_cuda", status="OK", what="torch eager CUDA fp32, 50-call loop",
               **timed(lambda: [vdt(x, t) for _ in range(50)], repeats=3, warmup=1, sync=sync))
        try:
            compiled = torch.compile(vdt)
            compiled(x, t)
            record("ort_cuda", status="OK", what="torch.compile CUDA fp32 denoiser call", **timed(lambda: compiled(x, t), sync=sync))
        except Exception as e:  # noqa: BLE001 - torch.compile needs a working Triton / compiler here
            record("ort_cuda", status="SKIP", what="torch.compile", reason=f"{type(e).__name__}: {e}"[:300])
    for precision in ("fp32", "fp16"):
        for io_binding, graph in ((False, False), (True, False), (True, True)):
            try:
                be = _cuda_backend(bundle, precision, io_binding=io_binding, cuda_graph=graph)
            except Skip as e:
                record("ort_cuda", status="SKIP", what=f"denoiser {precision}", reason=str(e))
                return
            out = be.run(feed)["model_out"]
            record("ort_cuda", status="OK", what=f"denoiser {precision}", io_binding=io_binding, cuda_graph=graph,
                   providers=be.providers, max_abs_vs_torch_fp32=float(np.abs(out - ref).max()),
                   mean_abs_vs_torch_fp32=float(np.abs(out - ref).mean()), **timed(lambda: be.run(feed)))
            record("ort_cuda", status="OK", what=f"denoiser {precision}, 50-call loop", io_binding=io_binding,
                   cuda_graph=graph, **timed(lambda: [be.run(feed) for _ in range(50)], repeats=3, warmup=1))
            be.close()


@guarded
def ort_state(bundle: Path):
    """Pipeline on backend="cuda" with the sampler state on the GPU (CuPy, x_T made there) vs on the host."""
    import cupy  # noqa: F401 - SKIP without it

    from vdt_runtime import Pipeline

    _cuda_backend(bundle, "fp32").close()  # SKIP unless the CUDA provider really loads
    frames = np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    outs = {}
    for precision in ("fp32", "fp16"):
        for device_state in (False, True):
            with Pipeline.load(bundle, backend="cuda", precision=precision,
                               options={"device_state": device_state}) as pipe:
                xp = pipe.backends["denoiser"].array_namespace().__name__
                run = lambda: pipe.predict(frames, cond=8, total=16, steps=50, seed=0, timings=True)  # noqa: E731
                outs[precision, device_state] = run().frames
                t = timed(run, repeats=3, warmup=1)
                record("ort_state", status="OK", what=f"predict 8→16 DDPM 50 ({precision})", sampler_state=xp,
                       providers=pipe.providers["denoiser"], per_video=t, stage_ms={
                           k: round(1e3 * v, 2) for k, v in run().timings.items()})
        same = outs[precision, True].astype(int) - outs[precision, False]
        record("ort_state", status="OK", what=f"device vs host state ({precision})",
               max_abs_uint8_diff=int(np.abs(same).max()), identical=bool((same == 0).all()))


@guarded
def tensorrt(bundle: Path):
    import tensorrt  # noqa: F401 - SKIP here when TensorRT is not installed

    from vdt_runtime import Pipeline
    from vdt_runtime.backends import open_backend
    from vdt_runtime.bundle import Bundle

    b = Bundle.load(bundle)
    cache = bundle.parent / "engines"
    rng = np.random.default_rng(0)
    feed = {"latents": rng.standard_normal((1, 16, 4, 32, 32), dtype=np.float32),
            "timestep": np.array([500.0], np.float32)}
    ref = open_backend(b, "denoiser", "cpu", "fp32").run(feed)["model_out"]
    for precision in ("fp32", "fp16"):
        for graph in (False, True):
            start = time.perf_counter()
            be = open_backend(b, "denoiser", "tensorrt", precision, {"cache_dir": str(cache), "cuda_graph": graph})
            load_s = time.perf_counter() - start
            out = be.run(feed)["model_out"]
            record("tensorrt", status="OK", what=f"denoiser {precision}", cuda_graph=graph, load_or_build_s=load_s,
                   providers=be.providers, max_abs_vs_ort_fp32=float(np.abs(out - ref).max()),
                   mean_abs_vs_ort_fp32=float(np.abs(out - ref).mean()), **timed(lambda: be.run(feed)))
            be.close()
    frames = np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    for backend, precision in (("tensorrt", "fp32"), ("tensorrt", "fp16"), ("cpu", "fp32")):
        with Pipeline.load(bundle, backend=backend, precision=precision,
                           options={"cache_dir": str(cache)} if backend == "tensorrt" else None) as pipe:
            run = lambda: pipe.predict(frames, cond=8, total=16, steps=50, seed=0)  # noqa: E731
            record("tensorrt", status="OK", what=f"predict video DDPM 50 ({backend} {precision})",
                   providers=pipe.providers["denoiser"], **timed(run, repeats=3, warmup=1))


@guarded
def overhead(bundle: Path):
    """What the runtime itself costs around the engine on a GPU: predict 8 → 16 frames through the native backend
    with the stand-in engine of tests/runtime/standin_tensorrt.py (one elementwise kernel per call, next to no compute),
    so the time is the sampler, the copies and Python; sampler state on the host (NumPy) vs on the GPU (CuPy)."""
    import cupy  # noqa: F401 - SKIP without it

    sys.path.insert(0, str(ROOT / "tests"))
    import standin_tensorrt as standin

    from vdt_runtime import Pipeline
    from vdt_runtime.backends import trt_engines as te
    from vdt_runtime.bundle import Bundle

    saved = sys.modules.get("tensorrt"), te.build_engine
    sys.modules["tensorrt"], te.build_engine = standin.module(), standin.builder(Bundle.load(bundle), [])
    try:
        frames = np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
        for sampler, steps, eta in (("ddpm", 50, None), ("ddim", 50, 0.0), ("dpmpp", 20, 0.0), ("dpmpp", 20, 1.0)):
            for device_state in (False, True):
                opts = {"cache_dir": str(bundle.parent / "standin-engines"), "device_state": device_state,
                        "cuda_graph": True}
                with Pipeline.load(bundle, backend="tensorrt", options=opts) as pipe:
                    run = lambda: pipe.predict(frames, cond=8, total=16, steps=steps, sampler=sampler,  # noqa: E731
                                               eta=eta, seed=0, timings=True)
                    t = timed(run, repeats=5, warmup=2)
                    stages = {k: round(1e3 * v, 2) for k, v in run().timings.items()}
                record("overhead", status="OK", what=f"predict 8→16, {sampler} {steps} eta {eta}, stand-in engine",
                       sampler_state="GPU (CuPy)" if device_state else "host (NumPy)", latents=[1, 16, 4, 32, 32],
                       per_step_ms=t["median_ms"] / steps, stage_ms=stages, **t)
    finally:
        if saved[0] is None:
            sys.modules.pop("tensorrt", None)
        else:
            sys.modules["tensorrt"] = saved[0]
        te.build_engine = saved[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_check_results.jsonl")
    args = ap.parse_args(argv)
    env(None)
    default_load(None)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            bundle = make_bundle(Path(tmp))
        except Exception as e:  # noqa: BLE001
            record("bundle", status="ERROR", reason=f"{type(e).__name__}: {e}"[:400])
            bundle = None
        if bundle is not None:
            fp16_onnx(bundle)
        cupy(None)
        buffers(None)
        torch_reference(None)
        if bundle is not None:
            ort_cuda(bundle)
            ort_state(bundle)
            tensorrt(bundle)
            overhead(bundle)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in RESULTS))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
