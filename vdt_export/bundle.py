"""Bundle writer: the three ONNX stages plus manifest.json, built beside the target and renamed into place."""
from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import onnx
import torch
import torch.nn as nn

from vdt_runtime._atomic import atomic_dir, atomic_path
from vdt_runtime.bundle import Bundle, _manifest
from vdt_runtime.bundle import sha256_file as hash_file  # re-exported: one hashing routine for both sides
from vdt_runtime.bundle._manifest import FORMAT, FORMAT_VERSION
from vdt_runtime.errors import BundleError, InputError
from vdt_runtime.settings import PREDICTION_TYPES, VARIANCE_TYPES, check_sampling

from . import __version__
from .models import VDT
from .onnx_export import OPSET, export_denoiser, export_vae_decoder, export_vae_encoder
from .shared_weights import share_weights
from .vae import SD_SCALE_FACTOR, downsample_factor, latent_channels

MANIFEST = "manifest.json"
STAGE_FILES = {"denoiser": "denoiser.onnx", "vae_encoder": "vae_encoder.onnx", "vae_decoder": "vae_decoder.onnx"}
FUSED_FILE = "denoiser.fused.onnx"  # the same denoiser with onnxruntime's fused Attention (fused_attention.py)
DENOISER_DATA = "denoiser.data"  # the weights of both denoiser graphs, each tensor once (shared_weights.py)
VAE_MAX_BATCH = 64


def external_data_files(onnx_path: str | os.PathLike) -> list[str]:
    """Names (relative to the model's folder) of the external data files an .onnx refers to."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    names = {entry.value for init in model.graph.initializer
             if init.data_location == onnx.TensorProto.EXTERNAL
             for entry in init.external_data if entry.key == "location"}
    return sorted(names)


def stamp_max_frames(onnx_path: str | os.PathLike, max_frames: int) -> None:
    """Record in the graph itself (metadata_props "vdt.max_frames") the longest T its time table covers: the
    one number of the frames axis an ONNX graph cannot state in its dims. The runtime holds the manifest's
    model.max_frames against it at load."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        "vdt.max_frames": str(max_frames)})
    onnx.save_model(model, str(onnx_path))


def bundle_owned(bundle_dir: str | os.PathLike):
    """The test atomic_dir applies to an existing folder at `bundle_dir` before replacing it: each entry must be
    the manifest or a file its manifest lists (a folder holding anything else is never replaced)."""
    try:
        listed = {PurePosixPath(name).parts[0] for name in read_manifest(bundle_dir).get("files", {})}
    except (BundleError, OSError, ValueError, AttributeError):
        listed = set()
    return lambda entry: entry.name == MANIFEST or entry.name in listed


def check_out_dir(out_dir: Path) -> None:
    """A new bundle's folder must not lie inside another bundle: that bundle would then hold files its manifest
    does not list (and replacing a folder of it could take its files)."""
    for parent in out_dir.resolve().parents:
        if (parent / MANIFEST).is_file():
            raise InputError(f"bundle folder {str(out_dir)!r} lies inside bundle {str(parent)!r}; write a bundle "
                             "beside other bundles, not inside one")


def read_manifest(bundle_dir: str | os.PathLike) -> dict:
    """The raw manifest.json of a bundle folder, for tools that amend it (verify, quantize), read by the runtime's
    bounded reader (size cap, UTF-8 JSON object, typed errors)."""
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(f"no {MANIFEST} in {str(bundle_dir)!r}; is it a bundle folder?")
    return _manifest.read_manifest(path)


def amend_manifest(bundle_dir: str | os.PathLike) -> dict:
    """The manifest of an existing bundle a command is about to add files to (quantize, fp16): loaded as the runtime
    loads it, every listed file's sha256 checked first, so a command never builds on, nor re-lists, a file that
    is not what the manifest says. A copy: the caller edits it and hands it to write_manifest."""
    return copy.deepcopy(Bundle.load(bundle_dir, verify=True).manifest)


