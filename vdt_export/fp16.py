"""FP16 stages for a bundle: the graph TensorRT builds strongly typed, which onnxruntime also runs (CPU: slowly).

    vdt-export fp16 engines/default --checkpoint checkpoints/default     # adds denoiser.fp16.onnx (+ VAE)

Precision policy (the same for every FP16 stage, DESIGN.md "TensorRT"):
- FP16: weights and activations of the patch embedding, every attention projection and score MatMul, the MLPs,
  the blocks' adaLN projections, and the VAE's convolutions.
- FP32: every LayerNorm / GroupNorm (FP16 variance overflows on large activations), every softmax (scores are
  upcast, the probabilities cast back for the ·V MatMul), the timestep embedding (sin-cos of t up to 999 and its
  MLP), the label embedding, and the final layer (adaLN shift/scale + linear) that writes ε / v.
- I/O stay float32, so the manifest's declared inputs and outputs hold for every precision.
Every boundary is an explicit Cast in the ONNX graph and every operator sees one dtype: a strongly typed
TensorRT network takes the types from the graph as written (TensorRT 11 only builds strongly typed).

How: a deep copy of the model is cast to half, the FP32 parts are cast back, and their `forward`s are wrapped to
cast on the way in (and back out for the norms); the VAE's attention uses diffusers' classic processor, which
upcasts softmax. The caller's modules are not changed.
"""
from __future__ import annotations

import copy
import os
import tempfile
import types
from pathlib import Path

import torch
import torch.nn as nn

from vdt_runtime.errors import InputError

from .bundle import _with_max_frames, amend_manifest, write_manifest
from .models import VDT, Attention
from .onnx_export import export_denoiser, export_vae_decoder, export_vae_encoder
from .stage_error import stage_error

PRECISION = "fp16"
# The most an fp16 stage may differ from the bundle's fp32 stage on random inputs (stage_error, relative to the fp32
# output's mean / max |value|) before it is refused as made from other weights. Measured fp16 rounding, onnxruntime
# CPU (BENCHMARKS.md §6): at most 0.08 % mean / 0.23 % max (default model, random VDT-S/2, tiny VAE); the weights of
# another model (`--random-init 0` into engines/default): 146 % mean / 130 % max. The bounds leave ~10x margin
# above the first and stay ~100x below the second.
TOLERANCE = {"rel_mean": 0.01, "rel_max": 0.05}
FILES = {"denoiser": "denoiser.fp16.onnx", "vae_encoder": "vae_encoder.fp16.onnx",
         "vae_decoder": "vae_decoder.fp16.onnx"}


def _cast(module: nn.Module, dtype: torch.dtype, out: torch.dtype | None = None) -> None:
    """`module` casts its first input to `dtype` before running (and its output to `out` when given)."""
    inner = module.forward
    if out is None:
        module.forward = lambda x, *args: inner(x.to(dtype), *args)
    else:
        module.forward = lambda x, *args: inner(x.to(dtype), *args).to(out)


def _fp32_norm(module: nn.Module) -> None:
    """`module` (a norm) keeps FP32 weights, normalises in FP32 and returns its input's dtype."""
    inner = module.float().forward
    module.forward = lambda x: inner(x.float()).to(x.dtype)


def _attention_fp32_softmax(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """Attention.forward with the scores upcast for softmax; the MatMuls stay in x's dtype."""
    qkv = self.qkv(x).unflatten(3, (3, self.num_heads, -1))  # (B, X, L, 3, heads, d_head)
    q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, X, heads, L, d_head)
    attn = (q @ k.transpose(3, 4)) * (q.shape[-1] ** -0.5)
    probs = attn.float().softmax(dim=-1).to(v.dtype)
    return self.proj((probs @ v).transpose(2, 3).flatten(3))  # (B, X, L, D)


def half_vdt(vdt: VDT) -> VDT:
    """A copy of `vdt` under the FP16 policy above: float32 latents/timestep in, float32 model_out out."""
    half = copy.deepcopy(vdt).eval().half()
    for keep in (half.t_embedder, half.y_embedder, half.final_layer):
        keep.float()
    _cast(half.x_embedder, torch.float16)  # float32 latents → FP16 tokens
    _cast(half.final_layer, torch.float32)  # FP16 tokens → FP32 final layer (its LayerNorm included)
    for block in half.blocks:
        _cast(block.adaLN_modulation, torch.float16)  # FP32 conditioning → FP16 shift/scale/gate
        for norm in (block.norm1, block.norm2, block.temporal_norm1):
            _fp32_norm(norm)
    for m in half.modules():
        if isinstance(m, Attention):
            m.forward = types.MethodType(_attention_fp32_softmax, m)
    return half


