"""TensorRT engines for bundle stages: optimization profiles from the manifest, the cache key, the engine cache
(outside the bundle folder) and the build itself. Only `build_engine` and `device_info` import tensorrt /
cuda.bindings, when called; everything else is plain logic that runs (and is tested) anywhere.

An engine is a build output, not a bundle file. It is stored as <cache>/<bundle>.<stage>.<precision>.<key>.plan
with a .json beside it holding everything that produced it: the ONNX file's sha256, the TensorRT version, the GPU
(name + compute capability) or the hardware-compatibility level, the precision, the profiles and the builder
flags, plus the plan's own sha256. An engine is used only when all of that fits this machine and request
(`why_unusable`); otherwise it is rebuilt, or refused with the reasons, never silently used.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vdt_runtime.bundle import Bundle, Stage, sha256_file
from vdt_runtime.errors import BackendError, InputError

PRECISIONS = ("fp32", "fp16")  # fp16: built from the bundle's fp16 ONNX (vdt-export fp16), strongly typed
HARDWARE_COMPAT = ("none", "ampere+", "same-cc")  # none: this GPU model only; same-cc: GPUs of its compute capability
AMPERE_CC = 80  # ampere+: compute capability ≥ 8.0
META_VERSION = 1
NUMERIC_FLAGS = ("strongly_typed", "tf32")


def default_cache_dir() -> Path:
    """$VDT_TRT_CACHE, else $XDG_CACHE_HOME/vdt/tensorrt, else ~/.cache/vdt/tensorrt."""
    if os.environ.get("VDT_TRT_CACHE"):
        return Path(os.environ["VDT_TRT_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vdt" / "tensorrt"


# --- optimization profiles ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One optimization profile: per input name, the (min, opt, max) shape."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def fits(self, shapes: dict[str, tuple[int, ...]]) -> bool:
        """Every input's shape lies within [min, max] of this profile, axis by axis."""
        for name, (lo, _, hi) in self.shapes.items():
            shape = shapes.get(name)
            if shape is None or len(shape) != len(lo):
                return False
            if any(not (a <= s <= b) for a, s, b in zip(lo, shape, hi)):
                return False
        return True

    def describe(self) -> str:
        return "; ".join(f"{n} {list(lo)}..{list(hi)}" for n, (lo, _, hi) in self.shapes.items())

    def to_json(self) -> dict:
        return {n: [list(s) for s in mmo] for n, mmo in self.shapes.items()}


def profiles(stage: Stage, frame_buckets: tuple[int, ...] = ()) -> list[Profile]:
    """Profiles for a stage from its manifest dynamic axes (min/opt/max). With `frame_buckets` (e.g. (4, 8, 16)),
    the "frames" axis is split into one profile per bucket — T in (previous bucket, bucket], opt = the bucket —
    so each profile's kernels are tuned for its own length; the last bucket is the manifest's max."""
    axes = stage.dynamic_axes
    ranges = [dict(axes)]
    if frame_buckets:
        if "frames" not in axes:
            raise InputError(f"frame_buckets {list(frame_buckets)} given, but stage {stage.name!r} has no frames axis")
        lo, hi = axes["frames"]["min"], axes["frames"]["max"]
        buckets = sorted(set(frame_buckets))
        if any(not isinstance(b, int) or isinstance(b, bool) or not lo <= b <= hi for b in buckets):
            raise InputError(f"frame_buckets must be integers in {lo}..{hi} (the bundle's frames range), "
                             f"got {list(frame_buckets)}")
        if buckets[-1] != hi:
            buckets.append(hi)
        ranges, start = [], lo
        for b in buckets:
            ranges.append({**axes, "frames": {"min": start, "opt": b, "max": b}})
            start = b + 1
    out = []
    for r in ranges:
        shapes = {}
        for spec in stage.inputs:
            dims = [[d, d, d] if isinstance(d, int) else [_axis(r, d, stage.name, k) for k in ("min", "opt", "max")]
                    for d in spec.shape]
            shapes[spec.name] = tuple(tuple(d[k] for d in dims) for k in range(3))
        out.append(Profile(shapes))
    return out


def _axis(ranges: dict, axis: str, stage: str, which: str) -> int:
    try:
        return int(ranges[axis][which])
    except (KeyError, TypeError, ValueError):
        raise BackendError(f"stage {stage!r} declares axis {axis!r} without a {which} in dynamic_axes; "
                           f"TensorRT needs min/opt/max for every dynamic axis") from None


