"""Patches and projections of mined units (paper Fig. 2), as arrays and figures.

    patches, projections = unit_views(model, dataset, table, "relu4", units=range(16))
    fig, ax = overview_figure(patches, projections, units=range(16), title="layer 4")

Patches are cropped by the exact receptive field; where the field runs past the image border the missing part is
filled with grey (``fill``), not shifted.  Projections are cropped to the same box; ``display`` stretches each one
for viewing.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .data import Normalize
from .deconv import project_windows
from .plotting import image_grid
from .results import TopK


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, fill: float = 128) -> torch.Tensor:
    """Crop square boxes from images, padding with ``fill`` where a box runs past the border.

    images: (R, C, H, W) (one image per box); boxes: (R, 4) y0, y1, x0, x1 (half-open, all of one size s).
    Returns (R, C, s, s) of ``images``' dtype."""
    r, c, h, w = images.shape
    s = int(boxes[0, 1] - boxes[0, 0])
    ar = torch.arange(s)
    ys = boxes[:, 0:1] + ar          # (R, s)
    xs = boxes[:, 2:3] + ar
    vy, vx = (ys >= 0) & (ys < h), (xs >= 0) & (xs < w)
    yc, xc = ys.clamp(0, h - 1), xs.clamp(0, w - 1)
    out = images[torch.arange(r)[:, None, None, None], torch.arange(c)[None, :, None, None],
                 yc[:, None, :, None], xc[:, None, None, :]]
    ok = (vy[:, :, None] & vx[:, None, :])[:, None]
    return torch.where(ok, out, torch.tensor(fill, dtype=images.dtype))


