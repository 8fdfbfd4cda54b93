"""Every GPU branch of backend choice on a simulated NVIDIA machine (tests/runtime/simulated_gpu.py): a stand-in
driver reporting GPUs, onnxruntime-gpu offering its providers (or some of them), the GPU providers really failing to
load and the CPU provider really running in their place. Reported providers are the sessions' get_providers().

Runs in CI without a GPU; on a real GPU machine benchmarks/gpu_check.sh confirms the branches where CUDA loads.
"""
from __future__ import annotations


import numpy as np
import pytest

from simulated_gpu import CPU, CUDA, TRT, Box, standin_driver
from vdt_runtime.backends import open_backend, plan
from vdt_runtime.backends import trt_engines as te
from vdt_runtime.backends.base import check_options
from vdt_runtime.backends.ort import OrtBackend, OrtOptions
from vdt_runtime.bundle import Bundle
from vdt_runtime.errors import BackendError, InputError

DEFAULT = Bundle.load(None)
GPU_NAME, GPU_CC = "Stand-in GPU", (9, 0)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    folder = tmp_path_factory.mktemp("standin-driver")
    standin_driver(folder)
    return folder


@pytest.fixture
def box(driver, tmp_path):
    """box(gpus=1, offers=None): a simulated machine recording its onnxruntime sessions."""
    def make(gpus: int = 1, offers=None) -> Box:
        record = tmp_path / f"sessions-{gpus}-{'-'.join(offers or ['real'])}.jsonl"
        record.unlink(missing_ok=True)
        return Box(driver, gpus=gpus, offers=tuple(offers) if offers else None, record=record)
    return make


LOAD = '''
import json, warnings
import numpy as np
from vdt_runtime import Pipeline
from vdt_runtime.errors import VDTError
def load(**kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = Pipeline.load(**kw)
    return pipe, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
def state(pipe, warned):
    return {"backend": pipe.backend, "chosen": pipe.chosen, "describe": pipe.describe(), "warnings": warned,
            "providers": {s: list(p) for s, p in pipe.providers.items()}, "graphs": pipe.graphs,
            "precisions": {s: b.precision for s, b in pipe.backends.items()}}
def refusal(**kw):
    try:
        Pipeline.load(**kw)
    except VDTError as e:
        return f"{type(e).__name__}: {e}"
    return None
frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
'''


def _requested(box: Box) -> dict[str, list[str]]:
    """File -> providers asked for by the first session the child created on it."""
    out: dict[str, list[str]] = {}
    for s in box.sessions():
        out.setdefault(s["file"], s["providers"])
    return out


# --- the driver boundary ------------------------------------------------------------------------------------------


def test_driver_probe_sees_the_simulated_gpus(box):
    code = ("from vdt_runtime.backends.base import nvidia_gpus, gpu\nfrom vdt_runtime.backends import machine\n"
            "import json\nn = nvidia_gpus()\nprint(json.dumps([n, gpu(n - 1) if n else None, machine()]))")
    n, described, line = box(gpus=2).result(code)
    assert n == 2 and described == [GPU_NAME, list(GPU_CC)]
    assert line.startswith("the NVIDIA driver reports 2 GPU(s); onnxruntime offers Tensorrt, CUDA, CPU")
    assert box(gpus=0).result(code)[:2] == [0, None]


# --- backend="auto" on each kind of machine -----------------------------------------------------------------------