def select_profile(profiles_: list[Profile], shapes: dict[str, tuple[int, ...]], stage: str) -> int:
    """Index of the first profile that fits `shapes`; InputError naming the shapes and the profiles otherwise."""
    for i, p in enumerate(profiles_):
        if p.fits(shapes):
            return i
    got = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
    ranges = " | ".join(p.describe() for p in profiles_)
    raise InputError(f"stage {stage!r}: inputs {got} fit no optimization profile of this engine ({ranges})"[:500])


# --- what built an engine, and whether it fits here -------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """The GPU an engine runs on and the TensorRT that runs it."""

    name: str
    compute_capability: tuple[int, int]
    tensorrt: str

    @property
    def cc(self) -> int:
        return self.compute_capability[0] * 10 + self.compute_capability[1]


@dataclass(frozen=True)
class BuildSpec:
    """Everything that determines an engine except the machine (`Device`); `meta` + `key` add the machine."""

    bundle: str
    stage: str
    precision: str
    onnx_sha256: str  # Bundle.content_sha256: the .onnx and every external data file it reads
    profiles: tuple[Profile, ...]
    workspace_gb: float = 4.0
    tf32: bool = False  # off: fp32 engines stay fp32 (parity with onnxruntime); on: TF32 MatMuls on Ampere+
    version_compatible: bool = False  # runs on later TensorRT releases of the same major (lean runtime)
    hardware_compat: str = "none"  # "ampere+": any GPU of compute capability ≥ 8.0; "same-cc": same cc

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise InputError(f"TensorRT precision {self.precision!r}; it builds: {', '.join(PRECISIONS)}")
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise InputError(f"hardware_compat {self.hardware_compat!r}; choose one of {', '.join(HARDWARE_COMPAT)}")
        check_workspace(self.workspace_gb)

    def flags(self) -> dict:
        return {"strongly_typed": True, "workspace_gb": float(self.workspace_gb), "tf32": self.tf32,
                "version_compatible": self.version_compatible, "hardware_compat": self.hardware_compat}

    def meta(self, device: Device) -> dict:
        """The .json written beside the plan (without the plan's hash) for a build on `device`."""
        return {"meta_version": META_VERSION, "bundle": self.bundle, "stage": self.stage,
                "precision": self.precision, "onnx_sha256": self.onnx_sha256,
                "profiles": [p.to_json() for p in self.profiles], "flags": self.flags(),
                "tensorrt": device.tensorrt, "gpu": device.name, "compute_capability": list(device.compute_capability)}

    def key(self, device: Device) -> str:
        """16 hex digits of sha256 over the fields that must match for an engine to be used here: the ONNX, the
        precision, the profiles, the flags, and the machine part — the GPU name and cc (or, for a hardware-
        compatible engine, its level) and the TensorRT version (or only its major for a version-compatible one)."""
        machine = {"gpu": device.name, "cc": device.cc} if self.hardware_compat == "none" else \
            {"hardware_compat": self.hardware_compat, **({"cc": device.cc} if self.hardware_compat == "same-cc" else {})}
        trt = device.tensorrt.split(".")[0] if self.version_compatible else device.tensorrt
        blob = {"onnx": self.onnx_sha256, "precision": self.precision,
                "profiles": [p.to_json() for p in self.profiles], "flags": self.flags(), "tensorrt": trt, **machine}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    def plan_path(self, cache_dir: Path, device: Device) -> Path:
        return Path(cache_dir) / f"{_safe(self.bundle)}.{self.stage}.{self.precision}.{self.key(device)}.plan"


def check_workspace(gb) -> float:
    """A builder workspace limit in GiB: a number in (0, 1024]."""
    if not (isinstance(gb, (int, float)) and not isinstance(gb, bool) and 0 < gb <= 1024):
        raise InputError(f"workspace_gb must be a number in (0, 1024], got {gb!r}")
    return float(gb)


