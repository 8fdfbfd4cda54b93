"""The PyTorch eager reference pipeline, as a user of the original VDT code runs it (fp32, no_grad, default threads).

diffusers VAE encode (posterior mean × scale) → respaced DDPM in torch (guided-diffusion style: epsilon +
learned-range variance, or v-prediction + fixed_small), with x_in = x_given·(1−m) + x_t·m before every call →
VAE decode. It does the same work as `vdt_runtime.Pipeline.predict`: encode the given frames, T denoiser calls
per step of batch B, decode the generated frames. Its random numbers are torch's, so outputs differ from the
runtime's in detail, not in cost.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch


def with_sdpa(vdt):
    """A copy of `vdt` whose attentions call F.scaled_dot_product_attention, as the original code does through
    timm's Attention with fused_attn (timm ≥ 0.9). Same maths as vdt_export.models.Attention."""
    import copy
    import types

    from vdt_export.models import Attention, sdpa_attention

    def forward(self, x):  # x [B, X, L, D]
        out = sdpa_attention(x.flatten(0, 1), self.qkv.weight, self.qkv.bias, self.num_heads)
        return self.proj(out.unflatten(0, x.shape[:2]))

    fast = copy.deepcopy(vdt)
    for m in fast.modules():
        if isinstance(m, Attention):
            m.forward = types.MethodType(forward, m)
    return fast


class TorchDDPM:
    """Respaced linear-beta DDPM (float64 coefficients, float32 state), as in guided-diffusion's SpacedDiffusion."""

    def __init__(self, steps: int, *, num_timesteps: int = 1000, prediction_type: str = "epsilon",
                 variance_type: str = "learned_range"):
        scale = 1000.0 / num_timesteps
        full = torch.cumprod(1 - torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64), 0)
        if steps == 1:
            kept = [num_timesteps - 1]
        else:
            stride, cur, kept = (num_timesteps - 1) / (steps - 1), 0.0, []
            for _ in range(steps):
                kept.append(round(cur))
                cur += stride
        self.timesteps = torch.tensor(kept)
        ac = full[self.timesteps]
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        self.betas = 1 - ac / ac_prev
        self.ac = ac
        post_var = self.betas * (1 - ac_prev) / (1 - ac)
        self.log_var_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if steps > 1 else self.betas.log()
        self.coef1 = self.betas * ac_prev.sqrt() / (1 - ac)
        self.coef2 = (1 - ac_prev) * (1 - self.betas).sqrt() / (1 - ac)
        self.prediction_type, self.variance_type = prediction_type, variance_type

    @torch.no_grad()
    def sample(self, model, x_given: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x_given [B,T,C,h,w], mask [1|B,T,1,h,w] (1 = generate) → composited x₀ [B,T,C,h,w]."""
        x = torch.randn(x_given.shape, generator=generator)
        c = x.shape[2]
        for i in reversed(range(len(self.timesteps))):
            x_in = x_given * (1 - mask) + x * mask
            t = torch.full((x.shape[0],), float(self.timesteps[i]))
            out = model(x_in, t)
            a, log_var = self.ac[i].item(), self.log_var_clipped[i].item()
            if self.prediction_type == "v":
                x0 = math.sqrt(a) * x - math.sqrt(1 - a) * out[:, :, :c]
            else:
                x0 = math.sqrt(1 / a) * x - math.sqrt(1 / a - 1) * out[:, :, :c]
            mean = self.coef1[i].item() * x0 + self.coef2[i].item() * x
            if self.variance_type == "learned_range":
                frac = (out[:, :, c:] + 1) / 2
                log_var = frac * math.log(self.betas[i].item()) + (1 - frac) * log_var
            else:
                log_var = torch.tensor(log_var)
            x = mean + (torch.exp(0.5 * log_var) * torch.randn(x.shape, generator=generator) if i > 0 else 0)
        return x_given * (1 - mask) + x * mask


class TorchPipeline:
    """VDT + diffusers AutoencoderKL in torch eager: predict the last frames of a clip from the first `cond`."""

    def __init__(self, vdt, vae, *, scale_factor: float, diffusion: dict):
        self.vdt, self.vae = vdt.eval(), vae.eval()
        self.scale_factor, self.diffusion = float(scale_factor), dict(diffusion)

    @classmethod
    def from_checkpoint(cls, folder: str | os.PathLike, diffusion: dict | None = None) -> "TorchPipeline":
        """A folder written by vdt_export.sources.save_checkpoint_folder (e.g. checkpoints/default)."""
        from vdt_export.sources import load_checkpoint_folder

        ckpt = load_checkpoint_folder(folder)
        return cls(ckpt.vdt, ckpt.vae, scale_factor=ckpt.scale_factor, diffusion=diffusion or ckpt.diffusion)

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W, 3] → scaled posterior means [N, C, h, w]."""
        x = torch.from_numpy(frames).float().div(127.5).sub(1).permute(0, 3, 1, 2)
        return self.vae.encode(x).latent_dist.mean * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """[N, C, h, w] → uint8 [N, H, W, 3]."""
        images = self.vae.decode(latents / self.scale_factor).sample
        return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()

    @torch.no_grad()
    def predict(self, frames: np.ndarray, *, cond: int, total: int, steps: int, seed: int = 0, batch: int = 1):
        """frames uint8 [≥cond, H, W, 3] → uint8 [batch, total, H, W, 3]; the first `cond` frames are given."""
        c, h = self.vdt.config.in_channels, self.vdt.config.input_size
        x_given = torch.zeros(batch, total, c, h, h)
        x_given[:, :cond] = self.encode(frames[:cond])
        mask = torch.ones(1, total, 1, h, h)
        mask[:, :cond] = 0
        ddpm = TorchDDPM(steps, **self.diffusion_args())
        x0 = ddpm.sample(self.vdt, x_given, mask, torch.Generator().manual_seed(seed))
        out = np.zeros((batch, total) + frames.shape[1:], np.uint8)
        out[:, :cond] = frames[:cond]
        out[:, cond:] = self.decode(x0[:, cond:].flatten(0, 1)).reshape((batch, total - cond) + frames.shape[1:])
        return out

    def diffusion_args(self) -> dict:
        d = self.diffusion
        return dict(num_timesteps=d.get("num_timesteps", 1000), prediction_type=d.get("prediction_type", "epsilon"),
                    variance_type=d.get("variance_type", "learned_range"))
