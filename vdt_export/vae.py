"""The Stable-Diffusion AutoencoderKL (diffusers): loading, a tiny test config, encode/decode wrappers."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, load_checked_, load_state_dict

SD_SCALE_FACTOR = 0.18215


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


def downsample_factor(vae: nn.Module) -> int:
    """Pixel size / latent size: 2 per down block after the first."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_channels(vae: nn.Module) -> int:
    return int(vae.config.latent_channels)


class VAEEncoder(nn.Module):
    """images [B, 3, H, W] in [-1, 1] → posterior mean × scale_factor [B, C, H/f, W/f] (deterministic)."""

    def __init__(self, vae: nn.Module, scale_factor: float = SD_SCALE_FACTOR):
        super().__init__()
        self.vae, self.scale_factor = vae, float(scale_factor)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        moments = self.vae.encoder(images)  # (B, 2C, h, w): mean and log-variance
        if self.vae.quant_conv is not None:
            moments = self.vae.quant_conv(moments)
        mean = moments[:, : self.vae.config.latent_channels]
        return mean * self.scale_factor


class VAEDecoder(nn.Module):
    """scaled latents [B, C, h, w] → images [B, 3, h·f, w·f] in about [-1, 1]."""

    def __init__(self, vae: nn.Module, scale_factor: float = SD_SCALE_FACTOR):
        super().__init__()
        self.vae, self.scale_factor = vae, float(scale_factor)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scale_factor, return_dict=False)[0]