def test_default_load_on_an_nvidia_box_works_and_reports_what_really_ran(box):
    """The issue-20 bug: on a machine whose driver reports a GPU and whose onnxruntime-gpu offers its providers,
    Pipeline.load() raised `unknown backend 'ort-auto'`. Now auto plans CUDA once; the CUDA provider fails to load
    (stand-in driver), every stage really runs on the CPU provider, a warning says so, and the frames are the CPU
    backend's, byte for byte."""
    b = box(gpus=1)
    got = b.result(LOAD + '''
pipe, warned = load()
out = pipe.predict(frames, cond=2, total=4, steps=2, seed=3).frames
ref = Pipeline.load(backend="cpu").predict(frames, cond=2, total=4, steps=2, seed=3).frames
print(json.dumps({**state(pipe, warned), "same": bool(np.array_equal(out, ref))}))
''')
    assert got["backend"] == "cuda"
    assert got["chosen"].startswith("auto chose 'cuda' at fp32: the fastest lossless choice measured for this kind "
                                    "of machine (the NVIDIA driver reports 1 GPU(s); onnxruntime offers Tensorrt, "
                                    "CUDA, CPU)")
    assert got["providers"] == {s: [CPU] for s in ("denoiser", "vae_encoder", "vae_decoder")}
    assert sorted(w.split(" (")[0] for w in got["warnings"]) == sorted(
        f"auto's choice 'cuda' asked for {CUDA} but stage {s!r} runs on {CPU}"
        for s in ("denoiser", "vae_encoder", "vae_decoder"))
    assert all("could not load it: its CUDA, cuDNN or TensorRT libraries are missing" in w for w in got["warnings"])
    assert got["graphs"]["denoiser"] == "fused"  # fell back to the CPU alone: the CPU's fused graph
    assert "runs on CPUExecutionProvider" in got["describe"] and "backend    cuda  (auto chose 'cuda'" in got["describe"]
    assert got["same"]
    asked = _requested(b)
    assert asked["denoiser.onnx"] == asked["vae_encoder.onnx"] == asked["vae_decoder.onnx"] == [CUDA, CPU]
    assert b.sessions()[0]["file"] == "denoiser.onnx" and b.sessions()[0]["got"] == [CPU]


def test_auto_with_cuda_offered_and_tensorrt_missing(box):
    b = box(gpus=1, offers=[CUDA, CPU])
    got = b.result(LOAD + "pipe, warned = load()\nprint(json.dumps(state(pipe, warned)))")
    assert got["backend"] == "cuda" and "onnxruntime offers CUDA, CPU)" in got["chosen"]
    assert _requested(b)["vae_decoder.onnx"] == [CUDA, CPU] and len(got["warnings"]) == 3


def test_auto_with_tensorrt_offered_and_cuda_missing(box, tmp_path):
    """The reverse: onnxruntime offers TensorRT but not CUDA, so auto takes onnxruntime's TensorRT provider (with the
    CPU behind it); it fails to load here and the CPU provider runs, with a warning."""
    b = box(gpus=1, offers=[TRT, CPU])
    got = b.result(LOAD + f"pipe, warned = load(options={{'cache_dir': {str(tmp_path / 'c')!r}}})\n"
                          "print(json.dumps(state(pipe, warned)))")
    assert got["backend"] == "ort-tensorrt" and "onnxruntime offers Tensorrt, CPU)" in got["chosen"]
    assert _requested(b)["denoiser.onnx"] == [TRT, CPU]
    assert got["providers"]["denoiser"] == [CPU]
    assert all(f"asked for {TRT} but stage" in w for w in got["warnings"]) and len(got["warnings"]) == 3
    assert "(Please install TensorRT libraries" in got["warnings"][0]  # onnxruntime's own words, one line


@pytest.mark.parametrize("others", [[], ["AzureExecutionProvider"], ["DmlExecutionProvider"]])
def test_gpu_box_whose_onnxruntime_offers_only_the_cpu(box, others):
    """A GPU machine with the CPU-only onnxruntime package: auto stays on the CPU, quietly; `cuda` is refused. Other
    providers than CUDA and TensorRT (the CPU wheel's Azure, DirectML) give auto no GPU choice either: it found
    nothing at all when any provider but the CPU's made the box count as a GPU box."""
    b = box(gpus=1, offers=[*others, CPU])
    got = b.result(LOAD + "pipe, warned = load()\n"
                          "print(json.dumps({**state(pipe, warned), 'cuda': refusal(backend='cuda')}))")
    assert got["backend"] == "cpu" and got["warnings"] == [] and got["chosen"].startswith("auto chose 'cpu' at fp32")
    assert got["cuda"].startswith("BackendError: backend 'cuda' is not available here: onnxruntime ")
    assert got["cuda"].endswith("does not offer CUDAExecutionProvider")
    assert all(p == [CPU] for p in _requested(b).values())


