"""manifest.json: bounded reading and the strict schema of every key the runtime uses (docs/bundle-format.md).

Known keys are held to their types and ranges (integers are JSON integers, never strings or floats;
booleans are booleans); keys this runtime does not know are ignored, so newer optional fields (a
recommended sampler, provenance, extensions) do not break older readers. Each error names the key, the
value found (cut to limits.MAX_ECHO characters) and what is allowed.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any

from vdt_runtime.checks import check_choice, check_int
from vdt_runtime.errors import BundleError, InputError
from vdt_runtime.limits import MAX_AXIS, MAX_BUNDLE_FILES, MAX_IMAGE_SIDE, MAX_MANIFEST_BYTES, shorten
from vdt_runtime.settings import BETA_SCHEDULES, PRECISIONS, PREDICTION_TYPES, VARIANCE_TYPES, check_sampling

FORMAT = "vdt-bundle"
FORMAT_VERSION = 1
STAGES = ("denoiser", "vae_encoder", "vae_decoder")
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")
_TOP_KEYS = ("format", "format_version", "model", "diffusion", "vae", "image_size", "precision", "stages", "files")
_MODEL_KEYS = ("input_size", "patch_size", "in_channels", "num_frames", "learn_sigma", "max_frames")
_DIFFUSION_KEYS = ("beta_schedule", "num_timesteps", "prediction_type", "variance_type")
_VAE_KEYS = ("scale_factor", "downsample", "latent_channels")
_STAGE_KEYS = ("files", "inputs", "outputs", "dynamic_axes")
_SAMPLING_KEYS = {"sampler", "steps", "eta", "note"}
_IO_COUNT = {"denoiser": (2, 1), "vae_encoder": (1, 1), "vae_decoder": (1, 1)}  # inputs, outputs (at least)
_AXIS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_MAX_NAME = 255  # characters of a file or tensor name
_MAX_RANK = 8
_MAX_SPECS = 16


def read_manifest(path: Path) -> dict[str, Any]:
    """The parsed manifest.json at `path`: at most limits.MAX_MANIFEST_BYTES, UTF-8 JSON, one object."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes; a manifest is a few kB of JSON")
    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise BundleError(f"{path} is not UTF-8 text: {shorten(str(e))}") from None
    except RecursionError:
        raise BundleError(f"{path} nests JSON too deeply to be a manifest") from None
    except ValueError as e:
        raise BundleError(f"{path} is not valid JSON: {shorten(str(e))}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    return manifest


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def check_manifest(m: dict[str, Any], where: Path) -> None:
    """Every known key's type and range, and the numbers that must agree across sections."""
    if m.get("format") != FORMAT:
        raise BundleError(f"{where}: format is {shorten(m.get('format'))}; expected {FORMAT!r}")
    if m.get("format_version") != FORMAT_VERSION or isinstance(m.get("format_version"), bool):
        raise BundleError(f"{where}: format_version {shorten(m.get('format_version'))} is not supported; "
                          f"this runtime supports format_version {FORMAT_VERSION}")
    _require(m, _TOP_KEYS, "manifest", where)
    for section, keys in (("model", _MODEL_KEYS), ("diffusion", _DIFFUSION_KEYS), ("vae", _VAE_KEYS)):
        _require(m[section], keys, section, where)
    for key in ("name", "created"):
        if key in m:
            _text(where, key, m[key])
    model, diffusion, vae = m["model"], m["diffusion"], m["vae"]
    for key in ("input_size", "patch_size", "in_channels", "num_frames"):
        _int(where, f"model.{key}", model[key], 1, MAX_AXIS)
    _int(where, "model.max_frames", model["max_frames"], model["num_frames"], MAX_AXIS,
         f"model.num_frames={model['num_frames']}")
    for key in ("hidden_size", "depth", "num_heads"):
        if key in model:
            _int(where, f"model.{key}", model[key], 1, MAX_AXIS)
    if "num_classes" in model:
        _int(where, "model.num_classes", model["num_classes"], 0, 1 << 30)
    if "mlp_ratio" in model:
        _number(where, "model.mlp_ratio", model["mlp_ratio"])
    _bool(where, "model.learn_sigma", model["learn_sigma"])
    if model["input_size"] % model["patch_size"]:
        raise BundleError(f"{where}: model.input_size={model['input_size']} is not a multiple of "
                          f"model.patch_size={model['patch_size']}")
    _choice(where, "diffusion.beta_schedule", diffusion["beta_schedule"], BETA_SCHEDULES)
    _int(where, "diffusion.num_timesteps", diffusion["num_timesteps"], 2, 100_000)
    _choice(where, "diffusion.prediction_type", diffusion["prediction_type"], PREDICTION_TYPES)
    _choice(where, "diffusion.variance_type", diffusion["variance_type"], VARIANCE_TYPES)
    _number(where, "vae.scale_factor", vae["scale_factor"])
    _int(where, "vae.downsample", vae["downsample"], 1, 64)
    _int(where, "vae.latent_channels", vae["latent_channels"], 1, MAX_AXIS)
    _int(where, "image_size", m["image_size"], 1, MAX_IMAGE_SIDE)
    _choice(where, "precision", m["precision"], PRECISIONS)
    if (diffusion["variance_type"] == "learned_range") != model["learn_sigma"]:
        raise BundleError(
            f"{where}: diffusion.variance_type={diffusion['variance_type']!r} needs model.learn_sigma="
            f"{diffusion['variance_type'] == 'learned_range'}, got {model['learn_sigma']!r}"
        )
    if vae["latent_channels"] != model["in_channels"] or m["image_size"] != model["input_size"] * vae["downsample"]:
        raise BundleError(
            f"{where}: VAE and denoiser disagree: vae.latent_channels={vae['latent_channels']} vs "
            f"model.in_channels={model['in_channels']}, image_size={m['image_size']} vs "
            f"model.input_size*vae.downsample={model['input_size']}*{vae['downsample']}"
        )
    _check_files(m["files"], where)
    if not isinstance(m["stages"], dict):
        raise BundleError(f"{where}: 'stages' must be an object, got {type(m['stages']).__name__}")
    _require(m["stages"], STAGES, "stages", where)
    unknown = sorted(set(m["stages"]) - set(STAGES))
    if unknown:
        raise BundleError(f"{where}: unknown stage(s) {shorten(unknown)}; a bundle has exactly {', '.join(STAGES)}")
    for key in ("opset",):
        if key in m:
            _int(where, key, m[key], 1, 1000)
    for key in ("exporter", "training", "quantization"):
        if key in m and not isinstance(m[key], dict):
            raise BundleError(f"{where}: {key} must be an object, got {type(m[key]).__name__}")
    if "sampling" in m:
        _check_recommended_sampling(m["sampling"], diffusion["num_timesteps"], where)


def _check_recommended_sampling(raw: Any, num_timesteps: int, where: Path) -> None:
    """The optional "sampling" section: {"sampler", "steps", "eta"?, "note"?} that the runtime could run."""
    if not isinstance(raw, dict) or not {"sampler", "steps"} <= raw.keys() or not raw.keys() <= _SAMPLING_KEYS:
        raise BundleError(f"{where}: sampling must be an object with sampler, steps and optionally eta, note; "
                          f"got {shorten(raw)}")
    if "note" in raw:
        _text(where, "sampling.note", raw["note"])
    try:
        check_sampling(raw["sampler"], raw["steps"], raw.get("eta", 0.0), num_timesteps)
    except InputError as e:
        raise BundleError(f"{where}: sampling: {e}") from None


def check_stage(name: str, raw: Any, m: dict[str, Any]) -> None:
    """One stage's files, tensor specs and dynamic axes; then the numbers it shares with the model and VAE."""
    where = f"stages.{name}"
    if not isinstance(raw, dict):
        raise BundleError(f"manifest {where} must be an object, got {type(raw).__name__}")
    _require(raw, _STAGE_KEYS, where, "manifest")
    fused = raw.get("fused", {})
    if not isinstance(raw["files"], dict) or not raw["files"]:
        raise BundleError(f"manifest {where}.files must map precision -> file name, got {shorten(raw['files'])}")
    if not isinstance(fused, dict) or not set(fused) <= set(raw["files"]):
        raise BundleError(f"manifest {where}.fused must map precisions that {where}.files has -> file name, "
                          f"got {shorten(fused)} (files: {sorted(raw['files'])})")
    for key, files in (("files", raw["files"]), ("fused", fused)):
        for precision, fname in files.items():
            _choice("manifest", f"{where}.{key} precision", precision, PRECISIONS)
            if not isinstance(fname, str):
                raise BundleError(f"manifest {where}.{key}.{precision} must be a file name, got {shorten(fname)}")
    if m["precision"] not in raw["files"]:
        raise BundleError(f"manifest {where}.files has no {m['precision']!r} file, the bundle's precision; "
                          f"it has {', '.join(raw['files'])}")
    for key, least in zip(("inputs", "outputs"), _IO_COUNT[name]):
        specs = raw[key]
        if not isinstance(specs, list) or not specs:
            raise BundleError(f"manifest {where}.{key} must be a non-empty list of tensor specs, got {shorten(specs)}")
        if not least <= len(specs) <= _MAX_SPECS:
            raise BundleError(f"manifest {where}.{key} lists {len(specs)} tensors; stage {name!r} needs "
                              f"{least}..{_MAX_SPECS}")
        for i, spec in enumerate(specs):
            _check_spec(f"{where}.{key}[{i}]", spec)
    axes = raw["dynamic_axes"]
    if not isinstance(axes, dict) or len(axes) > _MAX_SPECS:
        raise BundleError(f"manifest {where}.dynamic_axes must map axis -> {{min, opt, max}}, got {shorten(axes)}")
    for axis, r in axes.items():
        _axis_range(f"{where}.dynamic_axes.{axis}", axis, r)
    _check_stage_numbers(name, raw, m)


def _check_stage_numbers(name: str, raw: dict, m: dict) -> None:
    """The stage's fixed dims and axis ranges agree with model / vae / image_size (what the pipeline feeds)."""
    model, vae, where = m["model"], m["vae"], f"manifest stages.{name}"
    c, hw, size = model["in_channels"], model["input_size"], m["image_size"]
    out_c = c * (2 if model["learn_sigma"] else 1)
    if name == "denoiser":
        want = {("inputs", 0): [None, None, ("model.in_channels", c), ("model.input_size", hw), ("model.input_size", hw)],
                ("outputs", 0): [None, None, ("model.in_channels x (2 if learn_sigma)", out_c),
                                 ("model.input_size", hw), ("model.input_size", hw)]}
        ranges = {"frames": (1, model["max_frames"], "model.max_frames")}
    else:
        pixels = [None, ("RGB channels", 3), ("image_size", size), ("image_size", size)]
        latents = [None, ("vae.latent_channels", vae["latent_channels"]), ("model.input_size", hw),
                   ("model.input_size", hw)]
        want = {("inputs", 0): pixels, ("outputs", 0): latents} if name == "vae_encoder" else \
               {("inputs", 0): latents, ("outputs", 0): pixels}
        ranges = {"height": (size, size, "image_size"), "width": (size, size, "image_size"),
                  "latent_height": (hw, hw, "model.input_size"), "latent_width": (hw, hw, "model.input_size")}
    for (key, i), dims in want.items():
        spec = raw[key][i]
        if len(spec["shape"]) != len(dims):
            raise BundleError(f"{where}.{key}[{i}] ({spec['name']!r}) has rank {len(spec['shape'])}; "
                              f"stage {name!r} needs {len(dims)}")
        for j, (dim, need) in enumerate(zip(spec["shape"], dims)):
            if need is not None and isinstance(dim, int) and dim != need[1]:
                raise BundleError(f"{where}.{key}[{i}] ({spec['name']!r}) dim {j} is {dim}; {need[0]} is {need[1]}")
    for axis, (lo, hi, what) in ranges.items():
        r = raw["dynamic_axes"].get(axis)
        if r is None:
            continue
        if axis == "frames" and r["max"] != hi:
            raise BundleError(f"{where}.dynamic_axes.frames.max is {r['max']}; {what} is {hi}")
        if not (r["min"] <= lo and hi <= r["max"]):
            raise BundleError(f"{where}.dynamic_axes.{axis} is {r['min']}..{r['max']}; it must include "
                              f"{what} = {hi}")


def check_relative(fname: Any) -> str:
    """A file name that stays inside the bundle folder: relative, no '..', no backslash, no NUL."""
    if not isinstance(fname, str) or not 0 < len(fname) <= _MAX_NAME:
        raise BundleError(f"bundle file name {shorten(fname)} must be a string of 1..{_MAX_NAME} characters")
    p = PurePosixPath(fname)
    if p.is_absolute() or ".." in p.parts or "\\" in fname or "\x00" in fname or fname.startswith("~"):
        raise BundleError(f"bundle file name {shorten(fname)} must be a relative path inside the bundle folder")
    return fname


def _check_files(files: Any, where: Path) -> None:
    if not isinstance(files, dict):
        raise BundleError(f"{where}: 'files' must be an object, got {type(files).__name__}")
    if len(files) > MAX_BUNDLE_FILES:
        raise BundleError(f"{where}: files lists {len(files)} entries; at most {MAX_BUNDLE_FILES}")
    for fname, entry in files.items():
        check_relative(fname)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not _SHA256.fullmatch(entry["sha256"]):
            raise BundleError(f"files[{shorten(fname)}] must be an object with a 'sha256' of 64 hex digits, "
                              f"got {shorten(entry)}")
        if "size" in entry:
            _int(where, f"files[{fname!r}].size", entry["size"], 0, 1 << 50)


def _check_spec(where: str, raw: Any) -> None:
    if not isinstance(raw, dict) or not {"name", "dtype", "shape"} <= raw.keys():
        raise BundleError(f"manifest {where} entries need name, dtype and shape; got {shorten(raw)}")
    if not isinstance(raw["name"], str) or not 0 < len(raw["name"]) <= _MAX_NAME:
        raise BundleError(f"manifest {where}.name must be a string of 1..{_MAX_NAME} characters, "
                          f"got {shorten(raw['name'])}")
    _choice("manifest", f"{where}.dtype", raw["dtype"], DTYPES)
    shape = raw["shape"]
    if not isinstance(shape, list) or len(shape) > _MAX_RANK:
        raise BundleError(f"manifest {where} shape must be a list of at most {_MAX_RANK} ints or axis names, "
                          f"got {shorten(shape)}")
    for dim in shape:
        ok = (isinstance(dim, int) and not isinstance(dim, bool) and 1 <= dim <= MAX_AXIS) or \
             (isinstance(dim, str) and _AXIS_NAME.fullmatch(dim))
        if not ok:
            raise BundleError(f"manifest {where} shape entries must be integers in 1..{MAX_AXIS} or axis names, "
                              f"got {shorten(dim)} in {shorten(shape)}")


def _axis_range(where: str, axis: Any, r: Any) -> None:
    if not _AXIS_NAME.fullmatch(str(axis)):
        raise BundleError(f"manifest {where}: axis name {shorten(axis)} is not a name")
    if not isinstance(r, dict) or not {"min", "opt", "max"} <= r.keys():
        raise BundleError(f"manifest {where} must be {{min, opt, max}}, got {shorten(r)}")
    for key in ("min", "opt", "max"):
        _int(f"manifest {where}", key, r[key], 1, MAX_AXIS)
    if not r["min"] <= r["opt"] <= r["max"]:
        raise BundleError(f"manifest {where} needs min <= opt <= max, got {r['min']}, {r['opt']}, {r['max']}")


def _require(section: Any, keys: tuple[str, ...], name: str, where: Any) -> None:
    if not isinstance(section, dict):
        raise BundleError(f"{where}: {name!r} must be an object, got {type(section).__name__}")
    missing = [k for k in keys if k not in section]
    if missing:
        raise BundleError(f"{where}: {name} is missing required key(s) {', '.join(missing)}")


def _int(where: Any, key: str, value: Any, lo: int, hi: int, lo_name: str | None = None) -> None:
    check_int(f"{where}: {key}", value, lo, hi, error=BundleError, low=lo_name)


def _number(where: Any, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise BundleError(f"{where}: {key} must be a finite number > 0, got {shorten(value)}")


def _bool(where: Any, key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise BundleError(f"{where}: {key} must be true or false, got {shorten(value)}")


def _text(where: Any, key: str, value: Any) -> None:
    if not isinstance(value, str) or len(value) > _MAX_NAME:
        raise BundleError(f"{where}: {key} must be a string of at most {_MAX_NAME} characters, got {shorten(value)}")


def _choice(where: Any, key: str, value: Any, choices: tuple[str, ...]) -> None:
    check_choice(f"{where}: {key}", value, choices, error=BundleError)
