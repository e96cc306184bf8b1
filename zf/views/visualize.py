"""Patches and projections of mined units (paper Fig. 2), as arrays and figures.

    patches, projections = unit_views(model, ImageSource(dataset, Normalize()), table, "relu4", units=range(16))
    fig, ax = overview_figure(patches, projections, units=range(16), title="layer 4")

Patches are cropped by the exact receptive field; where the field runs past the image border the missing part is
filled with grey (``PATCH_FILL``), not shifted.  Projections are cropped to the same box; ``display`` stretches each one
for viewing.  A field larger than the image is shown cut to the image along that axis (``view_boxes``).
"""
from __future__ import annotations

import warnings
from typing import Collection, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from zf.data import ImageSource
from zf.errors import ConfigError
from zf.mining.table import TopK
from zf.projection.api import Target, resolve_target, target_windows
from zf.projection.rules import ProjectionOptions
from zf.views.plotting import image_grid

#: how a projection is stretched for display (``display``)
DISPLAYS = ("symmetric", "minmax")


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, fill: float = 128,
               inside: torch.Tensor | None = None) -> torch.Tensor:
    """Crop boxes from images, padding with ``fill`` where a box runs past the border.

    images: (R, C, H, W) (one image per box); boxes: (R, 4) y0, y1, x0, x1 (half-open, all of one size h x w);
    ``inside`` (R, 4), optional: boxes to keep, pixels outside them are ``fill`` too.  Returns (R, C, h, w) of
    ``images``' dtype."""
    r, c, h, w = images.shape
    ys = boxes[:, 0:1] + torch.arange(int(boxes[0, 1] - boxes[0, 0]))  # (R, h)
    xs = boxes[:, 2:3] + torch.arange(int(boxes[0, 3] - boxes[0, 2]))
    vy, vx = (ys >= 0) & (ys < h), (xs >= 0) & (xs < w)
    if inside is not None:
        vy &= (ys >= inside[:, 0:1]) & (ys < inside[:, 1:2])
        vx &= (xs >= inside[:, 2:3]) & (xs < inside[:, 3:4])
    yc, xc = ys.clamp(0, h - 1), xs.clamp(0, w - 1)
    out = images[torch.arange(r)[:, None, None, None], torch.arange(c)[None, :, None, None],
                 yc[:, None, :, None], xc[:, None, None, :]]
    ok = (vy[:, :, None] & vx[:, None, :])[:, None]
    return torch.where(ok, out, torch.tensor(fill, dtype=images.dtype))


def view_boxes(boxes, height: int, width: int):
    """The windows a layer's views (patches and projections) show: the receptive-field boxes (R, 4: y0, y1, x0, x1)
    themselves, except along an axis where the field is larger than the image (ResNet-50's ``layer4``: 427 px on
    224 px images), where the view is the whole image.  Beyond the image such a field holds only padding and its
    projection only zeros, so the view keeps everything that is there: a 224 px view stores 3.6x fewer values than
    the 427 px field.  Pixels of the image outside the field stay ``fill`` in the patch (``unit_views``).
    Works on numpy arrays and tensors; the boxes of one layer all have one size, so all rows change together."""
    out = boxes.copy() if isinstance(boxes, np.ndarray) else boxes.clone()
    for lo, n in ((0, height), (2, width)):
        if len(out) and int(out[0, lo + 1] - out[0, lo]) > n:
            out[:, lo], out[:, lo + 1] = 0, n
    return out


