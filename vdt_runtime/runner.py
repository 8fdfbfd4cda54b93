"""How planned requests run: one backend per stage, compatible plans stacked on B, the VAE in slices.

frames → VAE encode (given frames only) → masked sampling (NumPy, or CuPy on a GPU backend) → VAE decode
(frames with generated cells only) → frames, the given pixels put back bit for bit. Everything a caller can get
wrong was refused by `Request.plan` before this runs; what is checked here is what the backends answer.
"""
from __future__ import annotations

import time

import numpy as np

from vdt_runtime._xp import to_numpy
from vdt_runtime.backends import Backend
from vdt_runtime.bundle import Bundle
from vdt_runtime.errors import BundleError
from vdt_runtime.limits import DEFAULT_VAE_SLICE_PIXELS
from vdt_runtime.requests import Plan
from vdt_runtime.samplers import SamplerRun, per_item_normal, prepare
from vdt_runtime.settings import Sampling
from vdt_runtime.timing import Timer


class Runner:
    """Runs lists of Plans on one backend per stage (vae_encoder, denoiser, vae_decoder)."""

    def __init__(self, bundle: Bundle, backends: dict[str, Backend]):
        self.bundle = bundle
        self.vae_slice: int | None = None  # frames per VAE call (set by Pipeline); None: DEFAULT_VAE_SLICE_PIXELS worth
        self.enc, self.den, self.dec = backends["vae_encoder"], backends["denoiser"], backends["vae_decoder"]

    @property
    def slice_frames(self) -> int:
        """Frames per VAE encoder / decoder call (vae_slice, or as many as make DEFAULT_VAE_SLICE_PIXELS pixels)."""
        return self.vae_slice or max(1, DEFAULT_VAE_SLICE_PIXELS // self.bundle.image_size ** 2)

    def sampler(self, sampling: Sampling) -> SamplerRun:
        return prepare(sampling, self.bundle.diffusion)

    def run(self, plans: list[Plan], *, progress: bool = False) -> list[tuple[np.ndarray, np.ndarray, dict]]:
        """(frames uint8 [T, H, W, 3], latent mask [T, h, w], its batch's stage seconds) per plan, in order.

        Plans with the same batch_key run as one batch, stacked on B up to the denoiser's batch max (split beyond);
        each draws its noise from its own Generator seeded with its seed."""
        from vdt_runtime.rollout import in_memory

        samplers = {p.sampling: self.sampler(p.sampling) for p in plans}
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(plans):
            groups.setdefault(p.batch_key, []).append(i)
        cap = self.bundle.stage("denoiser").axis_max("batch") or len(plans) or 1
        chunks = [idx[i: i + cap] for idx in groups.values() for i in range(0, len(idx), cap)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            steps = sum(plans[c[0]].sampling[1] * plans[c[0]].windows for c in chunks)
            bar = tqdm(total=steps, desc="sampling", unit="step", leave=False)
        results: list = [None] * len(plans)
        try:
            for chunk in chunks:
                batch, timer = [plans[i] for i in chunk], Timer()
                s = samplers[batch[0].sampling]
                with timer.stage("total"):
                    rngs = [np.random.default_rng(p.seed) for p in batch]
                    if batch[0].cond is None:
                        outs, masks = self.batch(batch, s, rngs, timer, bar), [p.mask for p in batch]
                    else:
                        outs, masks = in_memory(self, batch, s, rngs, timer, bar)
                for i, out, m in zip(chunk, outs, masks):
                    results[i] = (out, m, timer.seconds)
        finally:
            if bar is not None:
                bar.close()
        return results

    def batch(self, plans: list[Plan], s: SamplerRun, rngs: list[np.random.Generator], timer: Timer,
              bar) -> list[np.ndarray]:
        """uint8 [T, H, W, 3] per plan (all of one total T), sampled as one batch; given cells are the input pixels."""
        total = plans[0].total
        givens = [np.flatnonzero((p.mask < 1).any(axis=(1, 2))) for p in plans]  # frames with any given cell
        generated = [np.flatnonzero((p.mask > 0).any(axis=(1, 2))) for p in plans]
        shape = self.bundle.latent_shape(total)  # [T, C, h, w]
        x_given = np.zeros((len(plans),) + shape, np.float32)  # [B, T, C, h, w]
        if any(g.size for g in givens):
            with timer.stage("vae_encoder"):
                latents = self.encode([p.frames[g] for p, g in zip(plans, givens) if g.size])
            for b, lat in zip([b for b, g in enumerate(givens) if g.size], latents):
                x_given[b, givens[b]] = lat
        den = self.den
        xp = den.array_namespace()  # NumPy, or CuPy for a GPU backend: the sampler state stays where it runs
        x_T = per_item_normal(rngs, shape, xp)  # each item's own seed, made where the sampler state lives
        names = [spec.name for spec in den.inputs]
        out_spec = self.bundle.stage("denoiser").outputs[0]
        together = den.batch_invariant

        def denoise(x, t):  # x [B, T, C, h, w] float32, t [B] float32 → [B, T, outC, h, w]
            start = time.perf_counter()
            if together:
                out = den.run({names[0]: x, names[1]: t})[out_spec.name]
            else:  # one call per item, so a per-call activation scale sees only that item
                out = xp.concatenate([den.run({names[0]: x[b: b + 1], names[1]: t[b: b + 1]})[out_spec.name]
                                      for b in range(len(x))])
            timer.add("denoiser", time.perf_counter() - start)
            return _check_output("denoiser", out, x.shape[:2] + tuple(out_spec.shape[2:3]) + x.shape[3:])

        callback = (lambda i, n, x: bar.update(1)) if bar is not None else None
        start, before = time.perf_counter(), timer.seconds.get("denoiser", 0.0)
        x0 = to_numpy(s(denoise, x_T, rng=rngs, mask=xp.asarray(np.stack([p.mask for p in plans])),
                        x_given=xp.asarray(x_given), callback=callback))
        timer.add("sampler", time.perf_counter() - start - (timer.seconds.get("denoiser", 0.0) - before))

        with timer.stage("vae_decoder"):
            decoded = self.decode([x0[b, g] for b, g in enumerate(generated)])
        outs = []
        f = self.bundle.vae["downsample"]
        size = self.bundle.image_size
        for p, given, gen, pixels in zip(plans, givens, generated, decoded):
            out = np.zeros((total, size, size, 3), np.uint8)
            out[gen] = pixels
            if given.size:
                keep = np.repeat(np.repeat(p.mask[given] == 0, f, axis=1), f, axis=2)  # [G, H, W] pixel is given
                out[given] = np.where(keep[..., None], p.frames[given], out[given])
            outs.append(out)
        return outs

    def encode(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 [N, H, W, 3] per clip → scaled latents float32 [N, C, h, w] per clip."""
        images = [c.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0 for c in clips]  # [N, 3, H, W] in [-1, 1]
        return self._stage(self.enc, images, (self.bundle.latent_channels,) + (self.bundle.latent_size,) * 2)

    def decode(self, latents: list[np.ndarray]) -> list[np.ndarray]:
        """float32 [N, C, h, w] per clip → uint8 [N, H, W, 3] per clip (clipped to [-1, 1], rounded)."""
        images = self._stage(self.dec, [x.astype(np.float32) for x in latents],
                             (3,) + (self.bundle.image_size,) * 2)  # [N, 3, H, W] each
        return [np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
                for x in images]

    def _stage(self, backend: Backend, parts: list[np.ndarray], item: tuple[int, ...]) -> list[np.ndarray]:
        """Run a VAE stage over every part's items [N, ...] (each out: `item`): together when batch-invariant, else
        part by part."""
        if not backend.batch_invariant:
            return [self._batched(backend, x, item) for x in parts]
        sizes = np.cumsum([len(x) for x in parts])[:-1]
        return np.split(self._batched(backend, np.concatenate(parts), item), sizes) if parts else []

    def _batched(self, backend: Backend, x: np.ndarray, item: tuple[int, ...]) -> np.ndarray:
        """Run a VAE stage over x [N, ...] in slices of `slice_frames` frames (at most the manifest's batch max): peak
        memory follows the slice, not N (diffusers' "VAE slicing")."""
        name, out = backend.inputs[0].name, backend.outputs[0].name
        cap = min(self.slice_frames, self.bundle.stage(backend.stage).axis_max("batch", len(x)) or len(x))
        return np.concatenate([_check_output(backend.stage, backend.run({name: x[i: i + cap]})[out],
                                             (len(x[i: i + cap]),) + item) for i in range(0, len(x), cap)])


def _check_output(stage: str, out, shape: tuple) -> np.ndarray:
    """A stage's output, refused (BundleError) when its shape is not what the manifest declares for this call."""
    if tuple(out.shape) != tuple(int(d) for d in shape):
        raise BundleError(f"stage {stage} returned shape {tuple(out.shape)} where the manifest declares "
                          f"{tuple(int(d) for d in shape)} for this call; the bundle's graph does not match its manifest")
    return out