def test_machine_without_a_gpu_but_with_onnxruntime_gpu(box):
    """onnxruntime-gpu offers its GPU providers on any machine; with no GPU from the driver, auto takes the CPU and
    the GPU choices are refused by name."""
    b = box(gpus=0)
    got = b.result(LOAD + "pipe, warned = load()\nprint(json.dumps({**state(pipe, warned), "
                          "'cuda': refusal(backend='cuda'), 'trt': refusal(backend='ort-tensorrt')}))")
    assert got["backend"] == "cpu" and got["warnings"] == [] and "reports 0 GPU(s)" in got["chosen"]
    for key, provider in (("cuda", CUDA), ("trt", TRT)):
        assert got[key].endswith(f"onnxruntime offers {provider}, but this machine has no NVIDIA GPU "
                                 "(the driver reports none)")


def test_auto_with_an_explicit_precision_and_options_on_a_gpu_box(box):
    """auto + fp16 on the GPU box: the CUDA choice runs the bundle's fp16 files; auto + OpenVINO options: OpenVINO
    is not a GPU candidate, so auto says what it tried."""
    b = box(gpus=1)
    got = b.result(LOAD + "pipe, warned = load(precision='fp16')\n"
                          "print(json.dumps({**state(pipe, warned), 'ov': refusal(options={'device': 'CPU'})}))")
    assert got["backend"] == "cuda" and got["precisions"] == {s: "fp16" for s in got["precisions"]}
    assert got["chosen"].startswith("auto chose 'cuda' at fp16: asked for")
    assert _requested(b)["denoiser.fp16.onnx"] == [CUDA, CPU]
    assert got["ov"].startswith("InputError: backend 'auto' found nothing that runs precision 'fp32' with options "
                                "['device']; tried: cuda (takes no device), ort-tensorrt (takes no device)")


# --- what onnxruntime is asked for ----------------------------------------------------------------------------------


def test_cuda_provider_options_reach_onnxruntime_exactly(box):
    b = box(gpus=2)
    got = b.result(LOAD + '''
pipe, warned = load(backend="cuda", options={"device_id": 1, "gpu_mem_limit": 2**30, "cuda_graph": True,
                    "arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC"})
print(json.dumps({**state(pipe, warned), "bad": refusal(backend="cuda", options={"device_id": 2})}))
''')
    asked = {}
    for s in b.sessions():
        asked.setdefault(s["file"], s["provider_options"])
    assert asked["denoiser.onnx"] == [{"device_id": "1", "arena_extend_strategy": "kSameAsRequested",
                                       "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0", "enable_cuda_graph": "1",
                                       "gpu_mem_limit": str(2**30)}, {}]
    # the VAE's output size is not a function of its input axes: no fixed buffers, so no CUDA graph there
    assert asked["vae_decoder.onnx"][0]["enable_cuda_graph"] == "0"
    assert got["bad"] == "BackendError: device_id 2 does not exist; the NVIDIA driver reports 2 GPU(s)"


def test_tensorrt_provider_gets_profiles_fp16_flag_and_keyed_caches_outside_the_bundle(box, tmp_path):
    b = box(gpus=1)
    cache = tmp_path / "cache"
    got = b.result(LOAD + f'''
c = {str(cache)!r}
a, wa = load(backend="ort-tensorrt", options={{"cache_dir": c, "workspace_gb": 2}})
f, wf = load(backend="ort-tensorrt", precision="fp16", options={{"cache_dir": c}})
print(json.dumps({{"fp32": state(a, wa), "fp16": state(f, wf),
                  "inside": refusal(backend="ort-tensorrt", options={{"cache_dir": str(a.bundle.path / "x")}})}}))
''')
    sessions: dict[str, dict] = {}
    for s in b.sessions():
        sessions.setdefault(s["file"], s)
    den = sessions["denoiser.onnx"]
    assert den["providers"] == [TRT, CUDA, CPU] and den["got"] == [CPU]
    trt, cuda, cpu = den["provider_options"]
    device = te.Device(GPU_NAME, GPU_CC, "none")  # no TensorRT library here
    key = te.build_spec(DEFAULT, "denoiser", "fp32", workspace_gb=2.0).key(device)
    assert trt == {
        "device_id": "0", "trt_fp16_enable": "False", "trt_max_workspace_size": str(2 * 2**30),
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache / f"ort.default.denoiser.fp32.{key}"),
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache / "ort.timing.Stand-in-GPU.sm90.trtnone"),
        "trt_profile_min_shapes": "latents:1x1x4x16x16,timestep:1",
        "trt_profile_opt_shapes": "latents:1x16x4x16x16,timestep:1",
        "trt_profile_max_shapes": "latents:16x16x4x16x16,timestep:16", "trt_cuda_graph_enable": "False"}
    assert cuda["use_tf32"] == "0" and cpu == {}
    assert (cache / f"ort.default.denoiser.fp32.{key}").is_dir() and (cache / "ort.timing.Stand-in-GPU.sm90.trtnone").is_dir()
    fp16 = sessions["denoiser.fp16.onnx"]["provider_options"][0]
    assert fp16["trt_fp16_enable"] == "True" and ".denoiser.fp16." in fp16["trt_engine_cache_path"]
    assert sessions["vae_decoder.onnx"]["provider_options"][0]["trt_profile_max_shapes"] == "latents:64x4x16x16"
    assert got["fp16"]["precisions"]["denoiser"] == "fp16"
    assert got["inside"].startswith("InputError: ort-tensorrt cache_dir") and "is inside the bundle" in got["inside"]