def view_shape(table: TopK, image_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a layer's views on images of size ``image_hw`` (``view_boxes``)."""
    y0, y1, x0, x1 = (int(v) for v in table.box.reshape(-1, 4)[0])
    return min(y1 - y0, image_hw[0]), min(x1 - x0, image_hw[1])


def display(projection: np.ndarray | torch.Tensor, mode: str = "symmetric", percentile: float = 99.5,
            stats: dict | None = None) -> np.ndarray:
    """Projections (..., 3, s, s) float -> (..., s, s, 3) uint8 for viewing, each stretched on its own.

    ``symmetric``: zero is mid-grey and the ``percentile``-th percentile of the magnitudes reaches black or white
    (larger values saturate; sign stays visible).  A few isolated extreme pixels would otherwise leave the rest of the
    projection grey; 100 gives the plain max stretch.  ``minmax``: the projection's own range maps to 0..255.

    Any scale displays the same (real networks give values of 1e3-1e5; float32 holds them with room to spare).
    Non-finite values (a float16 overflow gives inf, a broken model NaN) are left out of each projection's stretch
    and drawn explicitly: +inf white, -inf black, NaN mid-grey.  They are counted and reported with a warning, never
    drawn silently; ``stats`` (a dict, optional) receives ``nonfinite`` (values), ``nan``, ``posinf``, ``neginf`` and
    ``nonfinite_projections`` (how many of the projections hold any)."""
    p = projection.detach().cpu().float().numpy() if isinstance(projection, torch.Tensor) else \
        np.asarray(projection, np.float32)
    if p.ndim < 3:
        raise ValueError(f"display: projections must be (..., 3, s, s), got shape {p.shape}")
    axes = (-3, -2, -1)
    if np.isfinite(p).all():  # the usual case: one pass
        nan = posinf = neginf = bad = np.zeros(p.shape, bool)
    else:
        nan, posinf, neginf = np.isnan(p), np.isposinf(p), np.isneginf(p)
        bad = nan | posinf | neginf
    n_bad = int(bad.sum())
    if n_bad:
        p = np.where(bad, 0.0, p)
    if mode == "symmetric":
        flat = np.abs(p).reshape(*p.shape[:-3], -1)
        if n_bad:  # the percentile of the finite values only
            flat = np.where(bad.reshape(flat.shape), np.nan, flat)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN projections: m = NaN, replaced below
                m = np.nanpercentile(flat, percentile, axis=-1) if flat.size else flat
            m = np.nan_to_num(m, nan=0.0)
        else:
            m = np.percentile(flat, percentile, axis=-1) if flat.size else flat
        m = np.asarray(m)[..., None, None, None] if flat.size else m
        v = 0.5 + p / np.maximum(2 * m, 1e-30)
    elif mode == "minmax":
        lo = np.where(bad, np.inf, p).min(axis=axes, keepdims=True) if p.size else p
        hi = np.where(bad, -np.inf, p).max(axis=axes, keepdims=True) if p.size else p
        lo, hi = np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(hi), hi, 0.0)
        v = (p - lo) / np.maximum(hi - lo, 1e-30)
    else:
        raise ConfigError(f"display mode {mode!r}: use display=symmetric or display=minmax")
    if n_bad:
        v = np.where(posinf, 1.0, np.where(neginf, 0.0, np.where(nan, 0.5, v)))
    v = np.clip(v * 255 + 0.5, 0, 255).astype(np.uint8)
    if stats is not None or n_bad:
        per = bad.reshape(*bad.shape[:-3], -1).any(-1) if bad.ndim > 3 else bad.any()
        info = {"nonfinite": n_bad, "nan": int(nan.sum()), "posinf": int(posinf.sum()),
                "neginf": int(neginf.sum()), "nonfinite_projections": int(np.sum(per)),
                "projections": int(np.prod(p.shape[:-3], dtype=np.int64))}
        if stats is not None:
            stats.update(info)
        if n_bad:
            warnings.warn(f"display: {n_bad} non-finite values ({info['nan']} NaN, {info['posinf']} +inf, "
                          f"{info['neginf']} -inf) in {info['nonfinite_projections']} of {info['projections']} "
                          "projections, drawn as +inf white, -inf black, NaN grey; compute projections in float32 "
                          "(float16 overflows above 65504)", stacklevel=2)
    return np.moveaxis(v, -3, -1)


def load_items(dataset, ids: Sequence[int]) -> torch.Tensor:
    items = [dataset[int(i)] for i in ids]
    bad = [int(i) for i, it in zip(ids, items) if it is None]
    if bad:
        raise RuntimeError(f"images {bad} of the table can no longer be read; re-run the mining")
    return torch.stack([it[0] for it in items])