def why_unusable(meta: dict, spec: BuildSpec, device: Device) -> list[str]:
    """Reasons the engine described by `meta` must not run `spec` on `device`; empty when it may: the same ONNX,
    precision, profiles and numeric flags, built by this TensorRT for this GPU — or, for a version- / hardware-
    compatible engine, by a TensorRT and for GPUs that this machine's are compatible with."""
    want = spec.meta(device)
    reasons = [f"{k}: engine {meta.get(k)!r}, wanted {want[k]!r}"
               for k in ("meta_version", "stage", "precision", "onnx_sha256", "profiles") if meta.get(k) != want[k]]
    flags = meta.get("flags") if isinstance(meta.get("flags"), dict) else {}
    # flags that change the numbers must match; workspace and the compatibility flags only change how it was
    # built and where it runs (checked just below), so a shipped compatible engine is found by any request
    reasons += [f"flag {k}: engine {flags.get(k)!r}, wanted {want['flags'][k]!r}" for k in NUMERIC_FLAGS
                if flags.get(k) != want["flags"][k]]
    built_trt = str(meta.get("tensorrt", ""))
    if flags.get("version_compatible"):
        if _version(built_trt)[:1] != _version(device.tensorrt)[:1] or _version(built_trt) > _version(device.tensorrt):
            reasons.append(f"TensorRT: version-compatible engine built with {built_trt}, this is {device.tensorrt} "
                           f"(needs the same major, not older)")
    elif built_trt != device.tensorrt:
        reasons.append(f"TensorRT: engine built with {built_trt}, this is {device.tensorrt}")
    level = flags.get("hardware_compat", "none")
    built_cc = meta.get("compute_capability")
    built_cc = tuple(built_cc) if isinstance(built_cc, list) else ()
    if level == "none" and (meta.get("gpu"), built_cc) != (device.name, device.compute_capability):
        reasons.append(f"GPU: engine built for {meta.get('gpu')} (cc {_cc(built_cc)}), this is {device.name} "
                       f"(cc {_cc(device.compute_capability)})")
    elif level == "same-cc" and built_cc != device.compute_capability:
        reasons.append(f"GPU: same-cc engine built for cc {_cc(built_cc)}, this GPU is cc {_cc(device.compute_capability)}")
    elif level == "ampere+" and device.cc < AMPERE_CC:
        reasons.append(f"GPU: ampere+ engine needs compute capability ≥ 8.0, this is {_cc(device.compute_capability)}")
    return reasons


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".") if p.isdigit())


def _cc(cc) -> str:
    return ".".join(map(str, cc)) if cc else "?"


def build_spec(bundle: Bundle, stage: str, precision: str, *, frame_buckets: tuple[int, ...] = (),
               **flags) -> BuildSpec:
    """The BuildSpec of a bundle stage: its ONNX (the standard graph, never the onnxruntime-fused one) as hashed in
    the manifest, and profiles from its dynamic axes."""
    spec = bundle.stage(stage)
    if precision not in PRECISIONS:
        raise InputError(f"backend 'tensorrt' cannot run precision {precision!r}; it runs: {', '.join(PRECISIONS)}")
    if precision not in spec.files:
        hint = f" (add it with `vdt-export fp16 {bundle.path}`)" if precision == "fp16" else ""
        raise InputError(f"stage {stage!r} has no {precision} ONNX in bundle {bundle.name!r}{hint}; "
                         f"it has: {', '.join(spec.files)}")
    fname = spec.files[precision]
    return BuildSpec(bundle=bundle.name, stage=stage, precision=precision,
                     onnx_sha256=bundle.content_sha256(fname),
                     profiles=tuple(profiles(spec, tuple(frame_buckets))), **flags)


# --- the cache --------------------------------------------------------------------------------------------------


def find_engine(cache_dir: Path, spec: BuildSpec, device: Device) -> tuple[Path | None, list[str]]:
    """A usable cached plan for `spec` here — this machine's key first, then any shipped compatible engine of the
    same bundle, stage and precision — and, when none, why each candidate was rejected."""
    cache_dir = Path(cache_dir)
    exact = spec.plan_path(cache_dir, device)
    candidates = [exact] + sorted(p for p in cache_dir.glob(f"{_safe(spec.bundle)}.{spec.stage}.{spec.precision}.*.plan")
                                  if p != exact)
    rejected = []
    for plan in candidates:
        if not plan.is_file():
            continue
        reasons = _check_plan(plan, spec, device)
        if not reasons:
            return plan, []
        rejected.append(f"{plan.name}: " + "; ".join(reasons))
    return None, rejected


def _check_plan(plan: Path, spec: BuildSpec, device: Device) -> list[str]:
    meta_path = plan.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [f"no readable {meta_path.name} ({type(e).__name__})"]
    if not isinstance(meta, dict):
        return [f"{meta_path.name} is not a JSON object (a {type(meta).__name__})"]
    reasons = why_unusable(meta, spec, device)
    if not reasons and meta.get("plan_sha256") != sha256_file(plan):
        reasons.append("plan file does not match the sha256 recorded when it was built")
    return reasons