# --- I/O binding and the CUDA-graph buffers, on the CPU provider that really runs --------------------------------


def test_cuda_graph_buffers_give_the_plain_sessions_bytes(box):
    """cuda_graph=True keeps one binding with fixed buffers per input shape; on the simulated box the CPU provider
    runs it. Outputs are byte-identical to a plain CPU session, across shape changes and repeats."""
    got = box(gpus=1).result(LOAD + '''
from vdt_runtime.backends import open_backend
from vdt_runtime.bundle import Bundle
b = Bundle.load(None)
g = open_backend(b, "denoiser", "cuda", options={"cuda_graph": True, "fused": False})
ref = open_backend(b, "denoiser", "cpu", options={"fused": False})
rng = np.random.default_rng(0)
same = []
for n, t in ((1, 2), (2, 3), (1, 2), (2, 3), (1, 2)):
    feed = {"latents": rng.standard_normal((n, t, 4, 16, 16), dtype=np.float32), "timestep": np.full(n, 500.0, np.float32)}
    same.append(bool(np.array_equal(g.run(feed)["model_out"], ref.run(feed)["model_out"])))
v = open_backend(b, "vae_decoder", "cuda", options={"cuda_graph": True})
print(json.dumps({"same": same, "buffers": len(g._static), "providers": list(g.providers), "vae": v._graphs}))
''')
    assert got == {"same": [True] * 5, "buffers": 2, "providers": [CPU], "vae": False}


def test_io_binding_on_the_cpu_is_byte_identical_to_run():
    """The binding path itself (inputs bound where they live, outputs allocated by onnxruntime) on CPU OrtValues."""
    rng = np.random.default_rng(1)
    for stage, feed in (("denoiser", {"latents": rng.standard_normal((2, 3, 4, 16, 16), dtype=np.float32),
                                      "timestep": np.array([10.0, 900.0], np.float32)}),
                        ("vae_decoder", {"latents": rng.standard_normal((3, 4, 16, 16), dtype=np.float32)}),
                        ("vae_encoder", {"images": rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)})):
        bound = open_backend(DEFAULT, stage, "cpu", options={"io_binding": True, "threads": 1})
        plain = open_backend(DEFAULT, stage, "cpu", options={"threads": 1})
        assert bound._binding and not plain._binding and bound.array_namespace() is np
        (name, a), = bound.run(feed).items()
        assert np.array_equal(a, plain.run(feed)[name]) and a.flags.owndata | (a.base is not None)


def test_io_binding_outputs_are_not_overwritten_by_the_next_call():
    b = open_backend(DEFAULT, "vae_decoder", "cpu", options={"io_binding": True, "threads": 1})
    x = np.random.default_rng(2).standard_normal((1, 4, 16, 16), dtype=np.float32)
    first = b.run({"latents": x})["images"]
    keep = first.copy()
    b.run({"latents": -x})
    assert np.array_equal(first, keep)


# --- options, checked like the others ------------------------------------------------------------------------------


