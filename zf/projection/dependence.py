"""How much a method's projections depend on the image: the median pairwise correlation of a unit's k projections.

The deconvnet (paper section 2.1) reverses a ReLU by a ReLU on the signal coming down, which does not look at the
forward pass; the image enters its projection only through the max-pool switches.  On a network with no max pool
before the layer (EfficientNet, MobileNet, ConvNeXt, RegNet...) a unit's deconvnet projection is one fixed picture
translated to where the unit sits, whatever the image: its nine projections correlate at 1.0.  Guided
backpropagation keeps the forward pass's ReLU masks, so its projections draw the objects in the image on any
network.  This module measures that, so a run can say it (``summary.json``: ``image_dependence``; the log; the
gallery).  ``edge_alignment`` measures the other half of a readable projection: whether it draws the edges of the
patch it came from (the paper's Fig. 2 shows projections that trace the patch's structure, section 4).

    >>> v = image_dependence(proj)          # proj (U, k, 3, h, w): a layer's stored projections
    >>> a = edge_alignment(proj, patches)   # patches (U, k, h, w, 3): the receptive-field patches
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.overrides import TorchFunctionMode

from zf.net.layers import resolve_layer
from zf.errors import ConfigError, LayerError
from zf.net.modules import eval_mode, find_module

DEFAULT_THRESHOLD = 0.95  # the run warns above this (configs/run.yaml: image_dependence_warn)


def image_dependence(proj: np.ndarray, valid: np.ndarray | None = None) -> float:
    """The median over units of the median Pearson correlation between the pairs of a unit's projections (each
    flattened over channels and pixels, in the unit's receptive-field window): 1.0 when every image gives the
    same picture, near 0 when they share nothing.  ``proj`` (U, k, 3, h, w); ``valid`` (U, k) bool marks the
    filled ranks.  Units with fewer than two non-constant projections are left out; NaN if none is left."""
    proj = np.asarray(proj, np.float32)
    u, k = proj.shape[:2]
    valid = np.ones((u, k), bool) if valid is None else np.asarray(valid, bool)
    meds = []
    for i in range(u):
        v = proj[i, valid[i]].reshape(int(valid[i].sum()), -1).astype(np.float64)
        v = v - v.mean(1, keepdims=True)
        norm = np.sqrt((v * v).sum(1))
        v = v[norm > 0] / norm[norm > 0, None]
        if len(v) < 2:
            continue
        c = v @ v.T
        meds.append(float(np.median(c[np.triu_indices(len(v), 1)])))
    return float(np.median(meds)) if meds else float("nan")


def _edge_maps(proj: np.ndarray, patch: np.ndarray, inside: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Blurred projection magnitude (sum of |channels|) and blurred edge magnitude (Sobel on the patch's grey
    levels), both (h, w).  Outside the image (``inside`` False) both are zero before the blur, and the patch's grey
    fill there is replaced by the nearest image pixel first, so the fill's border is not an edge."""
    mag = np.where(inside, np.abs(np.asarray(proj, np.float64)).sum(0), 0.0)
    grey = np.asarray(patch, np.float64).mean(-1)
    if not inside.all():
        idx = ndimage.distance_transform_edt(~inside, return_distances=False, return_indices=True)
        grey = grey[tuple(idx)]
    edges = np.hypot(ndimage.sobel(grey, 0, mode="nearest"), ndimage.sobel(grey, 1, mode="nearest"))
    edges = np.where(inside, edges, 0.0)
    return ndimage.gaussian_filter(mag, sigma), ndimage.gaussian_filter(edges, sigma)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def edge_alignment(proj: np.ndarray, patches: np.ndarray, inside: np.ndarray | None = None,
                   valid: np.ndarray | None = None, sigma: float = 2.0) -> dict[str, float]:
    """Whether projections draw the edges of their own patches: the Pearson correlation, over the pixels of the
    receptive-field window that lie inside the image, between a projection's blurred magnitude and its patch's
    blurred edge map (Sobel magnitude of the grey levels; Gaussian blur of ``sigma`` pixels on both, so that a
    stroke one pixel off still counts).  The paper has no such number; its Fig. 2 is judged by eye.

    ``proj`` (U, k, 3, h, w); ``patches`` (U, k, h, w, 3) in any range; ``inside`` (U, k, h, w) bool, the window's
    pixels inside the image (default all); ``valid`` (U, k) bool, the filled ranks.  Returns ``{"own": median over
    rows, "shuffled": the same with each projection paired with the patch of the row half the list away (another
    unit's or image's: the chance level that the shared window shape and centre bias give), "rows": rows
    counted}``.  Rows whose projection is zero or whose patch is flat are left out; NaN when none is left.
    Outside the image both maps are zero before the blur and the patch's grey fill is not an edge
    (``_edge_maps``), so a window running past the image border adds nothing."""
    if not sigma >= 0:
        raise ConfigError(f"sigma={sigma!r}: the blur before correlating is a width in pixels, 0 or more (default 2)")
    proj = np.asarray(proj, np.float32)
    u, k = proj.shape[:2]
    valid = np.ones((u, k), bool) if valid is None else np.asarray(valid, bool)
    inside = np.ones((u, k) + proj.shape[-2:], bool) if inside is None else np.asarray(inside, bool)
    rows = [(i, j) for i in range(u) for j in range(k) if valid[i, j] and inside[i, j].sum() >= 2]
    maps = {r: _edge_maps(proj[r], patches[r], inside[r], sigma) for r in rows}
    own, shuffled = [], []
    for n, r in enumerate(rows):
        own.append(_pearson(maps[r][0][inside[r]], maps[r][1][inside[r]]))
        other = rows[(n + max(1, len(rows) // 2)) % len(rows)]
        both = inside[r] & inside[other]
        if other != r and both.sum() >= 2:
            shuffled.append(_pearson(maps[r][0][both], maps[other][1][both]))
    own, shuffled = np.array(own, np.float64), np.array(shuffled, np.float64)
    return {"own": _median(own), "shuffled": _median(shuffled), "rows": int(np.isfinite(own).sum())}


def _median(v: np.ndarray) -> float:
    return float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")


class _Pools(TorchFunctionMode):
    """Counts, during a forward, whether a max pool has run and how many convolutions and linear maps have."""

    def __init__(self):
        super().__init__()
        self.seen = False
        self.weighted = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if "max_pool" in name:
            self.seen = True
        elif name.startswith("conv") or name == "linear":
            self.weighted += 1
        return func(*args, **(kwargs or {}))


def reverse_context(model: nn.Module, layer, input_size: int | tuple[int, int] = 224,
                    tap: str = "relu") -> tuple[bool, int]:
    """What a projection from ``layer`` (a name or module path) passes back through: (whether a max pool, module or
    functional call, runs in the forward before the layer is read, i.e. whether the deconvnet has switches there;
    how many convolutions and linear maps run up to it).  A module that runs several times is judged at its last
    call, as ``capture`` reads it."""
    path = resolve_layer(model, layer, tap).path
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    p0 = next(model.parameters(), None)
    x = torch.zeros(1, 3, h, w, dtype=p0.dtype if p0 is not None else None,
                    device=p0.device if p0 is not None else None)
    mode = _Pools()
    at_layer: list[tuple[bool, int]] = []
    hook = find_module(model, path).register_forward_hook(lambda *_: at_layer.append((mode.seen, mode.weighted)))
    try:
        with eval_mode(model), torch.no_grad(), mode:
            model(x)
    finally:
        hook.remove()
    if not at_layer:
        raise LayerError(f"layer {path!r} of {type(model).__name__} does not run in its forward; pick a module that "
                         "does (list_layers=true)")
    return at_layer[-1]


def max_pool_before(model: nn.Module, layer, input_size: int | tuple[int, int] = 224, tap: str = "relu") -> bool:
    """Whether a max pool runs in the forward before ``layer`` is read: where the deconvnet has switches, and so
    where its projections can depend on the image (``reverse_context``)."""
    return reverse_context(model, layer, input_size, tap)[0]


def dependence_warning(layer: str, method: str, value: float, threshold: float, switches: bool,
                       weighted: int | None = None) -> str | None:
    """The run's warning when ``value`` (``image_dependence``) exceeds ``threshold``, saying why, or ``None``.
    ``weighted``: the convolutions up to the layer (``reverse_context``); at the first one (1) every method's
    projection of a unit is its own filter whatever the image (the paper's Fig. 2, layer 1), which is no warning:
    ``None``."""
    if not value > threshold or weighted == 1:
        return None
    head = (f"{layer} ({method}): a unit's projections correlate at {value:.2f} (median over pairs and units, above "
            f"image_dependence_warn={threshold}): they do not depend on the image")
    if method == "deconvnet" and not switches:
        why = ("there is no max pool before this layer, so the deconvnet has no switches, its only route to the "
               "image; use method=guided (guided backpropagation keeps the forward pass's ReLU masks)")
    elif method == "deconvnet":
        why = "the few max-pool switches before this layer barely differ between images; method=guided may show more"
    else:
        why = "the reverse pass barely changes with the image at this layer"
    return f"{head}: {why}"


__all__ = ["image_dependence", "edge_alignment", "reverse_context", "max_pool_before", "dependence_warning",
           "DEFAULT_THRESHOLD"]
