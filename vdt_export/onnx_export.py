"""ONNX export of the three stages (denoiser, VAE encoder, VAE decoder) with torch.onnx dynamo, opset 18."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
import torch.nn as nn
from torch.export import Dim

from .fused_attention import OPSET as FUSED_OPSET
from .fused_attention import fused_export
from .models import VDT
from .vae import VAEDecoder, VAEEncoder, downsample_factor, latent_channels

OPSET = 18  # opset 17 conversion of this graph fails; onnxruntime runs 18
_DIM_CAP = 4096  # upper bound given to torch.export for otherwise unbounded dims
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence the exporter's prints, warnings and log records unless `verbose`."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        sys.stderr.write(sink.getvalue())  # the exporter's own account of a failure is worth seeing
        raise
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(module: nn.Module, args: tuple, path: str | os.PathLike, *, input_names: list[str],
                output_names: list[str], dynamic_shapes: dict, external_data: bool | None = None,
                verbose: bool = False, opset: int = OPSET, translations: dict | None = None) -> Path:
    """Export `module` to `path` and run onnx.checker on it. The weights go to one `<name>.data` file beside it
    when `external_data` is True, or when None (automatic) and they pass 2 GB. `translations` is the exporter's
    custom_translation_table (torch op → onnxscript function)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet(verbose), torch.no_grad():
        program = torch.onnx.export(module.eval(), args, None, dynamo=True, opset_version=opset, verbose=verbose,
                                    input_names=input_names, output_names=output_names,
                                    dynamic_shapes=dynamic_shapes, custom_translation_table=translations)
    # saved under its final name in a temp folder beside it: external data records that name as its location
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with _quiet(verbose):
            program.save(staging / path.name, external_data=external_data)
        onnx.checker.check_model(str(staging / path.name))  # path form: works past 2 GB
        for extra in sorted(staging.iterdir(), key=lambda p: p.name == path.name):  # the .onnx goes last
            os.replace(extra, path.parent / extra.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def export_denoiser(vdt: VDT, path: str | os.PathLike, *, max_batch: int = 16, external_data: bool | None = None,
                    verbose: bool = False, fused: bool = False) -> Path:
    """latents [B, T, C, h, w] + timestep [B] (float32, 0…999) → model_out [B, T, out_C, h, w]; B and T dynamic.
    `fused` writes the onnxruntime-only graph with com.microsoft.Attention (vdt_export.fused_attention)."""
    cfg = vdt.config
    frames = min(2, vdt.max_frames)
    latents = torch.randn(2, frames, cfg.in_channels, cfg.input_size, cfg.input_size)
    timestep = torch.tensor([10.0, 500.0])
    batch = Dim("batch", min=1, max=max(max_batch, 2))
    latent_dims = {0: batch}
    if vdt.max_frames >= 2:  # torch.export cannot make a dim dynamic when its only legal size is 1
        latent_dims[1] = Dim("frames", min=1, max=vdt.max_frames)
    kwargs = dict(input_names=["latents", "timestep"], output_names=["model_out"],
                  dynamic_shapes={"latents": latent_dims, "timestep": {0: batch}}, external_data=external_data,
                  verbose=verbose)
    if not fused:
        return export_onnx(vdt, (latents, timestep), path, **kwargs)
    with fused_export(vdt) as translations:
        return export_onnx(vdt, (latents, timestep), path, opset=FUSED_OPSET, translations=translations, **kwargs)


def export_vae_encoder(vae: nn.Module, path: str | os.PathLike, *, image_size: int, scale_factor: float,
                       verbose: bool = False) -> Path:
    """images [B, 3, H, W] → latents [B, C, H/f, W/f]; B, H, W dynamic (H, W multiples of f)."""
    f = downsample_factor(vae)
    images = torch.randn(2, 3, image_size, image_size)
    dims = {0: Dim("batch", min=1, max=_DIM_CAP)}
    dims.update(_spatial_dims(f, image_size // f))
    return export_onnx(VAEEncoder(vae, scale_factor), (images,), path, input_names=["images"],
                       output_names=["latents"], dynamic_shapes={"images": dims}, verbose=verbose)


def export_vae_decoder(vae: nn.Module, path: str | os.PathLike, *, image_size: int, scale_factor: float,
                       verbose: bool = False) -> Path:
    """latents [B, C, h, w] → images [B, 3, h·f, w·f]; B, h, w dynamic."""
    f = downsample_factor(vae)
    latents = torch.randn(2, latent_channels(vae), image_size // f, image_size // f)
    dims = {0: Dim("batch", min=1, max=_DIM_CAP)}
    dims.update(_spatial_dims(1, image_size // f))
    return export_onnx(VAEDecoder(vae, scale_factor), (latents,), path, input_names=["latents"],
                       output_names=["images"], dynamic_shapes={"latents": dims}, verbose=verbose)


def _spatial_dims(multiple: int, example: int) -> dict:
    """Dynamic dims 2 and 3 for sizes multiple·k, k ≥ 1 (the example latent size must be ≥ 2)."""
    if example < 2:
        raise ValueError(f"latent size {example} is too small to export with dynamic height/width (need ≥ 2)")
    h = Dim("latent_height", min=1, max=_DIM_CAP)
    w = Dim("latent_width", min=1, max=_DIM_CAP)
    return {2: multiple * h if multiple > 1 else h, 3: multiple * w if multiple > 1 else w}
