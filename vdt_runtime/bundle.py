"""Read and validate a bundle folder (manifest.json + the files it lists); see docs/bundle-format.md."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vdt_runtime.errors import BundleError

FORMAT = "vdt-bundle"
FORMAT_VERSION = 1
STAGES = ("denoiser", "vae_encoder", "vae_decoder")
_TOP_KEYS = ("format", "format_version", "model", "diffusion", "vae", "image_size", "precision", "stages", "files")
_MODEL_KEYS = ("input_size", "patch_size", "in_channels", "num_frames", "learn_sigma", "max_frames")
_DIFFUSION_KEYS = ("beta_schedule", "num_timesteps", "prediction_type", "variance_type")
_VAE_KEYS = ("scale_factor", "downsample", "latent_channels")
_STAGE_KEYS = ("files", "inputs", "outputs", "dynamic_axes")


BUNDLES = Path(__file__).resolve().parent / "bundles"  # shipped in the wheel; in a checkout, links into engines/


def installed_bundles() -> dict[str, Path]:
    """Name -> folder of every bundle shipped with the package (`Bundle.load(name)` finds them by name)."""
    if not BUNDLES.is_dir():
        return {}
    return {p.name: p.resolve() for p in sorted(BUNDLES.iterdir()) if (p / "manifest.json").is_file()}


def default_bundle_path() -> Path:
    """The default bundle shipped with the package (engines/default in a checkout)."""
    return (BUNDLES / "default").resolve()


@dataclass(frozen=True)
class TensorSpec:
    """One declared stage input or output: name, dtype and shape (ints, or axis names for dynamic dims)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class Stage:
    """One model stage's I/O contract and its files per precision."""

    name: str
    files: dict[str, str]  # precision -> file name inside the bundle (standard ONNX operators)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_axes: dict[str, dict[str, int]]  # axis name -> {"min", "opt", "max"}
    fused: dict[str, str] = field(default_factory=dict)  # precision -> the same model with onnxruntime fused ops

    def axis_max(self, axis: str, default: int | None = None) -> int | None:
        """The declared maximum of a dynamic axis (e.g. "batch"), or `default` if undeclared."""
        return self.dynamic_axes.get(axis, {}).get("max", default)


