"""Read and validate a bundle folder (manifest.json + the files it lists); see docs/bundle-format.md."""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vdt_runtime.bundle._manifest import FORMAT, FORMAT_VERSION, STAGES, check_manifest, check_relative, \
    check_stage, read_manifest
from vdt_runtime.bundle._onnx_graph import ValueInfo, read_graph_info
from vdt_runtime.errors import BundleError
from vdt_runtime.limits import shorten
from vdt_runtime.settings import DEFAULT_SAMPLING, Sampling

__all__ = ["FORMAT", "FORMAT_VERSION", "STAGES", "Bundle", "Stage", "TensorSpec", "check_io", "default_bundle_path",
           "sha256_file"]
_SCALED_AXIS = re.compile(r"(\d+)\*([A-Za-z_]\w*)")  # how torch.export names a dim k·x, e.g. "2*latent_height"


BUNDLES = Path(__file__).resolve().parents[1] / "bundles"  # shipped in the wheel; in a checkout, links into engines/


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
    def load(cls, path: str | os.PathLike | None = None, *, verify: bool = False) -> "Bundle":
        """Read `path/manifest.json` (path: a bundle folder, or an installed bundle's name such as "default"; None:
        the default bundle) and validate it, the files it names and what their ONNX graphs state, before any
        backend opens a file; `verify` also checks every listed file's sha256 (external data included)."""
        path = default_bundle_path() if path is None else Path(path)
        if not path.is_dir():
            installed = installed_bundles()
            if len(path.parts) != 1 or path.name not in installed:
                raise BundleError(f"bundle folder {shorten(str(path))} does not exist (expected a folder with manifest.json "
                                  f"or the name of an installed bundle: {', '.join(installed) or 'none'})")
            path = installed[path.name]
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise BundleError(f"bundle folder {shorten(str(path))} has no manifest.json")
        manifest = read_manifest(manifest_path)
        check_manifest(manifest, manifest_path)
        for name in STAGES:
            check_stage(name, manifest["stages"][name], manifest)
        bundle = cls(path, manifest)
        bundle._check_files()
        if verify:
            bundle.verify()
        bundle._check_graphs()
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
    def recommended_sampling(self) -> Sampling | None:
        """The sampler, steps and η the manifest recommends (its "sampling" section), or None."""
        raw = self.manifest.get("sampling")
        return None if raw is None else Sampling(raw["sampler"], int(raw["steps"]), float(raw.get("eta", 0.0)))

    @property
    def sampling(self) -> Sampling:
        """What a call that names no sampler runs: the recommendation, else the runtime's DEFAULT_SAMPLING."""
        return self.recommended_sampling or DEFAULT_SAMPLING

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
        """Every stage file is listed in `files`; every listed file is a regular file inside the bundle folder
        (a symlink may point only inside it) with the listed size."""
        listed = self.manifest["files"]
        for stage in self.stages.values():
            for precision, fname in (*stage.files.items(), *stage.fused.items()):
                if fname not in listed:
                    raise BundleError(f"stage {stage.name!r} ({precision}) uses {shorten(fname)}, which is not listed "
                                      "in the manifest's files")
        root = self.path.resolve()
        for fname, entry in listed.items():
            fpath = self.path / check_relative(fname)
            real = fpath.resolve()
            if root not in real.parents:
                raise BundleError(f"bundle file {shorten(fname)} resolves to {shorten(str(real))}, outside the bundle "
                                  "folder (symlinks may point only inside it)")
            if not real.is_file():
                raise BundleError(f"bundle file {shorten(fname)} is listed in the manifest but missing from "
                                  f"{shorten(str(self.path))}" + (" (not a regular file)" if real.exists() else ""))
            size = entry.get("size")
            if size is not None and real.stat().st_size != size:
                raise BundleError(f"bundle file {shorten(fname)} has {real.stat().st_size} bytes; the manifest says {size}")

    def verify(self) -> None:
        """Check every listed file's sha256 (each once, external data included); BundleError naming the file,
        expected and actual hash."""
        for fname, entry in self.manifest["files"].items():
            actual = sha256_file(self.path / fname)
            if actual != entry["sha256"].lower():
                raise BundleError(
                    f"bundle file {fname!r} fails its hash check: expected sha256 {entry['sha256']}, got {actual}"
                )

    def _check_graphs(self) -> None:
        """Each stage file's ONNX graph (read without a backend) against the manifest: every external data file
        it points to is listed (so verify covers it); input/output names, types and dims; the frames it states."""
        for stage in self.stages.values():
            for _, fname in (*stage.files.items(), *stage.fused.items()):
                info = read_graph_info(self.path / fname)
                self._check_external(fname, info.external)
                for kind, declared, actual in (("inputs", stage.inputs, info.inputs),
                                               ("outputs", stage.outputs, info.outputs)):
                    check_io(stage.name, fname, kind, declared, [(a.name, a.dtype) for a in actual])
                    for spec, value in zip(declared, actual):
                        self._check_dims(stage, fname, spec, value)
                stated = info.metadata.get("vdt.max_frames")
                if stage.name == "denoiser" and stated is not None and stated != str(self.max_frames):
                    raise BundleError(f"stage 'denoiser': {fname} states max_frames {shorten(stated)}; the manifest's "
                                      f"model.max_frames is {self.max_frames}")

    def _check_external(self, fname: str, locations: set[str]) -> None:
        for location in sorted(locations):
            try:
                check_relative(location)
            except BundleError:
                raise BundleError(f"{fname} keeps tensor data in {shorten(location)}, outside the bundle folder") from None
            name = _data_name(fname, location)
            if name not in self.manifest["files"]:
                raise BundleError(f"{fname} keeps tensor data in {shorten(name)}, which the manifest's files do not "
                                  "list (so it could not be verified)")

    def content_sha256(self, fname: str) -> str:
        """What a stage file's graph computes, as one digest: the file's listed sha256 alone for a self-contained
        ONNX, else sha256 over it and the listed sha256 of every external data file it reads (weights shared by two
        graphs change the result without changing either .onnx file)."""
        files = self.manifest["files"]
        data = sorted(_data_name(fname, loc) for loc in read_graph_info(self.path / fname).external)
        if not data:
            return files[fname]["sha256"]
        blob = json.dumps([[name, files[name]["sha256"]] for name in [fname, *data]])
        return hashlib.sha256(blob.encode()).hexdigest()

    def _check_dims(self, stage: Stage, fname: str, spec: TensorSpec, value: ValueInfo) -> None:
        """Fixed dims equal; a dim the graph fixes is not declared dynamic; a k*x pixel dim has k = vae.downsample."""
        what = f"stage {stage.name!r}: {fname} tensor {spec.name!r}"
        if len(value.dims) != len(spec.shape):
            raise BundleError(f"{what} has rank {len(value.dims)}; the manifest says {len(spec.shape)} "
                              f"({shorten(list(spec.shape))})")
        f = self.vae["downsample"]
        for j, (declared, graph) in enumerate(zip(spec.shape, value.dims)):
            if isinstance(declared, int) and isinstance(graph, int) and declared != graph:
                raise BundleError(f"{what} dim {j} is {graph}; the manifest says {declared}")
            r = stage.dynamic_axes.get(declared) if isinstance(declared, str) else None
            if isinstance(graph, int) and r is not None and (r["min"], r["max"]) != (graph, graph):
                raise BundleError(f"{what} dim {j} is fixed at {graph}; the manifest declares axis {declared!r} "
                                  f"{r['min']}..{r['max']}")
            scaled = _SCALED_AXIS.fullmatch(graph) if isinstance(graph, str) else None
            if scaled and stage.name != "denoiser" and int(scaled[1]) != f:
                raise BundleError(f"{what} dim {j} is {graph!r} (downsample {scaled[1]}); the manifest's "
                                  f"vae.downsample is {f}")

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
        rec = self.recommended_sampling
        lines.append(f"sampling   {rec} (recommended by the manifest)" if rec is not None else
                     f"sampling   {DEFAULT_SAMPLING} (runtime default; the manifest recommends none)")
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