def _unit_chunks(table: TopK, units: Sequence[int], per_chunk: int):
    """The filled slots of ``units`` in chunks of ``per_chunk`` units: (first unit's position, slot units ``uu``,
    slot ranks ``rr``, the distinct image ids, rows (R, 4: local image index, channel, y, x), boxes (R, 4))."""
    pos = {u: i for i, u in enumerate(table.units.tolist())}
    for c0 in range(0, len(units), per_chunk):
        chunk = units[c0:c0 + per_chunk]
        ti = np.array([pos[u] for u in chunk])
        img = table.image[ti]                                   # (u, k)
        valid = img >= 0
        ids = np.unique(img[valid])
        if len(ids) == 0:
            continue
        local = {int(g): i for i, g in enumerate(ids)}
        uu, rr = np.nonzero(valid)
        rows = torch.tensor(np.stack([[local[int(g)] for g in img[uu, rr]], np.array(chunk)[uu],
                                      table.y[ti][uu, rr], table.x[ti][uu, rr]], 1), dtype=torch.long)
        yield c0, uu, rr, ids, rows, torch.as_tensor(table.box[ti][uu, rr])


PATCH_FILL = 128  # the grey of a patch's pixels outside the image or the receptive field


def _views(source: ImageSource, table: TopK, units: Sequence[int], project=None, with_patches: bool = True,
           bar=None, units_per_chunk: int = 128) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Patches (``with_patches``) and projections (``project(raw images, rows) -> (windows, corners)``, if given) of
    ``units``, reading each chunk's images once for both; ``bar`` a progress bar, one step a chunk."""
    units = [int(u) for u in units]
    sh, sw = view_shape(table, image_hw(source.dataset))
    patches = np.zeros((len(units), table.k, sh, sw, 3), np.uint8) if with_patches else None
    projections = np.zeros((len(units), table.k, 3, sh, sw), np.float32) if project is not None else None
    for c0, uu, rr, ids, rows, boxes in _unit_chunks(table, units, units_per_chunk):
        raw = load_items(source.dataset, ids)                        # uint8 (n, 3, H, W)
        views = view_boxes(boxes, *raw.shape[2:])
        if project is not None:
            win, corners = project(raw, rows)
            projections[c0 + uu, rr] = in_boxes(win.cpu().float().numpy(), corners.cpu().numpy(), views.numpy(),
                                                 (sh, sw))
        if with_patches:
            crops = crop_boxes(raw[rows[:, 0]], views, PATCH_FILL, inside=boxes)  # (R, 3, sh, sw) uint8
            patches[c0 + uu, rr] = crops.permute(0, 2, 3, 1).numpy()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return patches, projections


def _projector(model: nn.Module, source: ImageSource, target: Target, options: ProjectionOptions):
    """``project(raw images, rows)`` for ``_views``: normalised on the source's device, ``target_windows``."""
    normalize = source.normalize.to(source.device)

    def project(raw: torch.Tensor, rows: torch.Tensor):
        with torch.no_grad():
            x = normalize(raw.to(source.device))
        return target_windows(model, x, rows.to(source.device), target, options)
    return project


