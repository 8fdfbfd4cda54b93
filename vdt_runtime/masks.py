"""Mask pieces: float32 [T, h, w] (or [B, T, h, w] for user masks) at latent size, 1 = generate, 0 = given.

The named tasks' masks are built in vdt_runtime.requests from these.
"""
from __future__ import annotations

import numpy as np

from vdt_runtime._arrays import as_array
from vdt_runtime.errors import InputError
from vdt_runtime.limits import shorten
from vdt_runtime.checks import check_int


def user_mask(mask, total: int, latent_hw: tuple[int, int], image_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A caller's 0/1 mask [T,h,w] | [B,T,h,w], or at pixel size [T,H,W] | [B,T,H,W], as float32 latent mask.

    A pixel-size mask is reduced per latent cell: the cell is generated if ANY of its pixels is 1.
    """
    total = check_int("total", total, 1, None)
    h, w = check_hw("latent_hw", latent_hw)
    m = _check_binary(mask)
    if m.ndim not in (3, 4) or m.shape[-3] != total:
        raise InputError(f"mask must be [T, h, w] or [B, T, h, w] with T = total = {total}, got {tuple(m.shape)}")
    m = m.astype(bool)
    if m.shape[-2:] != (h, w):
        if image_hw is None or m.shape[-2:] != check_hw("image_hw", image_hw):
            sizes = f"latent {(h, w)}" + (f" nor image {tuple(image_hw)}" if image_hw is not None else "")
            raise InputError(f"mask spatial size {tuple(m.shape[-2:])} matches neither {sizes}")
        fy, fx = _factors((h, w), image_hw)
        m = m.reshape(m.shape[:-2] + (h, fy, w, fx)).any(axis=(-3, -1))  # [.., h, w]
    return validate_mask(m.astype(np.float32), total, (h, w))


def validate_mask(mask: np.ndarray, total: int, latent_hw: tuple[int, int]) -> np.ndarray:
    """Check a latent mask [T,h,w] | [B,T,h,w]: shape, values 0/1, something to generate; float32 back."""
    h, w = check_hw("latent_hw", latent_hw)
    m = _check_binary(mask)
    if m.ndim not in (3, 4) or m.shape[-3:] != (total, h, w):
        raise InputError(f"mask must be [T, h, w] = {(total, h, w)} or [B, T, h, w], got {tuple(m.shape)}")
    return check_not_all_given(m.astype(np.float32), "user")


def given_frames(mask: np.ndarray) -> tuple[int, ...]:
    """Indices of frames given entirely (mask 0 on every cell; in every batch item for [B, T, h, w])."""
    m = np.asarray(mask)
    if m.ndim not in (3, 4):
        raise InputError(f"mask must be [T, h, w] or [B, T, h, w], got shape {tuple(m.shape)}")
    m = m.reshape((-1,) + m.shape[-3:])  # [B, T, h, w]
    return tuple(int(i) for i in np.flatnonzero(~(m != 0).any(axis=(0, 2, 3))))


def box_mask(total: int, hw: tuple[int, int], box, box_frames, image_hw) -> np.ndarray:
    """Mask [T, h, w]: 1 on the latent cells the pixel box touches on box_frames, else 0."""
    if image_hw is None:
        raise InputError("task 'inpaint' needs image_hw, the (H, W) pixel size the box refers to")
    (img_h, img_w), (fy, fx) = check_hw("image_hw", image_hw), _factors(hw, image_hw)
    if not isinstance(box, (tuple, list, np.ndarray)) or len(box) != 4:
        raise InputError(f"box must be 4 pixel coordinates (y0, x0, y1, x1), got {shorten(box)}")
    y0, x0, y1, x1 = (check_int("box coordinate", v, 0, None) for v in box)
    if not (y0 < y1 <= img_h and x0 < x1 <= img_w):
        raise InputError(
            f"box {(y0, x0, y1, x1)} must be non-empty and inside the image: "
            f"0 <= y0 < y1 <= {img_h}, 0 <= x0 < x1 <= {img_w}"
        )
    frames = range(total) if box_frames is None else frame_indices("box_frames", box_frames, total)
    mask = np.zeros((total,) + hw, dtype=np.float32)
    rows = slice(y0 // fy, -(-y1 // fy))  # every latent cell the box touches
    cols = slice(x0 // fx, -(-x1 // fx))
    mask[list(frames), rows, cols] = 1.0
    return mask


def _check_binary(mask) -> np.ndarray:
    """An array of bool, int or float values that are all 0 or 1 (NaN refused)."""
    m = as_array(mask, "mask", "[T, h, w] or [B, T, h, w] of 0 (given) / 1 (generate)")
    if m.dtype.kind not in "biuf":
        raise InputError(f"mask must hold bool, int or float values, got dtype {m.dtype}")
    if m.dtype.kind == "f" and np.isnan(m).any():
        raise InputError("mask contains NaN; values must be 0 (given) or 1 (generate)")
    ok = np.isin(m, (0, 1))
    if not ok.all():
        raise InputError(f"mask values must be 0 (given) or 1 (generate), found {np.unique(m[~ok])[:5].tolist()}")
    return m


def frame_indices(name: str, indices, total: int) -> tuple[int, ...]:
    """Frame positions: at least one, each an integer in 0..total−1, none twice (two frames for one position
    would silently lose one; a position named twice means nothing more than once)."""
    if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
        raise InputError(f"{name} must be a sequence of frame indices in 0..{total - 1}, got {shorten(indices)}")
    out = tuple(check_int(f"{name} index", i, 0, total - 1) for i in indices)
    if not out:
        raise InputError(f"{name} is empty; name at least one frame position in 0..{total - 1}")
    seen: set[int] = set()
    twice = sorted({i for i in out if i in seen or seen.add(i)})
    if twice:
        raise InputError(f"{name} names frame position(s) {twice} more than once; each position at most once")
    return out


def check_hw(name: str, hw) -> tuple[int, int]:
    if not isinstance(hw, (tuple, list)) or len(hw) != 2:
        raise InputError(f"{name} must be (height, width), got {shorten(hw)}")
    return check_int(f"{name} height", hw[0], 1, None), check_int(f"{name} width", hw[1], 1, None)


def _factors(latent_hw: tuple[int, int], image_hw) -> tuple[int, int]:
    """Pixels per latent cell along (y, x); the image size must be a whole multiple of the latent size."""
    (h, w), (img_h, img_w) = latent_hw, check_hw("image_hw", image_hw)
    if img_h % h or img_w % w:
        raise InputError(f"image_hw {(img_h, img_w)} must be a whole multiple of latent_hw {(h, w)}")
    return img_h // h, img_w // w


def check_not_all_given(mask: np.ndarray, what: str) -> np.ndarray:
    """Refuse a mask (or any batch item of one) with nothing to generate."""
    m = mask.reshape((-1,) + mask.shape[-3:])  # [B, T, h, w]
    empty = np.flatnonzero(~(m != 0).any(axis=(1, 2, 3)))
    if empty.size:
        where = "" if mask.ndim == 3 else f" (batch items {empty.tolist()})"
        raise InputError(f"{what} mask gives every frame{where}: there is nothing to generate")
    return mask