def half_vae(vae: nn.Module) -> nn.Module:
    """A copy of a diffusers AutoencoderKL under the FP16 policy: GroupNorms and attention softmax in FP32, the 1×1
    quant convs in FP32, so encoder and decoder stages take and give float32 like the fp32 ones."""
    from diffusers.models.attention_processor import AttnProcessor

    half = copy.deepcopy(vae).eval().half()
    half.set_attn_processor(AttnProcessor())  # computes the scores itself and honours upcast_softmax
    for m in half.modules():
        if hasattr(m, "upcast_softmax"):
            m.upcast_softmax = True
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            _fp32_norm(m)
    f32 = torch.float32
    if half.quant_conv is None:
        _cast(half.encoder, torch.float16, f32)
    else:
        _cast(half.encoder, torch.float16)
        _cast(half.quant_conv.float(), f32)
    _cast(half.decoder, torch.float16, f32)
    if half.post_quant_conv is not None:
        _cast(half.post_quant_conv.float(), f32)
    return half


def add_fp16(bundle_dir: str | os.PathLike, vdt: VDT, vae: nn.Module | None = None, *,
             verbose: bool = False, errors: dict | None = None) -> list[Path]:
    """Export the FP16 denoiser (and VAE encoder/decoder when `vae` is given) of the bundle's model into the
    bundle, list them as stages.<stage>.files["fp16"] and rewrite the manifest; returns the written paths.
    `vdt` / `vae` must be the models the bundle was exported from: checked on the manifest's model config, then
    each staged fp16 file against the bundle's fp32 file (TOLERANCE), before anything is written. `errors`, when
    given, receives each stage's stage_error."""
    bundle_dir = Path(bundle_dir)
    manifest = amend_manifest(bundle_dir)
    model = manifest["model"]
    for key, value in vdt.config.to_dict().items():
        if key in model and model[key] != value:
            raise InputError(f"the VDT given has {key}={value!r} but bundle {str(bundle_dir)!r} was exported with "
                             f"{key}={model[key]!r}")
    vdt = _with_max_frames(vdt, model["max_frames"])
    denoiser = manifest["stages"]["denoiser"]
    max_batch = denoiser["dynamic_axes"]["batch"]["max"]
    image_size, scale = manifest["image_size"], manifest["vae"]["scale_factor"]
    written = []
    with tempfile.TemporaryDirectory(prefix=".fp16-", dir=bundle_dir) as tmp:
        staged = {"denoiser": export_denoiser(half_vdt(vdt), Path(tmp) / FILES["denoiser"], max_batch=max_batch,
                                              verbose=verbose)}
        if vae is not None:
            hv = half_vae(vae)
            for stage, export in (("vae_encoder", export_vae_encoder), ("vae_decoder", export_vae_decoder)):
                staged[stage] = export(hv, Path(tmp) / FILES[stage], image_size=image_size, scale_factor=scale,
                                       verbose=verbose)
        for stage, path in staged.items():
            spec = manifest["stages"][stage]
            e = stage_error(spec, bundle_dir / spec["files"]["fp32"], path)
            if e["rel_mean"] > TOLERANCE["rel_mean"] or e["rel_max"] > TOLERANCE["rel_max"]:
                raise InputError(
                    f"the fp16 {stage} made from the weights given differs from the fp32 {stage} of bundle "
                    f"{str(bundle_dir)!r} by {e['rel_mean']:.1%} (mean) / {e['rel_max']:.1%} (max) on random "
                    f"inputs; fp16 rounding allows {TOLERANCE['rel_mean']:.0%} / {TOLERANCE['rel_max']:.0%}: these are not the "
                    "weights the bundle was exported from (nothing was written)")
            if errors is not None:
                errors[stage] = e
        for stage, path in staged.items():
            target = bundle_dir / path.name
            os.replace(path, target)
            manifest["stages"][stage]["files"][PRECISION] = path.name
            written.append(target)
    write_manifest(bundle_dir, manifest, written={path.name for path in written})
    return written