def _bar(target: Target, options: ProjectionOptions, units: Sequence[int], progress: bool, per_chunk: int = 128):
    return tqdm(total=-(-len(units) // per_chunk), desc=f"projecting {target.name} ({options.method})",
                disable=not progress, mininterval=5)


def unit_patches(source: ImageSource, table: TopK, units: Sequence[int]) -> np.ndarray:
    """The k receptive-field patches of each unit in ``units``: uint8 (U, k, h, w, 3), (h, w) the field cut to the
    image size (``view_shape``); slots of empty ranks (fewer than k images) are zero, pixels outside the image or
    the field ``PATCH_FILL``."""
    return _views(source, table, units)[0]


def unit_projections(model: nn.Module, source: ImageSource, table: TopK, target: Target, units: Sequence[int],
                     options: ProjectionOptions, progress: bool = False) -> np.ndarray:
    """The k projections of each unit in ``units`` by ``options`` (the method, seed mode, LRN rule and crop), cut to
    the same views as ``unit_patches``: float32 (U, k, 3, h, w); slots of empty ranks are zero."""
    return _views(source, table, units, _projector(model, source, target, options), False,
                  _bar(target, options, units, progress))[1]


def unit_views(model: nn.Module, source: ImageSource, table: TopK, layer: Target | int | str,
               units: Sequence[int], options: ProjectionOptions | None = None, tap: str = "relu",
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The k patches and k projections of each unit in ``units`` (``unit_patches`` and ``unit_projections`` from
    one read of the images).

    Args:
        source: the mined data set (``table.image`` indexes it), its normalisation and the model's device.
        table: the layer's ``TopK``.
        layer: the layer's ``Target`` (``zf.projection.api.resolve_target``), or its name as in the table (resolved
            here at ``tap``).
        options: the projection's method, seed mode, LRN rule and crop (default: the paper's deconvnet).
    Returns:
        patches uint8 (U, k, h, w, 3) and projections float32 (U, k, 3, h, w), (h, w) the receptive-field size
        cut to the image size (``view_shape``); slots of empty ranks (fewer than k images) are zero.
    """
    target = layer if isinstance(layer, Target) else resolve_target(model, layer, tap, source.image_size)
    options = options or ProjectionOptions()
    return _views(source, table, units, _projector(model, source, target, options), True,
                  _bar(target, options, units, progress))


def image_hw(dataset) -> tuple[int, int]:
    """The (H, W) of the data set's images: its ``size`` (``zf.data`` sets are square), else its first image's."""
    size = getattr(dataset, "size", None)
    if isinstance(size, int):
        return size, size
    for i in range(len(dataset)):
        item = dataset[i]
        if item is not None:
            return tuple(item[0].shape[1:])
    return 1 << 30, 1 << 30  # no readable image: nothing to clip against


def in_boxes(win: np.ndarray, corners: np.ndarray, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Windows (R, 3, h, w) with image corners (R, 2) placed into their views (R, 4: y0, y1, x0, x1; all of one
    ``shape``).

    The deconvnet's windows are the receptive fields themselves, except on images smaller than a field, where they
    are cut to the image; then the part of the window inside the view is copied (a projection is zero outside its
    unit's receptive field)."""
    r, c, h, w = win.shape
    if (h, w) == tuple(shape) and (corners == boxes[:, [0, 2]]).all():
        return win
    out = np.zeros((r, c, *shape), win.dtype)
    for i in range(r):
        (cy, cx), (y0, y1, x0, x1) = corners[i], boxes[i]
        oy0, oy1 = max(cy, y0), min(cy + h, y1)
        ox0, ox1 = max(cx, x0), min(cx + w, x1)
        if oy1 > oy0 and ox1 > ox0:
            out[i, :, oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0] = win[i, :, oy0 - cy:oy1 - cy, ox0 - cx:ox1 - cx]
    return out


def unit_image(patches: np.ndarray, projections: np.ndarray | None, mode: str = "symmetric", pad: int = 2,
               gap: int = 8, shown: np.ndarray | None = None) -> np.ndarray:
    """One unit as the paper shows it: a 3x3 grid of projections beside a 3x3 grid of the patches.

    patches: uint8 (k, s, s, 3); projections: float (k, 3, s, s), or ``shown``: the same already through
    ``display`` (uint8 (k, s, s, 3)).  Returns uint8 (H, W, 3)."""
    k = len(patches)
    cols = int(np.ceil(np.sqrt(k)))
    left = image_grid(shown if shown is not None else display(projections, mode), cols, pad)
    right = image_grid(patches, cols, pad)
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, np.uint8)
    out[:left.shape[0], :left.shape[1]] = left
    out[:right.shape[0], left.shape[1] + gap:] = right
    return out


#: Text colour and frame of a dead unit (one that never fired on the data) in the figures.
DEAD_COLOUR = "#c62828"