@pytest.mark.parametrize("choice,options,match", [
    ("cpu", {"device_id": 0}, "backend 'cpu' does not take option.*'device_id'.*it takes: threads, graph_optimization, "
                              "spinning, fused, io_binding$"),
    ("cpu", {"cuda_graph": True}, "'cpu' does not take option.*'cuda_graph'"),
    ("cuda", {"cache_dir": "x"}, "'cuda' does not take option.*'cache_dir'.*device_state$"),
    ("ort-tensorrt", {"cudnn": 1}, "does not take option.*'cudnn'.*cache_dir, workspace_gb$"),
    ("cuda", {"arena_extend_strategy": "grow"}, "arena_extend_strategy must be one of kNextPowerOfTwo, "
                                                "kSameAsRequested, got 'grow'"),
    ("cuda", {"cudnn_conv_algo_search": "fast"}, "must be one of EXHAUSTIVE, HEURISTIC, DEFAULT, got 'fast'"),
    ("cuda", {"gpu_mem_limit": 0}, "gpu_mem_limit must be an integer >= 1 or None, got 0"),
    ("cuda", {"device_id": -1}, "device_id must be >= 0, got -1"),
    ("cuda", {"device_id": True}, "device_id must be an integer >= 0, got True"),
    ("cuda", {"cuda_graph": "yes"}, "cuda_graph must be True or False"),
    ("cuda", {"cuda_graph": True, "io_binding": False}, "cuda_graph needs io_binding"),
    ("cuda", {"io_binding": 1}, "io_binding must be True or False"),
    ("ort-tensorrt", {"workspace_gb": "lots"}, "workspace_gb must be a number"),
    ("ort-tensorrt", {"workspace_gb": 0}, r"workspace_gb must be a number in \(0, 1024\]"),
    ("ort-tensorrt", {"cache_dir": 3}, "cache_dir must be a folder path or None"),
])
def test_onnxruntime_options_refused_by_name(choice, options, match):
    with pytest.raises(InputError, match=match):
        check_options(choice, options, OrtBackend)


def test_options_are_a_frozen_dataclass_and_cli_strings_parse():
    o = check_options("ort-tensorrt", {"workspace_gb": "2.5", "cache_dir": "c"}, OrtBackend)
    assert isinstance(o, OrtOptions) and o.workspace_gb == 2.5 and str(o.cache_dir) == "c"
    with pytest.raises(Exception):
        o.threads = 2  # frozen
    assert check_options("cpu", o.__class__(threads=2), OrtBackend).threads == 2  # an Options is taken as it is


def test_plan_decides_io_binding_and_the_cache_folder_once():
    p = plan(DEFAULT, "cpu")
    assert p.options.io_binding is False and p.options.cache_dir is None
    assert p.open(DEFAULT, "vae_decoder").provider_options == [{}]
    with pytest.raises(InputError, match="stage 'denoiser' is not in this plan"):
        plan(DEFAULT, "cpu", stages=("vae_decoder",)).open(DEFAULT, "denoiser")


def test_gpu_choice_without_a_gpu_is_refused_before_any_option_is_used():
    with pytest.raises(BackendError, match="backend 'cuda' is not available here"):
        open_backend(DEFAULT, "vae_decoder", "cuda", options={"device_id": 0})


# --- the CLI on the simulated box -----------------------------------------------------------------------------------


def test_vdt_info_says_what_auto_chooses_and_why(box):
    done = box(gpus=1).vdt("info")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "machine    the NVIDIA driver reports 1 GPU(s); onnxruntime offers Tensorrt, CUDA, CPU" in out
    assert "auto       chooses 'cuda' at fp32: the fastest lossless choice measured for this kind of machine" in out
    assert "  cuda         fp32, fp16\n" in out and "  cpu          fp32, int8, fp16 (int8: denoiser only)" in out
    assert "denoiser     fp32  fused    graph, runs on CPUExecutionProvider" in out
    nogpu = box(gpus=0).vdt("info").stdout
    assert "auto       chooses 'cpu' at fp32" in nogpu and "  cuda         unavailable: onnxruntime offers" in nogpu
    # the same settings as the load: auto with the user's precision and options, or why it picks nothing with them
    fp16 = box(gpus=1).vdt("info", "--precision", "fp16", "-o", "device_id=0").stdout
    assert "auto       chooses 'cuda' at fp16: asked for" in fp16
    ov = box(gpus=1).vdt("info", "--backend", "openvino", "-o", "num_streams=1")
    assert ov.returncode == 0, ov.stderr[-2000:]
    assert "auto       chooses nothing with these settings: backend 'auto' found nothing that runs precision " \
           "'fp32' with options ['num_streams']" in ov.stdout and "backend    openvino" in ov.stdout


