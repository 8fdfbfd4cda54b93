"""VDT weights: load and save state_dicts, infer the config from tensor shapes, load them checked."""
from __future__ import annotations

import argparse
import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from vdt_runtime._atomic import atomic_path
from vdt_runtime.errors import VDTError

from .models import CONFIGS, VDT, VDTConfig

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
WRAPPER_KEYS = ("ema", "model", "state_dict")  # official VDT/DiT checkpoints keep the EMA weights under "ema"
REQUIRED_KEYS = ("x_embedder.proj.weight", "pos_embed", "time_embed", "y_embedder.embedding_table.weight",
                 "final_layer.linear.weight", "blocks.0.mlp.fc1.weight")


class CheckpointError(VDTError, ValueError):
    """A checkpoint cannot be read, or does not fit the requested VDT configuration."""


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.pt/.pth` (plain or wrapped in "ema"/"model"/"state_dict") or `.safetensors` file onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read checkpoint {path.name!r} as safetensors: {exc}") from exc
    if suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"checkpoint {path.name!r} has suffix {suffix!r}; "
                              f"allowed: {', '.join(TORCH_SUFFIXES + SAFETENSORS_SUFFIXES)}")
    try:
        # DiT-style training checkpoints also store the argparse Namespace of their run
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path.name!r} with torch.load(weights_only=True): "
                              f"{_torch_reason(exc)}") from exc
    return unwrap_state_dict(obj, source=path.name)


def _torch_reason(exc: BaseException) -> str:
    """The line of a torch.load error that says what is wrong (its weights_only text is a page of advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if "WeightsUnpickler error:" in line), lines[0] if lines else repr(exc))
    reason = reason.split("WeightsUnpickler error:", 1)[-1].strip()
    reason = re.sub(r"\x1b\[[0-9;]*m", "", reason)  # no terminal colour codes
    if "was not an allowed global" in reason:
        reason = reason.split(" Please use", 1)[0] + " (arbitrary pickled objects are refused)"
    return reason


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict in `obj` (itself, or its "ema"/"model"/"state_dict" entry), minus a DDP "module." prefix."""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} holds no state_dict of tensors (looked at the top level and "
                              f"under {', '.join(map(repr, WRAPPER_KEYS))})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def save_state_dict(model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write a model's (or a dict's) tensors to `.safetensors` or `.pt` atomically; returns the path."""
    path = Path(path)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    suffix = path.suffix.lower()
    if suffix not in TORCH_SUFFIXES + SAFETENSORS_SUFFIXES:
        raise CheckpointError(f"cannot save to {path.name!r}: suffix {suffix!r} is not one of "
                              f"{', '.join(TORCH_SUFFIXES + SAFETENSORS_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if suffix in SAFETENSORS_SUFFIXES:
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
    return path


def infer_config(state_dict: Mapping[str, torch.Tensor], name: str | None = None, **overrides) -> VDTConfig:
    """A VDTConfig from tensor shapes; heads come from `name` (or the named config with that hidden size)."""
    for key in REQUIRED_KEYS:
        if key not in state_dict:
            raise CheckpointError(f"checkpoint has no {key!r}; is it a VDT state_dict? "
                                  f"(first keys: {list(state_dict)[:5]})")
    proj = state_dict["x_embedder.proj.weight"]  # (D, C, p, p)
    hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise CheckpointError(f"x_embedder.proj.weight has shape {tuple(proj.shape)}; expected (hidden, C, p, p)")
    tokens = state_dict["pos_embed"].shape[1]  # pos_embed (1, N, D)
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise CheckpointError(f"pos_embed has {tokens} tokens, not a square grid")
    out_features = state_dict["final_layer.linear.weight"].shape[0]  # p*p*out_C
    out_channels = out_features // (patch * patch)
    if out_channels not in (in_channels, 2 * in_channels) or out_channels * patch * patch != out_features:
        raise CheckpointError(f"final_layer.linear.weight has {out_features} outputs; with patch {patch} and "
                              f"{in_channels} channels expected {patch * patch * in_channels} or "
                              f"{2 * patch * patch * in_channels}")
    inferred = dict(
        input_size=grid * patch,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))),
        mlp_ratio=state_dict["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        num_frames=state_dict["time_embed"].shape[1],
        num_classes=state_dict["y_embedder.embedding_table.weight"].shape[0],
        learn_sigma=out_channels == 2 * in_channels,
    )
    if name is not None:
        if name not in CONFIGS:
            raise CheckpointError(f"unknown VDT config {name!r}; known: {sorted(CONFIGS)}")
        for field, value in CONFIGS[name].items():
            if field in inferred and inferred[field] != value and field not in overrides:
                raise CheckpointError(f"config {name} has {field}={value} but the checkpoint has "
                                      f"{field}={inferred[field]}")
        inferred["num_heads"] = CONFIGS[name]["num_heads"]
    else:
        named = [cfg["num_heads"] for cfg in CONFIGS.values() if cfg["hidden_size"] == hidden]
        if named:
            inferred["num_heads"] = named[0]
    inferred.update(overrides)
    if "num_heads" not in inferred:
        raise CheckpointError(f"hidden size {hidden} matches no named config ({sorted(CONFIGS)}); "
                              f"pass a config name or num_heads")
    if inferred["hidden_size"] % inferred["num_heads"]:
        raise CheckpointError(f"num_heads={inferred['num_heads']} does not divide "
                              f"hidden_size={inferred['hidden_size']}")
    try:
        return VDTConfig(**inferred)
    except TypeError as exc:
        raise CheckpointError(f"bad config override: {exc}; fields: {list(VDTConfig.__dataclass_fields__)}") from exc


def load_vdt(source: str | os.PathLike | Mapping[str, torch.Tensor], config_name: str | None = None, *,
             max_frames: int | None = None, interpolate_pos_embed: bool = False, **overrides) -> VDT:
    """A VDT in eval mode holding the checkpoint's weights; refuses any key or shape mismatch."""
    state = unwrap_state_dict(source) if isinstance(source, Mapping) else load_state_dict(source)
    config = infer_config(state, config_name, **overrides)
    if max_frames is not None and max_frames < config.num_frames:
        raise CheckpointError(f"max_frames={max_frames} is below the trained num_frames={config.num_frames}")
    model = VDT(config, max_frames=max_frames)
    expected = model.state_dict()
    got_pos, want_pos = tuple(state["pos_embed"].shape), tuple(expected["pos_embed"].shape)
    if got_pos != want_pos:
        if not interpolate_pos_embed:
            raise CheckpointError(f"pos_embed has shape {got_pos} in the checkpoint but {want_pos} for "
                                  f"input_size={config.input_size}; pass interpolate_pos_embed=True "
                                  f"(CLI: --interpolate-pos-embed) to recompute the fixed 2D sin-cos for the new grid")
        state["pos_embed"] = expected["pos_embed"]  # fixed sin-cos, already built for the new grid
    return load_checked_(model, state, f"VDT {config}")


def load_checked_(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """Load `state` into `module` (as float32, eval mode) after refusing missing/unexpected keys or shapes."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint keys do not match {what}: missing {missing[:8]}"
                              f"{' …' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                              f"{' …' if len(unexpected) > 8 else ''}")
    for key, want in expected.items():
        if state[key].shape != want.shape:
            raise CheckpointError(f"{key} has shape {tuple(state[key].shape)} in the checkpoint but the model "
                                  f"expects {tuple(want.shape)}")
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return module.eval()