def overview_figure(patches: np.ndarray, projections: np.ndarray, units: Sequence[int], title: str = "",
                    mode: str = "symmetric", ncols: int | None = None, dpi: float = 110,
                    dead: Collection[int] = (), min_tile_px: int = 240, max_pixels: float = 6e6):
    """Fig. 2 of the paper for one layer: for each unit, its k projections beside its k patches.

    patches (U, k, s, s, 3) uint8, projections (U, k, 3, s, s).  Returns (fig, axes) with axes (rows, cols).

    Every pixel is shown: the figure is sized from the tiles and ``dpi`` (pass the dpi it will be saved at) so
    that each unit's tile (``unit_image``) is drawn at its native size, or enlarged by a whole factor (nearest,
    exact) until it is at least ``min_tile_px`` wide (layer 1's 7 px fields).  Saved at another dpi, matplotlib's
    antialiasing filter resamples it (never nearest-neighbour subsampling, which turns fine structure into
    speckle).  ``dead``: units that never fired on the data; their title says so and their tile is framed in red
    (their patches are arbitrary images, not what the unit responds to).  A figure that would pass ``max_pixels``
    at native size (16 units of a layer whose fields span a 224 px image: 15 Mpx, a 36 MB PNG) has its tiles
    resampled down with an antialiasing filter (Lanczos) to fit; the per-unit images keep every pixel."""
    import matplotlib.pyplot as plt

    units = [int(u) for u in units]
    dead = {int(u) for u in dead}
    tiles = [unit_image(p, q, mode) for p, q in zip(patches, projections)]
    ncols = max(1, ncols or int(np.ceil(np.sqrt(len(tiles)))))
    nrows = max(1, int(np.ceil(len(tiles) / ncols)))
    th, tw = (tiles[0].shape[:2] if tiles else (1, 1))
    zoom = max(1, int(np.ceil(min_tile_px / tw)))
    tiles = [t.repeat(zoom, 0).repeat(zoom, 1) if zoom > 1 else t for t in tiles]
    th, tw = th * zoom, tw * zoom
    pt = dpi / 72
    est = (ncols * (tw + 8 * pt) + 8 * pt) * ((nrows * (th + 22 * pt)) + 30 * pt)
    if est > max_pixels:
        f = float(np.sqrt(max_pixels / est))
        th, tw = max(1, int(th * f)), max(1, int(tw * f))
        tiles = [np.asarray(Image.fromarray(t).resize((tw, th), Image.LANCZOS)) for t in tiles]
    shown_dead = sorted(dead & set(units[:len(tiles)]))
    if shown_dead:
        title = (title + " \u00b7 " if title else "") + f"{len(shown_dead)} dead unit(s) marked in red"
    # the layout in pixels at ``dpi``: a title band over each tile, a gap around, a band for the figure title
    pt = dpi / 72
    label_h, gap = int(np.ceil(14 * pt)), int(np.ceil(8 * pt))
    top = int(np.ceil(22 * pt)) if title else 0
    w = ncols * (tw + gap) + gap
    h = top + nrows * (th + label_h + gap) + gap
    fig = plt.figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    axes = np.empty((nrows, ncols), dtype=object)
    for i in range(nrows * ncols):
        r, c = divmod(i, ncols)
        x0 = gap + c * (tw + gap)
        y0 = h - top - (r + 1) * (th + label_h + gap) + gap  # from the bottom, in pixels
        ax = fig.add_axes((x0 / w, y0 / h, tw / w, th / h))
        ax.set_xticks([])
        ax.set_yticks([])
        axes[r, c] = ax
        if i >= len(tiles):
            ax.axis("off")
            continue
        u = units[i]
        # 'antialiased': nearest at exactly 1x and 2x (this dpi), a Hanning filter at any other scale
        ax.imshow(tiles[i], interpolation="antialiased", aspect="equal")
        for side in ax.spines.values():
            side.set_visible(u in dead)
            side.set_color(DEAD_COLOUR)
            side.set_linewidth(2)
        if u in dead:
            ax.set_title(f"unit {u}: dead, never fires on this data (patches not meaningful)", fontsize=8,
                         color=DEAD_COLOUR)
        else:
            ax.set_title(f"unit {u}", fontsize=8)
    if title:
        fig.suptitle(title, y=1 - (4 * pt) / h, va="top", fontsize=11)
    return fig, axes
