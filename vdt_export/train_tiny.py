"""Train the default bundle's tiny VAE + VDT on synthetic bouncing-ball clips, then export it.

    python -m vdt_export.train_tiny --out runs/tiny --minutes 80          # train (resumes if interrupted)
    python -m vdt_export.train_tiny --out runs/tiny --export engines/default  # export the EMA weights

Stage 1 trains a small AutoencoderKL (/2, 4 latent channels); stage 2 encodes a fixed training set
and trains VDT with the unified mask objective (random predict / backward / interpolate /
unconditional / image-to-video / complete / spatial masks, extra weight on predict), v-prediction,
bf16 autocast, EMA. Everything is seeded; checkpoints are written atomically so a run resumes.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vdt_export import bouncing
from vdt_export.models import VDT, VDTConfig
from vdt_runtime.schedule import make_schedule

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
    block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2, sample_size=bouncing.SIZE,
)
VDT_CONFIG = VDTConfig(input_size=16, patch_size=4, in_channels=4, hidden_size=128, depth=6, num_heads=4,
                       num_frames=bouncing.FRAMES, num_classes=1, learn_sigma=False)
DIFFUSION = dict(beta_schedule="linear", num_timesteps=1000, prediction_type="v", variance_type="fixed_small")
TRAIN_CLIPS = 12288


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] → float [..., 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(frames).float().div(127.5).sub(1.0)
    return x.movedim(-1, -3).contiguous()


def _save(obj, path: Path):
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _log(run: Path, **row):
    print(json.dumps(row), flush=True)
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------
# Stage 1: VAE


def train_vae(run: Path, steps: int, seed: int) -> torch.nn.Module:
    path = run / "vae.pt"
    vae = make_vae()
    if path.exists():
        vae.load_state_dict(torch.load(path, weights_only=True))
        return vae.eval()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    t0 = time.time()
    for step in range(steps):
        frames = bouncing.clips(rng.integers(0, bouncing.EVAL_SEED_BASE, 8))  # (8, T, H, W, 3)
        x = to_unit(frames.reshape(-1, *frames.shape[2:]))[rng.permutation(8 * bouncing.FRAMES)[:64]]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
        rec = rec.float()
        kl = post.kl().mean() / x[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            _log(run, stage="vae", step=step, loss=round(loss.item(), 5), kl=round(kl.item(), 4),
                 seconds=round(time.time() - t0, 1))
    _save(vae.state_dict(), path)
    return vae.eval()


@torch.no_grad()
def encode_dataset(vae, run: Path, n: int) -> tuple[torch.Tensor, float]:
    """Posterior means of n training clips [n, T, C, h, w] (unscaled) and the scale factor 1/std."""
    path = run / "latents.pt"
    if path.exists():
        blob = torch.load(path, weights_only=True)
        return blob["latents"], float(blob["scale"])
    out = []
    for start in range(0, n, 64):
        frames = bouncing.clips(range(start, min(start + 64, n)))
        x = to_unit(frames.reshape(-1, *frames.shape[2:]))
        mean = vae.encode(x).latent_dist.mean
        out.append(mean.reshape(len(frames), bouncing.FRAMES, *mean.shape[1:]))
    latents = torch.cat(out)
    scale = 1.0 / latents.std().item()
    _save({"latents": latents, "scale": torch.tensor(scale)}, path)
    return latents, scale


# ---------------------------------------------------------------------------------------------
# Stage 2: VDT with the unified mask objective


def sample_mask(rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    """[T, h, w] float32, 1 = generate; at least one element generated."""
    m = np.zeros((t, h, w), np.float32)
    kind = rng.choice(["predict", "backward", "interpolate", "uncond", "i2v", "complete", "spatial"],
                      p=[0.45, 0.1, 0.1, 0.07, 0.1, 0.08, 0.1])
    if kind == "predict":
        k = 8 if rng.random() < 0.5 else int(rng.integers(1, t))
        m[k:] = 1
    elif kind == "backward":
        m[: t - int(rng.integers(1, t))] = 1
    elif kind == "interpolate":
        m[:] = 1
        m[:: int(rng.integers(2, 5))] = 0
    elif kind == "uncond":
        m[:] = 1
    elif kind == "i2v":
        m[1:] = 1
    elif kind == "complete":
        m[rng.random(t) < 0.5] = 1
    else:
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        y1, x1 = y0 + rng.integers(2, h - y0 + 1), x0 + rng.integers(2, w - x0 + 1)
        frames = rng.random(t) < 0.7
        m[frames, y0:y1, x0:x1] = 1
    if m.sum() == 0:
        m[-1] = 1
    return m


def train_vdt(run: Path, latents: torch.Tensor, scale: float, minutes: float, batch: int, seed: int, lr: float):
    path = run / "vdt.pt"
    model = VDT(VDT_CONFIG)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    step, spent = 0, 0.0
    if path.exists():
        state = torch.load(path, weights_only=False)  # our own training checkpoint (holds RNG state)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, spent = state["step"], state["seconds"]
        torch.set_rng_state(state["torch_rng"])
        rng = np.random.default_rng()
        rng.bit_generator.state = state["np_rng"]
    else:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
    acp = torch.from_numpy(make_schedule(DIFFUSION["num_timesteps"]).alphas_cumprod).float()  # the sampler's ᾱ
    n, t, c, h, w = latents.shape
    t0 = time.time() - spent
    last_save = time.time()
    while time.time() - t0 < minutes * 60:
        idx = torch.from_numpy(rng.integers(0, n, batch))
        x0 = latents[idx] * scale
        if rng.random() < 0.5:  # the physics is mirror-symmetric left/right
            x0 = x0.flip(-1)
        mask = torch.from_numpy(np.stack([sample_mask(rng, t, h, w) for _ in range(batch)]))[:, :, None]
        ts = torch.from_numpy(rng.integers(0, 1000, batch))
        noise = torch.randn_like(x0)
        a = acp[ts].view(-1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        x_in = x0 * (1 - mask) + xt * mask
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 300)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x_in, ts.float())
        m = mask.expand_as(target)
        loss = ((out.float() - target) ** 2 * m).sum() / m.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        step += 1
        if step % 50 == 0:
            _log(run, stage="vdt", step=step, loss=round(loss.item(), 5), seconds=round(time.time() - t0, 1))
        if time.time() - last_save > 300:
            _save_vdt(path, model, ema, opt, step, time.time() - t0, rng)
            last_save = time.time()
    _save_vdt(path, model, ema, opt, step, time.time() - t0, rng)
    return ema


def _save_vdt(path, model, ema, opt, step, seconds, rng):
    _save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
           "seconds": seconds, "torch_rng": torch.get_rng_state(), "np_rng": rng.bit_generator.state}, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/tiny"), help="run folder (checkpoints, log)")
    ap.add_argument("--minutes", type=float, default=80.0, help="VDT training wall-clock budget")
    ap.add_argument("--vae-steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--export", type=Path, default=None, help="export the trained EMA model to this bundle folder")
    ap.add_argument("--checkpoints", type=Path, default=Path("checkpoints/default"),
                    help="with --export: also write the torch weights here (safetensors) for the reference benchmarks")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    vae = train_vae(args.out, args.vae_steps, args.seed)
    latents, scale = encode_dataset(vae, args.out, TRAIN_CLIPS)
    if args.export is None:
        train_vdt(args.out, latents, scale, args.minutes, args.batch, args.seed, args.lr)
        return
    from vdt_export.bundle import export_bundle
    from vdt_export.sources import save_checkpoint_folder

    state = torch.load(args.out / "vdt.pt", weights_only=False)
    model = VDT(VDT_CONFIG)
    model.load_state_dict(state["ema"])
    log = [json.loads(line) for line in open(args.out / "log.jsonl")]
    vae_log = [r for r in log if r["stage"] == "vae"]  # the VAE trained in an earlier call: its log, not --vae-steps
    training = dict(data="vdt_export.bouncing (one ball, gravity, 32x32, 16 frames)", clips=TRAIN_CLIPS,
                    vdt_steps=state["step"], vdt_minutes=round(state["seconds"] / 60, 1),
                    vae_steps=1 + max(r["step"] for r in vae_log),
                    vae_minutes=round(max(r["seconds"] for r in vae_log) / 60, 1), batch=args.batch, seed=args.seed,
                    objective="unified mask, v-prediction, EMA 0.999")
    export_bundle(model.eval(), vae, args.export, name=args.export.name, image_size=bouncing.SIZE,
                  scale_factor=scale, diffusion=DIFFUSION, training=training)
    save_checkpoint_folder(args.checkpoints, model, vae, scale_factor=scale, diffusion=DIFFUSION, training=training)
    print(f"exported {args.export} and {args.checkpoints}")


if __name__ == "__main__":
    main()