def write_manifest(bundle_dir: str | os.PathLike, manifest: dict, *, written=frozenset()) -> Path:
    """Fill manifest["files"] and write manifest.json atomically. Hashed from disk: every file the manifest does
    not list yet (all of them for a new bundle) and the files named in `written` (this command wrote them) with
    their external data; a file already listed keeps its entry, never re-hashed from what is on disk now."""
    bundle_dir = Path(bundle_dir)
    files = dict(manifest.get("files", {}))
    names = {manifest["golden"]["file"]} if "golden" in manifest else set()
    for stage in manifest["stages"].values():
        for name in (*stage["files"].values(), *stage.get("fused", {}).values()):
            names.add(name)
            names.update(external_data_files(bundle_dir / name) if name.endswith(".onnx") else ())
    for name in sorted(name for name in names | set(written) if name not in files or name in written):
        path = bundle_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"bundle file {name!r} listed in the manifest is missing from {bundle_dir}")
        files[name] = {"sha256": hash_file(path), "size": path.stat().st_size}
    manifest["files"] = dict(sorted(files.items()))
    with atomic_path(bundle_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return bundle_dir / MANIFEST


def set_golden(bundle_dir: str | os.PathLike, manifest: dict, section: dict | None, *, written=frozenset()) -> None:
    """Record a "golden" section (vdt_export.golden: golden.npz and its tolerances) in the bundle's manifest and
    rewrite it (golden.npz listed and hashed); None leaves a bundle without golden cases as it is."""
    if section is not None:
        manifest["golden"] = section
        write_manifest(bundle_dir, manifest, written=written)


def refresh_golden(bundle_dir: str | os.PathLike, manifest: dict) -> None:
    """After a stage file was added (quantize, fp16): re-measure the tolerances of the bundle's golden cases, if
    it has any, so the new precision has its own."""
    if "golden" in manifest:
        from .golden import remeasure

        set_golden(bundle_dir, manifest, remeasure(bundle_dir))


def diffusion_config(learn_sigma: bool, diffusion: Mapping | None = None) -> dict:
    """The manifest's diffusion section: defaults (linear, 1000, epsilon, variance from learn_sigma) + overrides."""
    out = {"beta_schedule": "linear", "num_timesteps": 1000, "prediction_type": "epsilon",
           "variance_type": "learned_range" if learn_sigma else "fixed_small", **(diffusion or {})}
    if out["prediction_type"] not in PREDICTION_TYPES:
        raise InputError(f"prediction_type={out['prediction_type']!r}; allowed: {PREDICTION_TYPES}")
    if out["variance_type"] not in VARIANCE_TYPES:
        raise InputError(f"variance_type={out['variance_type']!r}; allowed: {VARIANCE_TYPES}")
    if (out["variance_type"] == "learned_range") != learn_sigma:
        raise InputError(f"variance_type={out['variance_type']!r} does not fit a model with learn_sigma={learn_sigma} "
                         f"(learned_range needs 2C output channels, fixed_small needs C)")
    return out


def _io(name: str, shape: list) -> dict:
    return {"name": name, "dtype": "float32", "shape": shape}


def _axis(lo: int, opt: int, hi: int) -> dict:
    return {"min": lo, "opt": opt, "max": hi}


def build_manifest(vdt: VDT, vae: nn.Module, *, name: str, image_size: int, scale_factor: float,
                   diffusion: dict, max_batch: int, training: Mapping | None) -> dict:
    """The manifest (without "files") for a bundle of `vdt` + `vae`, as docs/bundle-format.md lays it out."""
    cfg, f, c = vdt.config, downsample_factor(vae), latent_channels(vae)
    hw, out_c = cfg.input_size, cfg.out_channels
    latent = ["batch", c, "latent_height", "latent_width"]
    vae_axes = {"batch": _axis(1, min(16, VAE_MAX_BATCH), VAE_MAX_BATCH)}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {**cfg.to_dict(), "max_frames": vdt.max_frames},
        "diffusion": diffusion,
        "vae": {"scale_factor": float(scale_factor), "downsample": f, "latent_channels": c},
        "image_size": image_size,
        "precision": "fp32",
        "stages": {
            "denoiser": {
                "files": {"fp32": STAGE_FILES["denoiser"]},
                "inputs": [_io("latents", ["batch", "frames", cfg.in_channels, hw, hw]), _io("timestep", ["batch"])],
                "outputs": [_io("model_out", ["batch", "frames", out_c, hw, hw])],
                "dynamic_axes": {"batch": _axis(1, 1, max_batch),
                                 "frames": _axis(1, cfg.num_frames, vdt.max_frames)},
            },
            "vae_encoder": {
                "files": {"fp32": STAGE_FILES["vae_encoder"]},
                "inputs": [_io("images", ["batch", 3, "height", "width"])],
                "outputs": [_io("latents", latent)],
                "dynamic_axes": {**vae_axes, "height": _axis(f, image_size, image_size),
                                 "width": _axis(f, image_size, image_size)},
            },
            "vae_decoder": {
                "files": {"fp32": STAGE_FILES["vae_decoder"]},
                "inputs": [_io("latents", latent)],
                "outputs": [_io("images", ["batch", 3, "height", "width"])],
                "dynamic_axes": {**vae_axes, "latent_height": _axis(1, hw, hw), "latent_width": _axis(1, hw, hw)},
            },
        },
        "files": {},
        "opset": OPSET,
        "exporter": {"vdt_export": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
        "training": dict(training or {}),
    }


def _with_max_frames(vdt: VDT, max_frames: int | None) -> VDT:
    """`vdt` itself, or a copy whose sin-cos time table reaches `max_frames` (the caller's model is not changed)."""
    if max_frames is None or max_frames == vdt.max_frames:
        return vdt
    if max_frames < vdt.config.num_frames:
        raise InputError(f"max_frames={max_frames} is below the trained num_frames={vdt.config.num_frames}")
    copy = VDT(vdt.config, max_frames=max_frames)
    copy.load_state_dict(vdt.state_dict())
    return copy.eval()


def recommended_sampling(sampling: Mapping, diffusion: Mapping) -> dict:
    """The manifest's optional "sampling" section: the sampler, steps and η a call that names none runs, checked
    as the runtime checks it (plus an optional free-text "note", e.g. the eval that chose it)."""
    extra = set(sampling) - {"sampler", "steps", "eta", "note"}
    if extra:
        raise InputError(f"sampling has unknown key(s) {sorted(extra)}; allowed: sampler, steps, eta, note")
    choice = check_sampling(sampling.get("sampler"), sampling.get("steps"), sampling.get("eta", 0.0),
                            diffusion["num_timesteps"])
    out = choice._asdict()
    if sampling.get("note"):
        out["note"] = str(sampling["note"])
    return out


def export_bundle(vdt: VDT, vae: nn.Module, out_dir: str | os.PathLike, *, name: str, image_size: int,
                  scale_factor: float = SD_SCALE_FACTOR, diffusion: Mapping | None = None,
                  max_frames: int | None = None, max_batch: int = 16, training: Mapping | None = None,
                  sampling: Mapping | None = None, fused: bool = True, golden: bool = True,
                  verbose: bool = False) -> Path:
    """Export denoiser + VAE encoder/decoder + manifest.json into `out_dir`; an existing bundle there is replaced
    only once the new one is complete. `fused` adds the onnxruntime-fused denoiser graph beside the portable one
    (stages.denoiser.fused); the denoiser graphs keep their weights in one shared file, DENOISER_DATA.
    `sampling` ({"sampler", "steps", "eta"?, "note"?}) is the bundle's recommended sampler. `golden` adds the
    golden cases and their measured tolerances (vdt_export.golden; what `vdt selftest` replays). Returns `out_dir`."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    f = downsample_factor(vae)
    if image_size != vdt.config.input_size * f:
        raise InputError(f"image_size={image_size} does not fit the model: input_size {vdt.config.input_size} × "
                         f"VAE downsample {f} = {vdt.config.input_size * f}")
    if latent_channels(vae) != vdt.config.in_channels:
        raise InputError(f"VAE has {latent_channels(vae)} latent channels but the VDT takes {vdt.config.in_channels}")
    if max_batch < 1:
        raise InputError(f"max_batch={max_batch}; must be ≥ 1")
    vdt = _with_max_frames(vdt, max_frames)
    manifest = build_manifest(vdt, vae, name=name, image_size=image_size, scale_factor=scale_factor,
                              diffusion=diffusion_config(vdt.config.learn_sigma, diffusion), max_batch=max_batch,
                              training=training)
    if sampling is not None:
        manifest["sampling"] = recommended_sampling(sampling, manifest["diffusion"])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # an old bundle at out_dir is replaced only once this one is complete, and only if it holds nothing else
    with atomic_dir(out_dir, bundle_owned(out_dir), "bundle folder") as staging:
        graphs = [export_denoiser(vdt, staging / STAGE_FILES["denoiser"], max_batch=max_batch, verbose=verbose)]
        if fused:
            graphs.append(export_denoiser(vdt, staging / FUSED_FILE, max_batch=max_batch, verbose=verbose, fused=True))
            manifest["stages"]["denoiser"]["fused"] = {"fp32": FUSED_FILE}
        share_weights(graphs, DENOISER_DATA)
        for graph in graphs:
            stamp_max_frames(graph, vdt.max_frames)
        export_vae_encoder(vae, staging / STAGE_FILES["vae_encoder"], image_size=image_size,
                           scale_factor=scale_factor, verbose=verbose)
        export_vae_decoder(vae, staging / STAGE_FILES["vae_decoder"], image_size=image_size,
                           scale_factor=scale_factor, verbose=verbose)
        write_manifest(staging, manifest)
        if golden:
            from .golden import make_golden

            manifest["golden"] = make_golden(Bundle.load(staging), vdt, vae)  # its files: hashed just above
            write_manifest(staging, manifest)
    return out_dir