class Bundle:
    """A validated bundle. Load with `Bundle.load(path)`; nothing in it is ever unpickled."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.stages = {name: _parse_stage(name, manifest["stages"][name]) for name in STAGES}

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify: bool = False) -> "Bundle":
        """Read `path/manifest.json` (path: a bundle folder, or an installed bundle's name such as "default"),
        validate it and the files it names; `verify` also checks every sha256."""
        path = Path(path)
        if not path.is_dir():
            installed = installed_bundles()
            if len(path.parts) != 1 or path.name not in installed:
                raise BundleError(f"bundle folder {str(path)!r} does not exist (expected a folder with manifest.json "
                                  f"or the name of an installed bundle: {', '.join(installed) or 'none'})")
            path = installed[path.name]
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise BundleError(f"bundle folder {str(path)!r} has no manifest.json")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise BundleError(f"{manifest_path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        except UnicodeDecodeError as e:
            raise BundleError(f"{manifest_path} is not UTF-8 text: {e}") from None
        _check_manifest(manifest, manifest_path)
        bundle = cls(path, manifest)
        bundle._check_files()
        if verify:
            bundle.verify()
        return bundle

    # --- config accessors -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def diffusion(self) -> dict[str, Any]:
        return self.manifest["diffusion"]

    @property
    def vae(self) -> dict[str, Any]:
        return self.manifest["vae"]

    @property
    def precision(self) -> str:
        """The default precision of the stages."""
        return self.manifest["precision"]

    @property
    def image_size(self) -> int:
        """Pixel height == width the bundle was exported for."""
        return int(self.manifest["image_size"])

    @property
    def max_frames(self) -> int:
        """The largest T the denoiser accepts."""
        return int(self.model["max_frames"])

    @property
    def num_frames(self) -> int:
        """The T the model was trained on (beyond it, up to max_frames, quality is not guaranteed)."""
        return int(self.model["num_frames"])

    @property
    def latent_channels(self) -> int:
        return int(self.vae["latent_channels"])

    @property
    def latent_size(self) -> int:
        """Latent height == width."""
        return int(self.model["input_size"])

    def latent_shape(self, frames: int) -> tuple[int, int, int, int]:
        """(T, C, h, w) of one video's latents."""
        return (frames, self.latent_channels, self.latent_size, self.latent_size)

    def stage(self, name: str) -> Stage:
        """The I/O contract of stage `name` (denoiser, vae_encoder, vae_decoder)."""
        if name not in self.stages:
            raise BundleError(f"unknown stage {name!r}; this bundle has {', '.join(self.stages)}")
        return self.stages[name]

    def precisions(self, stage: str) -> tuple[str, ...]:
        """Precisions stage `stage` has a file for."""
        return tuple(self.stage(stage).files)

    def file_path(self, stage: str, precision: str | None = None, *, fused: bool = False) -> Path:
        """The model file of `stage` at `precision` (default: the bundle's precision). With `fused`, the
        onnxruntime-fused graph of that precision when the bundle has one, else the standard file."""
        precision = precision or self.precision
        spec = self.stage(stage)
        if precision not in spec.files:
            raise BundleError(
                f"stage {stage!r} has no {precision!r} file; available precisions: {', '.join(spec.files)}"
            )
        return self.path / (spec.fused.get(precision) if fused and precision in spec.fused else spec.files[precision])

    # --- integrity ------------------------------------------------------------------------
    def _check_files(self) -> None:
        """Every stage file is listed in `files`, and every listed file exists with the listed size."""
        listed = self.manifest["files"]
        for stage in self.stages.values():
            for precision, fname in (*stage.files.items(), *stage.fused.items()):
                if fname not in listed:
                    raise BundleError(
                        f"stage {stage.name!r} ({precision}) uses {fname!r}, which is not listed in the manifest's files"
                    )
        for fname, entry in listed.items():
            _check_relative(fname)
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise BundleError(f"files[{fname!r}] must be an object with a 'sha256' string, got {entry!r}")
            fpath = self.path / fname
            if not fpath.is_file():
                raise BundleError(f"bundle file {fname!r} is listed in the manifest but missing from {str(self.path)!r}")
            size = entry.get("size")
            if size is not None and fpath.stat().st_size != size:
                raise BundleError(
                    f"bundle file {fname!r} has {fpath.stat().st_size} bytes; the manifest says {size}"
                )

    def verify(self) -> None:
        """Check every listed file's sha256; BundleError naming the file, expected and actual hash."""
        for fname, entry in self.manifest["files"].items():
            actual = sha256_file(self.path / fname)
            if actual != entry["sha256"].lower():
                raise BundleError(
                    f"bundle file {fname!r} fails its hash check: expected sha256 {entry['sha256']}, got {actual}"
                )

    # --- summary --------------------------------------------------------------------------
    def describe(self) -> str:
        """A readable multi-line summary: model dims, diffusion, VAE, stages and files."""
        m, d, v = self.model, self.diffusion, self.vae
        lines = [
            f"bundle     {self.name}  ({self.path})",
            f"format     {self.manifest['format']} v{self.manifest['format_version']}, "
            f"opset {self.manifest.get('opset', '?')}, precision {self.precision}",
            f"model      hidden {m.get('hidden_size', '?')}, depth {m.get('depth', '?')}, heads {m.get('num_heads', '?')}, "
            f"patch {m['patch_size']}, latent {m['in_channels']}x{m['input_size']}x{m['input_size']}, "
            f"frames {m['num_frames']} trained / {m['max_frames']} max, learn_sigma {m['learn_sigma']}",
            f"diffusion  {d['beta_schedule']} betas x{d['num_timesteps']}, prediction {d['prediction_type']}, "
            f"variance {d['variance_type']}",
            f"vae        scale {v['scale_factor']}, downsample /{v['downsample']}, {v['latent_channels']} latent channels, "
            f"image {self.image_size}x{self.image_size}",
        ]
        for stage in self.stages.values():
            ins = ", ".join(f"{s.name}{list(s.shape)}" for s in stage.inputs)
            outs = ", ".join(f"{s.name}{list(s.shape)}" for s in stage.outputs)
            axes = ", ".join(f"{a} {r.get('min')}..{r.get('max')}" for a, r in stage.dynamic_axes.items())
            fused = f"  fused {stage.fused}" if stage.fused else ""
            lines.append(f"stage      {stage.name}: {ins} -> {outs}  [{axes}]  files {stage.files}{fused}")
        for fname, entry in self.manifest["files"].items():
            lines.append(f"file       {fname}  {entry.get('size', '?')} bytes  sha256 {entry['sha256'][:16]}...")
        return "\n".join(lines)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_manifest(manifest: Any, where: Path) -> None:
    """Format name and version first, then required keys and their basic types."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{where} must hold a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{where}: format is {manifest.get('format')!r}; expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{where}: format_version {manifest.get('format_version')!r} is not supported; "
            f"this runtime supports format_version {FORMAT_VERSION}"
        )
    _require(manifest, _TOP_KEYS, "manifest", where)
    for section, keys in (("model", _MODEL_KEYS), ("diffusion", _DIFFUSION_KEYS), ("vae", _VAE_KEYS)):
        _require(manifest[section], keys, section, where)
    for section in ("stages", "files"):
        if not isinstance(manifest[section], dict):
            raise BundleError(f"{where}: {section!r} must be an object, got {type(manifest[section]).__name__}")
    _require(manifest["stages"], STAGES, "stages", where)
    for key in ("image_size",):
        if not _positive_int(manifest[key]):
            raise BundleError(f"{where}: {key} must be a positive integer, got {manifest[key]!r}")
    for key in ("input_size", "patch_size", "in_channels", "num_frames", "max_frames"):
        if not _positive_int(manifest["model"][key]):
            raise BundleError(f"{where}: model.{key} must be a positive integer, got {manifest['model'][key]!r}")
    m, v, d = manifest["model"], manifest["vae"], manifest["diffusion"]
    if (d["variance_type"] == "learned_range") != bool(m["learn_sigma"]):
        raise BundleError(
            f"{where}: diffusion.variance_type={d['variance_type']!r} needs model.learn_sigma="
            f"{d['variance_type'] == 'learned_range'}, got {m['learn_sigma']!r}"
        )
    if m["max_frames"] < m["num_frames"]:
        raise BundleError(f"{where}: model.max_frames={m['max_frames']} is below model.num_frames={m['num_frames']}")
    if v["latent_channels"] != m["in_channels"] or manifest["image_size"] != m["input_size"] * v["downsample"]:
        raise BundleError(
            f"{where}: VAE and denoiser disagree: vae.latent_channels={v['latent_channels']} vs "
            f"model.in_channels={m['in_channels']}, image_size={manifest['image_size']} vs "
            f"model.input_size*vae.downsample={m['input_size']}*{v['downsample']}"
        )


def _parse_stage(name: str, raw: Any) -> Stage:
    where = f"stages.{name}"
    if not isinstance(raw, dict):
        raise BundleError(f"manifest {where} must be an object, got {type(raw).__name__}")
    _require(raw, _STAGE_KEYS, where, "manifest")
    if not isinstance(raw["files"], dict) or not raw["files"]:
        raise BundleError(f"manifest {where}.files must map precision -> file name, got {raw['files']!r}")
    fused = raw.get("fused", {})
    if not isinstance(fused, dict) or not set(fused) <= set(raw["files"]):
        raise BundleError(f"manifest {where}.fused must map precisions that {where}.files has -> file name, "
                          f"got {fused!r} (files: {sorted(raw['files'])})")
    for key in ("inputs", "outputs"):
        if not isinstance(raw[key], list) or not raw[key]:
            raise BundleError(f"manifest {where}.{key} must be a non-empty list of tensor specs, got {raw[key]!r}")
    axes = raw["dynamic_axes"]
    if not isinstance(axes, dict) or not all(isinstance(v, dict) for v in axes.values()):
        raise BundleError(f"manifest {where}.dynamic_axes must map axis -> {{min, opt, max}}, got {axes!r}")
    return Stage(
        name=name,
        files={str(k): str(v) for k, v in raw["files"].items()},
        inputs=tuple(_parse_spec(f"{where}.inputs", s) for s in raw["inputs"]),
        outputs=tuple(_parse_spec(f"{where}.outputs", s) for s in raw["outputs"]),
        dynamic_axes={str(k): dict(v) for k, v in raw["dynamic_axes"].items()},
        fused={str(k): str(v) for k, v in fused.items()},
    )


def _parse_spec(where: str, raw: Any) -> TensorSpec:
    if not isinstance(raw, dict) or not {"name", "dtype", "shape"} <= raw.keys():
        raise BundleError(f"manifest {where} entries need name, dtype and shape; got {raw!r}")
    if not isinstance(raw["shape"], list):
        raise BundleError(f"manifest {where} shape must be a list of ints or axis names, got {raw['shape']!r}")
    return TensorSpec(name=str(raw["name"]), dtype=str(raw["dtype"]), shape=tuple(raw["shape"]))


def _require(section: Any, keys: tuple[str, ...], name: str, where: Any) -> None:
    if not isinstance(section, dict):
        raise BundleError(f"{where}: {name!r} must be an object, got {type(section).__name__}")
    missing = [k for k in keys if k not in section]
    if missing:
        raise BundleError(f"{where}: {name} is missing required key(s) {', '.join(missing)}")


def _check_relative(fname: str) -> None:
    """File names stay inside the bundle folder."""
    p = PurePosixPath(fname)
    if p.is_absolute() or ".." in p.parts or "\\" in fname:
        raise BundleError(f"bundle file name {fname!r} must be a relative path inside the bundle folder")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
