"""VDT: a DiT-style video diffusion transformer with temporal + spatial attention.

Parameter names follow the official VDT checkpoints exactly; they are the loading contract.
Shapes are written as comments: B batch, T frames, N tokens per frame, D hidden.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class VDTConfig:
    """Everything needed to build a VDT; serialised into the bundle manifest."""

    input_size: int = 32  # latent height == width
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_frames: int = 16  # trained temporal length (rows of time_embed)
    num_classes: int = 1  # rows of y_embedder.embedding_table
    learn_sigma: bool = True

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS = {
    "VDT-S/2": dict(depth=12, hidden_size=384, num_heads=6, patch_size=2),
    "VDT-L/2": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2),
    "VDT-tiny": dict(depth=2, hidden_size=64, num_heads=4, patch_size=2),
}


def config_from_name(name: str, **overrides) -> VDTConfig:
    """A named config (`VDT-S/2`, `VDT-L/2`, `VDT-tiny`) with field overrides."""
    if name not in CONFIGS:
        raise ValueError(f"unknown VDT config {name!r}; known: {sorted(CONFIGS)}")
    return VDTConfig(**{**CONFIGS[name], **overrides})


# ---------------------------------------------------------------------------------------------
# Fixed sin-cos embeddings (same construction as DiT / MAE)


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[len(positions), dim] float64: sin in the first half, cos in the second."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_size: int) -> np.ndarray:
    """[grid_size**2, dim]; DiT's meshgrid(w, h) ordering, half the channels per axis."""
    coords = np.arange(grid_size, dtype=np.float64)
    grid = np.stack(np.meshgrid(coords, coords), axis=0)  # (2, g, g): w first, as in DiT
    return np.concatenate([sincos_1d(dim // 2, grid[0]), sincos_1d(dim // 2, grid[1])], axis=1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[B] timesteps → [B, dim] sinusoidal features (cos first, then sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# ---------------------------------------------------------------------------------------------
# Modules


class PatchEmbed(nn.Module):
    """Conv patchifier: [B', C, H, W] → [B', N, D]."""

    def __init__(self, patch: int, in_channels: int, hidden: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def sdpa_attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Self-attention over axis 1 of x [S, L, D] with nn.Linear's packed qkv weight [3D, D] and bias [3D], through
    F.scaled_dot_product_attention: the same maths as `Attention` (which keeps the explicit form)."""
    q, k, v = F.linear(x, weight, bias).unflatten(2, (3, num_heads, -1)).permute(2, 0, 3, 1, 4)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """Multi-head self-attention over axis 2 of [B, X, L, D] (X: frames or token positions)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        qkv = self.qkv(x).unflatten(3, (3, self.num_heads, -1))  # (B, X, L, 3, heads, d_head)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, X, heads, L, d_head)
        attn = (q @ k.transpose(3, 4)) * (q.shape[-1] ** -0.5)
        out = (attn.softmax(dim=-1) @ v).transpose(2, 3).flatten(3)  # (B, X, L, D)
        return self.proj(out)


class Mlp(nn.Module):
    """fc1 → tanh-GELU → fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TimestepEmbedder(nn.Module):
    """Diffusion timestep → conditioning vector."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq_dim))


class LabelEmbedder(nn.Module):
    """Class label → vector; VDT inference always uses label 0."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes, hidden)

    def forward(self, labels):
        return self.embedding_table(labels)


class VDTBlock(nn.Module):
    """Temporal attention (plain residual), then adaLN-Zero spatial attention and MLP."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        self.temporal_norm1 = nn.LayerNorm(hidden)
        self.temporal_attn = Attention(hidden, num_heads)
        self.temporal_fc = nn.Linear(hidden, hidden)

    def forward(self, x, c):
        # x: (B, T, N, D), c: (B, D)
        xt = x.transpose(1, 2)  # (B, N, T, D): attend across frames at each token position
        x = x + self.temporal_fc(self.temporal_attn(self.temporal_norm1(xt)).transpose(1, 2))
        mod = self.adaLN_modulation(c)[:, None, None, :]  # (B, 1, 1, 6D): shared by all frames
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN shift/scale, then a linear map to patch pixels."""

    def __init__(self, hidden: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, c):
        # x: (B, T, N, D), c: (B, D)
        shift, scale = self.adaLN_modulation(c)[:, None, None, :].chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class VDT(nn.Module):
    """Denoiser: latents [B, T, C, h, w] + timestep [B] → [B, T, out_C, h, w]."""

    def __init__(self, config: VDTConfig, max_frames: int | None = None):
        super().__init__()
        self.config = cfg = config
        self.max_frames = max_frames or cfg.num_frames
        if self.max_frames < cfg.num_frames:
            raise ValueError(f"max_frames={self.max_frames} is below the trained num_frames={cfg.num_frames}")
        d = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid_size**2, d), requires_grad=False)
        self.time_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, d), requires_grad=False)
        self.blocks = nn.ModuleList(VDTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(d, cfg.patch_size, cfg.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """DiT init: xavier linears, sin-cos tables, adaLN and final layer zeroed (output is 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        cfg = self.config
        self.pos_embed.data.copy_(torch.from_numpy(sincos_2d(cfg.hidden_size, cfg.grid_size)).float()[None])
        self.time_embed.data.copy_(self._time_table(cfg.num_frames))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for p in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)

    def _time_table(self, frames: int) -> torch.Tensor:
        return torch.from_numpy(sincos_1d(self.config.hidden_size, np.arange(frames))).float()[None]

    def temporal_table(self, frames: int) -> torch.Tensor:
        """time_embed rows for `frames` frames; past the trained length, the sin-cos is extended."""
        if frames <= self.config.num_frames:
            return self.time_embed[:, :frames]
        extra = self._time_table(frames)[:, self.config.num_frames:].to(self.time_embed)
        return torch.cat([self.time_embed, extra], dim=1)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, N, p*p*C) → (B, T, C, h, w), the DiT layout (h, w, p, q, c)."""
        c, p, g = self.config.out_channels, self.config.patch_size, self.config.grid_size
        x = x.unflatten(3, (p, p, c)).unflatten(2, (g, g))  # (B, T, h, w, p, q, c)
        x = x.permute(0, 1, 6, 2, 4, 3, 5)  # (B, T, c, h, p, w, q)
        return x.flatten(5, 6).flatten(3, 4)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        b, t = latents.shape[0], latents.shape[1]
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and t > self.max_frames:
            raise ValueError(f"got T={t} frames; this model accepts 1..{self.max_frames}")
        x = self.x_embedder(latents.flatten(0, 1)) + self.pos_embed  # (B*T, N, D)
        x = x.unflatten(0, (b, t))  # (B, T, N, D)
        x = x + self.temporal_table(self.max_frames)[:, :t, None, :]
        labels = torch.zeros_like(timestep, dtype=torch.long)
        cond = self.t_embedder(timestep) + self.y_embedder(labels)  # (B, D)
        for block in self.blocks:
            x = block(x, cond)
        return self.unpatchify(self.final_layer(x, cond))  # (B, T, out_C, h, w)