@pytest.mark.parametrize("argv,code,expect", [
    ((), 0, "auto's choice 'cuda' asked for CUDAExecutionProvider"),
    (("--backend", "cuda", "-o", "cuda_graph=true"), 0, "backend 'cuda' asked for CUDAExecutionProvider"),
    (("--backend", "ort-tensorrt", "--precision", "fp16"), 0, "backend 'ort-tensorrt' asked for TensorrtExecutionProvider"),
    (("--backend", "cpu"), 0, ""),
    (("--backend", "cuda", "-o", "device_id=3"), 2, "error: device_id 3 does not exist; the NVIDIA driver reports 1"),
    (("--backend", "tensorrt"), 2, "error: backend 'tensorrt' is not available here"),
    (("--backend", "cpu", "-o", "cuda_graph=true"), 2, "error: backend 'cpu' does not take option(s) 'cuda_graph'"),
])
def test_vdt_run_with_each_backend_on_the_gpu_box(box, tmp_path, argv, code, expect):
    out = tmp_path / "o.gif"
    extra = ("-o", f"cache_dir={tmp_path / 'c'}") if "ort-tensorrt" in argv else ()
    done = box(gpus=1).vdt("run", "--task", "unconditional", "--total", "2", "--steps", "2", "--no-progress",
                           "--out", str(out), *argv, *extra)
    assert done.returncode == code, done.stderr[-2000:]
    assert expect in done.stderr
    assert out.exists() == (code == 0)
    if code:
        assert len(done.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_vdt_run_cuda_on_a_machine_without_a_gpu_is_one_line(box, tmp_path):
    done = box(gpus=0).vdt("run", "--task", "unconditional", "--total", "2", "--steps", "2", "--no-progress",
                           "--out", str(tmp_path / "o.gif"), "--backend", "cuda")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: backend 'cuda' is not available here: onnxruntime offers CUDAExecutionProvider, but this machine has "
        "no NVIDIA GPU (the driver reports none)"]


# onnxruntime's own fallback, emulated at its boundary: when a session's first provider fails, onnxruntime retries
# on its fallback list (CUDA, CPU) with NO provider options, and says so on stdout. Here TensorRT "fails" that way and
# CUDA "loads" (reported by get_providers; the CPU provider really computes).
FALLBACK = '''
import onnxruntime as _ort2
_Real, CALLS = _ort2.InferenceSession, []
class _Emulated(_Real):
    def __init__(self, path, sess_options=None, providers=None, provider_options=None, **kw):
        providers, opts = list(providers), list(provider_options or [])
        if providers[0] == "TensorrtExecutionProvider":
            print("Falling back to ['CUDAExecutionProvider', 'CPUExecutionProvider'] and retrying.")
            providers, opts = ["CUDAExecutionProvider", "CPUExecutionProvider"], None
        CALLS.append({"providers": providers, "options": opts})
        self._emulated = providers
        super().__init__(path, sess_options, providers=["CPUExecutionProvider"])
    def get_providers(self):
        return list(self._emulated)
_ort2.InferenceSession = _Emulated
'''


def test_onnxruntime_fallback_from_tensorrt_keeps_the_planned_cuda_options(box, tmp_path):
    """onnxruntime's retry after the TensorRT provider fails drops every provider option, so a session asked for
    GPU 1 would run on GPU 0; the backend opens it again from CUDA on, with the planned options."""
    got = box(gpus=2).result(FALLBACK + LOAD + f'''
pipe, warned = load(backend="ort-tensorrt", options={{"device_id": 1, "io_binding": False,
                                                      "cache_dir": {str(tmp_path / "c")!r}}})
print(json.dumps({{**state(pipe, warned), "calls": CALLS,
                  "fallback": [b.session._enable_fallback for b in pipe.backends.values()]}}))
''')
    assert got["providers"] == {s: [CUDA, CPU] for s in ("denoiser", "vae_encoder", "vae_decoder")}
    calls = got["calls"]
    assert len(calls) == 6  # per stage: onnxruntime's option-less retry, then ours
    for first, second in zip(calls[::2], calls[1::2]):
        assert first == {"providers": [CUDA, CPU], "options": None}
        assert second["providers"] == [CUDA, CPU] and second["options"][0]["device_id"] == "1"
    assert len(got["warnings"]) == 3 and all(f"asked for {TRT}" in w for w in got["warnings"])
    assert got["fallback"] == [False] * 3  # and no later retry at run time moves a session off what was reported