def display(projection: np.ndarray | torch.Tensor, mode: str = "symmetric", percentile: float = 99.5) -> np.ndarray:
    """Projections (..., 3, s, s) float -> (..., s, s, 3) uint8 for viewing, each stretched on its own.

    ``symmetric``: zero is mid-grey and the ``percentile``-th percentile of the magnitudes reaches black or white
    (larger values saturate; sign stays visible).  A few isolated extreme pixels would otherwise leave the rest of the
    projection grey; 100 gives the plain max stretch.  ``minmax``: the projection's own range maps to 0..255."""
    p = projection.detach().cpu().float().numpy() if isinstance(projection, torch.Tensor) else \
        np.asarray(projection, np.float32)
    axes = (-3, -2, -1)
    if mode == "symmetric":
        flat = np.abs(p).reshape(*p.shape[:-3], -1)
        m = np.percentile(flat, percentile, axis=-1)[..., None, None, None] if flat.size else flat
        v = 0.5 + p / np.maximum(2 * m, 1e-12)
    elif mode == "minmax":
        lo, hi = p.min(axis=axes, keepdims=True), p.max(axis=axes, keepdims=True)
        v = (p - lo) / np.maximum(hi - lo, 1e-12)
    else:
        raise ValueError(f"display mode {mode!r}: use symmetric or minmax")
    v = np.clip(v * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.moveaxis(v, -3, -1)


def _load(dataset, ids: Sequence[int]) -> torch.Tensor:
    items = [dataset[int(i)] for i in ids]
    bad = [int(i) for i, it in zip(ids, items) if it is None]
    if bad:
        raise RuntimeError(f"images {bad} of the table can no longer be read; re-run the mining")
    return torch.stack([it[0] for it in items])


def unit_views(model: nn.Module, dataset, table: TopK, layer: str, units: Sequence[int],
               method: str = "deconvnet", tap: str = "relu", seed: str = "activation", norm: str = "identity",
               normalize: Normalize | None = None, fill: int = 128, device: str | torch.device = "cpu",
               units_per_chunk: int = 128, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The k patches and k projections of each unit in ``units``.

    Args:
        dataset: the mined data set (``table.image`` indexes it); items (uint8 (3, H, W), label, index).
        table: the layer's ``TopK``.
        layer: the layer's name (as in the table).
    Returns:
        patches uint8 (U, k, s, s, 3) and projections float32 (U, k, 3, s, s), s = receptive-field size; slots of
        empty ranks (fewer than k images) are zero.
    """
    from tqdm.auto import tqdm

    normalize = (normalize or Normalize()).to(device)
    units = [int(u) for u in units]
    k = table.k
    s = int(table.box[0, 0, 1] - table.box[0, 0, 0])
    patches = np.zeros((len(units), k, s, s, 3), np.uint8)
    projections = np.zeros((len(units), k, 3, s, s), np.float32)
    pos = {u: i for i, u in enumerate(table.units.tolist())}
    for c0 in tqdm(range(0, len(units), units_per_chunk), desc=f"projecting {layer} ({method})",
                   disable=not progress, mininterval=5):
        chunk = units[c0:c0 + units_per_chunk]
        ti = np.array([pos[u] for u in chunk])
        img = table.image[ti]                                   # (u, k)
        valid = img >= 0
        ids = np.unique(img[valid])
        if len(ids) == 0:
            continue
        raw = _load(dataset, ids)                               # uint8 (n, 3, H, W)
        local = {int(g): i for i, g in enumerate(ids)}
        uu, rr = np.nonzero(valid)
        rows = torch.tensor(np.stack([[local[int(g)] for g in img[uu, rr]], np.array(chunk)[uu],
                                      table.y[ti][uu, rr], table.x[ti][uu, rr]], 1), dtype=torch.long)
        with torch.no_grad():
            x = normalize(raw.to(device))
        win, corners = project_windows(model, x, rows.to(device), layer, method=method, seed=seed, tap=tap,
                                       norm=norm)
        boxes = torch.as_tensor(table.box[ti][uu, rr])
        crops = crop_boxes(raw[rows[:, 0]], boxes, fill)        # (R, 3, s, s) uint8
        patches[c0 + uu, rr] = crops.permute(0, 2, 3, 1).numpy()
        projections[c0 + uu, rr] = _in_boxes(win.cpu().float().numpy(), corners.cpu().numpy(), boxes.numpy(), s)
    return patches, projections


def _in_boxes(win: np.ndarray, corners: np.ndarray, boxes: np.ndarray, s: int) -> np.ndarray:
    """Windows (R, 3, h, w) with image corners (R, 2) placed into their (s x s) boxes (R, 4: y0, y1, x0, x1).

    The deconvnet's windows are the receptive fields themselves, except on images smaller than a field, where they
    are cut to the image; then the part of the window inside the box is copied (a projection is zero outside its
    unit's receptive field)."""
    r, c, h, w = win.shape
    if (h, w) == (s, s) and (corners == boxes[:, [0, 2]]).all():
        return win
    out = np.zeros((r, c, s, s), win.dtype)
    for i in range(r):
        (cy, cx), (y0, y1, x0, x1) = corners[i], boxes[i]
        oy0, oy1 = max(cy, y0), min(cy + h, y1)
        ox0, ox1 = max(cx, x0), min(cx + w, x1)
        if oy1 > oy0 and ox1 > ox0:
            out[i, :, oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0] = win[i, :, oy0 - cy:oy1 - cy, ox0 - cx:ox1 - cx]
    return out


def unit_image(patches: np.ndarray, projections: np.ndarray, mode: str = "symmetric", pad: int = 2,
               gap: int = 8) -> np.ndarray:
    """One unit as the paper shows it: a 3x3 grid of projections beside a 3x3 grid of the patches.

    patches: uint8 (k, s, s, 3); projections: float (k, 3, s, s).  Returns uint8 (H, W, 3)."""
    k = len(patches)
    cols = int(np.ceil(np.sqrt(k)))
    left = image_grid(display(projections, mode), cols, pad)
    right = image_grid(patches, cols, pad)
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, np.uint8)
    out[:left.shape[0], :left.shape[1]] = left
    out[:right.shape[0], left.shape[1] + gap:] = right
    return out


def overview_figure(patches: np.ndarray, projections: np.ndarray, units: Sequence[int], title: str = "",
                    mode: str = "symmetric", ncols: int | None = None):
    """Fig. 2 of the paper for one layer: for each unit, its k projections beside its k patches.

    patches (U, k, s, s, 3) uint8, projections (U, k, 3, s, s).  Returns (fig, ax)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    tiles = [unit_image(p, q, mode) for p, q in zip(patches, projections)]
    ncols = ncols or int(np.ceil(np.sqrt(len(tiles))))
    nrows = int(np.ceil(len(tiles) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 1.75 * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile, u in zip(axes.flat, tiles, units):
        ax.imshow(tile, interpolation="nearest")
        ax.set_title(f"unit {u}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig, axes
