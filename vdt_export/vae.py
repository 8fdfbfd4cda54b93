"""The Stable-Diffusion AutoencoderKL (diffusers) as bundle stages: encode/decode wrappers and its shape facts
(loading one, or a tiny test config, is vdt_export.sources)."""
from __future__ import annotations

import torch
import torch.nn as nn

SD_SCALE_FACTOR = 0.18215


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
