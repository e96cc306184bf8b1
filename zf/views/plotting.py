"""Pictures from arrays.  Functions return arrays or ``(fig, ax)``; they never save (callers do)."""
from __future__ import annotations

import math

import numpy as np
import torch


def to_uint8(x: np.ndarray | torch.Tensor, per_image: bool = True) -> np.ndarray:
    """Contrast-stretch to [0, 255]: (..., C, H, W) or (H, W, C) floats -> uint8 of the same layout.

    ``per_image`` stretches each leading-index image on its own (the paper's display of projections)."""
    a = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if per_image and a.ndim == 4:
        lo = a.min(axis=(1, 2, 3), keepdims=True)
        hi = a.max(axis=(1, 2, 3), keepdims=True)
    else:
        lo, hi = a.min(), a.max()
    return np.clip((a - lo) / np.maximum(hi - lo, 1e-12) * 255 + 0.5, 0, 255).astype(np.uint8)


def filter_grid(weight: torch.Tensor, pad: int = 1, scale: int = 4, ncols: int | None = None) -> np.ndarray:
    """First-layer filters as one image: weight (C_out, 3, k, k) -> (H, W, 3) uint8, each filter contrast-stretched
    on its own (as in the paper's Fig. 6), upsampled ``scale`` times, on a white grid."""
    w = weight.detach().float().cpu()
    if w.shape[1] != 3:
        w = w[:, :1].repeat(1, 3, 1, 1)
    n, _, k, _ = w.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    tiles = to_uint8(w)  # (n, 3, k, k)
    tiles = tiles.repeat(scale, axis=2).repeat(scale, axis=3)
    s = k * scale
    out = np.full((nrows * (s + pad) + pad, ncols * (s + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncols)
        out[pad + r * (s + pad): pad + r * (s + pad) + s, pad + c * (s + pad): pad + c * (s + pad) + s] = \
            tiles[i].transpose(1, 2, 0)
    return out


def image_grid(images: np.ndarray, ncols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows*(H+pad)+pad, ncols*(W+pad)+pad, 3) mosaic, row-major."""
    n, h, w, c = images.shape
    nrows = int(math.ceil(n / ncols))
    out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), fill, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[i]
    return out


def training_curves(history: list[dict]):
    """Loss and accuracy per epoch from a training history -> (fig, axes)."""
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train")
    if any("val_loss" in h for h in history):
        e2 = [h["epoch"] for h in history if "val_loss" in h]
        ax[0].plot(e2, [h["val_loss"] for h in history if "val_loss" in h], label="val")
        ax[1].plot(e2, [100 * h["val_top1"] for h in history if "val_top1" in h], label="val top-1")
    ax[1].plot(ep, [100 * h["train_top1"] for h in history], label="train top-1 (augmented)")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("loss"), ax[0].legend()
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel("accuracy %"), ax[1].legend()
    fig.tight_layout()
    return fig, ax
