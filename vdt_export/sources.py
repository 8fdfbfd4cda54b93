"""Where an export's models come from: checkpoint folders (the torch twin of a bundle), the VAE (a diffusers folder,
a weights file + config, or the tiny test config) and randomly initialised weights, and, for commands that
amend an existing bundle, the models that bundle was exported from."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from vdt_runtime._atomic import atomic_path

from .checkpoint import CheckpointError, load_checked_, load_state_dict, load_vdt, save_state_dict
from .models import VDT, VDTConfig

TINY = "tiny"  # --vae-config value: the tiny test VAE, random weights


def tiny_vae_config() -> dict:
    """A 2-level (/2) AutoencoderKL with 4 latent channels: small enough for tests on a CPU."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def build_vae(config: Mapping) -> nn.Module:
    """A freshly initialised AutoencoderKL from a config dict, in eval mode."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**dict(config)).eval()


def read_vae_config(config: Mapping | str | os.PathLike) -> dict:
    """A VAE config dict from a dict, a config.json, or its folder (keys starting with "_" dropped)."""
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise CheckpointError(f"VAE config {str(path)!r} does not exist")
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def load_vae(path: str | os.PathLike, config: Mapping | str | os.PathLike | None = None) -> nn.Module:
    """AutoencoderKL from a diffusers folder (local only; a `vae/` subfolder is found) or a state_dict file + config."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if path.is_dir():
        sub = "vae" if (path / "vae" / "config.json").is_file() else None
        if sub is None and not (path / "config.json").is_file():
            raise CheckpointError(f"VAE folder {str(path)!r} has no config.json (nor vae/config.json)")
        return AutoencoderKL.from_pretrained(str(path), subfolder=sub, local_files_only=True).eval()
    if config is None:
        raise CheckpointError(f"VAE weights file {path.name!r} needs a config (a dict, config.json or its folder)")
    vae = build_vae(read_vae_config(config))
    return load_checked_(vae, load_state_dict(path), f"the VAE config (diffusers key names) for {path.name!r}")


def save_checkpoint_folder(folder: str | os.PathLike, vdt: VDT, vae: nn.Module, *, scale_factor: float,
                           diffusion: Mapping, training: Mapping | None = None) -> Path:
    """The torch twin of a bundle: vdt.safetensors, vae.safetensors, vdt_config.json, vae_config.json,
    scale.json ({"scale_factor", "diffusion"}) and, if given, training.json (the manifest's provenance); the PyTorch
    reference benchmark and `vdt-export onnx --checkpoint FOLDER` load exactly this (load_checkpoint_folder)."""
    folder = Path(folder)
    save_state_dict(vdt, folder / "vdt.safetensors")
    save_state_dict(vae, folder / "vae.safetensors")
    vae_config = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(vae.config).items() if not k.startswith("_")}
    blobs = [("vdt_config.json", vdt.config.to_dict()), ("vae_config.json", vae_config),
             ("scale.json", {"scale_factor": float(scale_factor), "diffusion": dict(diffusion)})]
    if training is not None:
        blobs.append(("training.json", dict(training)))
    for name, blob in blobs:
        with atomic_path(folder / name) as tmp:
            tmp.write_text(json.dumps(blob, indent=1) + "\n", encoding="utf-8")
    return folder


@dataclass
class CheckpointFolder:
    """What save_checkpoint_folder wrote: both models, the latent scale, the diffusion config, the provenance."""

    vdt: VDT
    vae: nn.Module
    scale_factor: float
    diffusion: dict
    training: dict


def load_checkpoint_folder(folder: str | os.PathLike, *, max_frames: int | None = None) -> CheckpointFolder:
    """Read a folder written by save_checkpoint_folder (e.g. checkpoints/default); CheckpointError if incomplete."""
    folder = Path(folder)
    missing = [n for n in ("vdt.safetensors", "vae.safetensors", "vdt_config.json", "vae_config.json", "scale.json")
               if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint folder {str(folder)!r} lacks {', '.join(missing)} "
                              f"(expected a folder written by save_checkpoint_folder)")
    meta = json.loads((folder / "scale.json").read_text(encoding="utf-8"))
    heads = json.loads((folder / "vdt_config.json").read_text(encoding="utf-8"))["num_heads"]
    training = folder / "training.json"
    return CheckpointFolder(
        vdt=load_vdt(folder / "vdt.safetensors", num_heads=heads, max_frames=max_frames),
        vae=load_vae(folder / "vae.safetensors", folder / "vae_config.json"),
        scale_factor=float(meta["scale_factor"]), diffusion=dict(meta["diffusion"]),
        training=json.loads(training.read_text(encoding="utf-8")) if training.is_file() else {},
    )


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Overwrite every trainable parameter with seeded noise so no layer is zero (parity tests, benchmarks).

    Weights get N(0, 1/fan_in) (variance preserving); norm scales 1 + N(0, std²); biases N(0, std²).
    Frozen tables (pos_embed, time_embed: fixed sin-cos) are left as they are.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
        if param.ndim >= 2:
            value = noise / math.sqrt(param[0].numel())
        elif name.endswith("weight"):
            value = 1.0 + std * noise
        else:
            value = std * noise
        param.copy_(value)
    return module


def random_vdt(config: VDTConfig, max_frames: int | None, seed: int) -> VDT:
    """A VDT of `config` with randomised weights from `seed` (randomize_), in eval mode."""
    return randomize_(VDT(config, max_frames=max_frames), seed).eval()


def vae_source(vae: str | os.PathLike | None, vae_config: Mapping | str | os.PathLike | None, seed: int):
    """The VAE a command names: `vae` (a diffusers folder, or a weights file with `vae_config`), else a random VAE
    of `vae_config` (TINY: the test config) from `seed`, else None."""
    config = tiny_vae_config() if vae_config == TINY else vae_config
    if vae is not None:
        return load_vae(vae, config)
    if config is not None:
        return randomize_(build_vae(read_vae_config(config)), seed)
    return None


def bundle_models(model: Mapping, *, checkpoint: Path | None, random_init: int | None, vae=None,
                  vae_config=None) -> tuple[VDT, nn.Module | None]:
    """(vdt, vae or None) for an existing bundle whose manifest "model" section is `model`: its checkpoint (file
    or folder), or the random model it was exported from (seed `random_init`)."""
    model = dict(model)
    max_frames = model.pop("max_frames")
    if random_init is not None:
        return random_vdt(VDTConfig(**model), max_frames, random_init), vae_source(vae, vae_config, random_init + 1)
    if checkpoint.is_dir():
        folder = load_checkpoint_folder(checkpoint, max_frames=max_frames)
        return folder.vdt, vae_source(vae, vae_config, 1) or folder.vae
    return (load_vdt(checkpoint, max_frames=max_frames, interpolate_pos_embed=True, **model),
            vae_source(vae, vae_config, 1))
