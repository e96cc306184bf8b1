"""What both projection engines share: checking a projection's inputs, and cutting receptive-field windows out of
maps or pasting them back onto a canvas (a unit's projection is zero outside its receptive field)."""
from __future__ import annotations

import torch

from zf.errors import ConfigError
from zf.projection.rules import check_options


def check_inputs(images, rows, method, seed_mode):
    """``rows`` as a long (R, 4) tensor on ``images``'s device, after checking the method, seed_mode, image batch and
    image indices (``zf.errors.ConfigError`` / ``IndexError``)."""
    check_options(method, seed_mode)
    if images.dim() != 4:
        raise ConfigError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    rows = torch.as_tensor(rows, device=images.device).long().reshape(-1, 4)
    if len(rows) and (int(rows[:, 0].min()) < 0 or int(rows[:, 0].max()) >= len(images)):
        raise IndexError(f"rows: image index out of range for {len(images)} images")
    return rows


def window_index(o: torch.Tensor, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions o[:, None] + arange(size) clamped into [0, size_of_map n), and whether each was inside: (R, size)."""
    pos = o[:, None] + torch.arange(size, device=o.device)
    return pos.clamp(0, n - 1), (pos >= 0) & (pos < n)


def gather(t: torch.Tensor, img: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, h: int, w: int):
    """Windows of t (N, C, H, W): for each row r, t[img[r], :, oy[r]:oy[r]+h, ox[r]:ox[r]+w] -> (R, C, h, w), with
    clamped values outside the map, and the (R, 1, h, w) bool mask of positions inside it."""
    _, c, hh, ww = t.shape
    ys, vy = window_index(oy, hh, h)
    xs, vx = window_index(ox, ww, w)
    ch = torch.arange(c, device=t.device)
    out = t[img[:, None, None, None], ch[None, :, None, None], ys[:, None, :, None], xs[:, None, None, :]]
    return out, vy[:, None, :, None] & vx[:, None, None, :]


def inside(oy, ox, h, w, hh, ww) -> torch.Tensor:
    _, vy = window_index(oy, hh, h)
    _, vx = window_index(ox, ww, w)
    return vy[:, None, :, None] & vx[:, None, None, :]


def paste(win: torch.Tensor, corners: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Windows (R, C, s, s) with top-left corners (R, 2) onto a zero canvas (R, C, H, W), clipped at the borders."""
    r, c, h, w = win.shape
    hh, ww = hw
    ys, vy = window_index(corners[:, 0], hh, h)
    xs, vx = window_index(corners[:, 1], ww, w)
    ok = vy[:, None, :, None] & vx[:, None, None, :]
    flat = (ys[:, None, :, None] * ww + xs[:, None, None, :]).expand(r, c, h, w).reshape(r, c, -1)
    vals = torch.where(ok, win, 0).reshape(r, c, -1)  # clamped positions outside add zeros
    return win.new_zeros(r, c, hh * ww).scatter_add_(2, flat, vals).view(r, c, hh, ww)


__all__ = ["check_inputs", "window_index", "gather", "inside", "paste"]