def check_io(stage: str, fname: str, kind: str, declared: tuple[TensorSpec, ...], got: list[tuple[str, str]]) -> None:
    """A model file's real (name, dtype) inputs or outputs must be the manifest's (at load from the graph's
    bytes, and again by each backend from what it really loaded)."""
    want = [(s.name, s.dtype) for s in declared]
    if want != got:
        raise BundleError(f"stage {stage!r}: {fname} has {kind} {shorten(got, 300)}, but the manifest declares "
                          f"{shorten(want, 300)}")


def _parse_stage(name: str, raw: dict) -> Stage:
    """A Stage from its manifest entry (already checked by _manifest.check_stage)."""
    return Stage(
        name=name,
        files=dict(raw["files"]),
        inputs=tuple(TensorSpec(s["name"], s["dtype"], tuple(s["shape"])) for s in raw["inputs"]),
        outputs=tuple(TensorSpec(s["name"], s["dtype"], tuple(s["shape"])) for s in raw["outputs"]),
        dynamic_axes={k: dict(v) for k, v in raw["dynamic_axes"].items()},
        fused=dict(raw.get("fused", {})),
    )


def _data_name(fname: str, location: str) -> str:
    """The bundle-relative name of an external data `location` that ONNX file `fname` refers to."""
    return (PurePosixPath(fname).parent / location).as_posix()