def write_engine(cache_dir: Path, spec: BuildSpec, device: Device, plan: bytes) -> Path:
    """Store a built plan and its .json (each written to a temp file, then renamed; the .json last)."""
    from vdt_runtime._atomic import atomic_path

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = spec.plan_path(cache_dir, device)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(plan)
    meta = {**spec.meta(device), "plan_sha256": hashlib.sha256(plan).hexdigest()}
    with atomic_path(path.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return path


# --- the parts that need tensorrt / cuda.bindings ----------------------------------------------------------------


def import_tensorrt():
    """The tensorrt module, or BackendError naming what to install."""
    return _gpu_module("tensorrt", "the tensorrt package (10.x or 11.x)")


def import_cudart():
    """cuda.bindings.runtime (cuda-python), or BackendError naming what to install."""
    return _gpu_module("cuda.bindings.runtime", "cuda-python (cuda.bindings)")


def _gpu_module(name: str, what: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise BackendError(f"backend 'tensorrt' needs {what}, which is not importable here ({e}); install it with "
                           f"pip install 'vdt[tensorrt]' on a machine with an NVIDIA GPU") from None


def cuda_check(result, what: str):
    """Unpack a cuda.bindings call's (error, *values); BackendError naming the call when it failed."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA {what} failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


def device_info(device_id: int = 0) -> Device:
    """The GPU `device_id` and the installed TensorRT; BackendError when either is missing."""
    trt = import_tensorrt()
    cudart = import_cudart()
    try:
        count = cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except BackendError as e:
        raise BackendError(f"backend 'tensorrt' needs an NVIDIA GPU and driver; {e}") from None
    if not 0 <= device_id < count:
        raise BackendError(f"device_id {device_id} does not exist; this machine has {count} CUDA device(s)")
    prop = cuda_check(cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return Device(name=name.strip("\x00 "), compute_capability=(int(prop.major), int(prop.minor)),
                  tensorrt=trt.__version__)


def build_engine(onnx_path: Path, spec: BuildSpec, *, timing_cache: Path | None = None, log=print) -> bytes:
    """Parse the ONNX into a strongly typed network and build a serialized plan with the spec's profiles and
    flags, reusing (and updating) `timing_cache`. TensorRT 10 and 11 API; needs a GPU."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # strongly typed: the ONNX's own Casts decide every layer's type (required on 10.x for fp16, ignored on 11.x)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path.name}: {errors}"[:800])
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_gb * 2**30))
    if not spec.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if spec.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if spec.hardware_compat != "none":
        config.hardware_compatibility_level = {"ampere+": trt.HardwareCompatibilityLevel.AMPERE_PLUS,
                                               "same-cc": trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY,
                                               }[spec.hardware_compat]
    for p in spec.profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache_blob = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    log(f"building TensorRT {trt.__version__} engine: {spec.bundle} {spec.stage} {spec.precision}, "
        f"{len(spec.profiles)} profile(s), flags {spec.flags()}")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"TensorRT failed to build {spec.stage} ({spec.precision}) from {onnx_path.name}; "
                           f"see the TensorRT log above")
    if timing_cache is not None:
        from vdt_runtime._atomic import atomic_path

        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(timing_cache) as tmp:
            Path(tmp).write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def timing_cache_path(cache_dir: Path, device: Device) -> Path:
    """One timing cache per GPU model and TensorRT version, shared by every build there."""
    return Path(cache_dir) / f"timing.{_safe(device.name)}.sm{device.cc}.trt{device.tensorrt}.cache"


def _safe(name: str) -> str:
    """`name` with every character but letters, digits, '-' and '_' replaced by '-' (a file name part)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def ensure_engine(bundle: Bundle, spec: BuildSpec, device: Device, cache_dir: Path, *, build: bool = True,
                  log=print) -> Path:
    """The cached plan for `spec` on `device`, building it when missing (and `build`); BackendError listing why
    each cached candidate was rejected otherwise."""
    plan, rejected = find_engine(cache_dir, spec, device)
    if plan is not None:
        return plan
    why = f"; rejected: {' | '.join(rejected)}" if rejected else ""
    if not build:
        raise BackendError(f"no usable TensorRT engine for {spec.bundle} {spec.stage} {spec.precision} in "
                           f"{str(cache_dir)!r}{why}; build one with `vdt-export trt {bundle.path}`"[:800])
    if rejected:
        log(f"rebuilding: {' | '.join(rejected)}"[:800])
    onnx_path = bundle.file_path(spec.stage, spec.precision)  # the standard graph: fused ops are onnxruntime's
    blob = build_engine(onnx_path, spec, timing_cache=timing_cache_path(cache_dir, device), log=log)
    return write_engine(cache_dir, spec, device, blob)


__all__ = ["PRECISIONS", "BuildSpec", "Device", "Profile", "build_engine", "build_spec", "default_cache_dir",
           "device_info", "ensure_engine", "find_engine", "profiles", "select_profile", "why_unusable",
           "write_engine"]
