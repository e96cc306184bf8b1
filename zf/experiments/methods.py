"""Deconvnet, guided backpropagation and the gradient side by side on the same top-9 rows.

The three methods differ only in the ReLU rule of the backward pass (``zf.projection.stack``): the paper's deconvnet
rectifies the signal, the gradient masks it with the forward ReLU, guided backpropagation (Springenberg et al. 2015)
does both. The same mined activations (``zf.mining.cache.mine_cached``) are projected with each, so differences come
from the method alone.

    python scripts/run.py experiment=methods layer=4
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from zf.data import ImageSource, Normalize
from zf.mining.table import TopK
from zf.projection.api import resolve_target
from zf.projection.rules import METHODS, ProjectionOptions
from zf.views.plotting import image_grid
from zf.views.results import save_figure
from zf.views.visualize import display, unit_projections, unit_views


def method_views(model: nn.Module, dataset, table: TopK, layer: str, units: Sequence[int],
                 methods: Sequence[str] = METHODS, normalize=None, device: str | torch.device = "cpu",
                 tap: str = "relu") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Patches uint8 (U, k, s, s, 3) and {method: projections float32 (U, k, 3, s, s)} of ``units`` of ``layer``
    (rows of ``table``)."""
    source = ImageSource(dataset, normalize or Normalize(), device=device)
    target = resolve_target(model, layer, tap, source.image_size)
    patches, first = unit_views(model, source, table, target, list(units), ProjectionOptions(methods[0]))
    return patches, {m: first if m == methods[0] else
                     unit_projections(model, source, table, target, list(units), ProjectionOptions(m)) for m in methods}


def methods_figure(patches: np.ndarray, projections: dict[str, np.ndarray], units: Sequence[int], layer: str = "",
                   mode: str = "symmetric"):
    """One row per unit: its k projections by each method (a 3x3 grid each), then its k patches.

    patches (U, k, s, s, 3) uint8; projections {method: (U, k, 3, s, s)}.  Returns (fig, axes (U, methods + 1))."""
    import matplotlib.pyplot as plt

    names = list(projections)
    k = patches.shape[1]
    cols = int(np.ceil(np.sqrt(k)))
    fig, axes = plt.subplots(len(units), len(names) + 1, figsize=(2.1 * (len(names) + 1), 2.1 * len(units) + 0.4),
                             squeeze=False)
    for i, u in enumerate(units):
        for j, m in enumerate(names):
            axes[i, j].imshow(image_grid(display(projections[m][i], mode), cols), interpolation="nearest")
        axes[i, -1].imshow(image_grid(patches[i], cols), interpolation="nearest")
        axes[i, 0].set_ylabel(f"unit {u}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([]), ax.set_yticks([])
    for j, title in enumerate(names + ["patches"]):
        axes[0, j].set_title(title, fontsize=9)
    fig.suptitle(f"{layer}: top-{k} by method" if layer else f"top-{k} by method", fontsize=10)
    fig.tight_layout()
    return fig, axes


def method_agreement(projections: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean cosine similarity over rows between each pair of methods' projections ({"deconvnet~guided": ...})."""
    names = list(projections)
    flat = {m: projections[m].reshape(-1, int(np.prod(projections[m].shape[2:]))).astype(np.float64)
            for m in names}
    out = {}
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            x, y = flat[names[a]], flat[names[b]]
            num = (x * y).sum(1)
            den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
            ok = den > 0
            out[f"{names[a]}~{names[b]}"] = float(np.mean(num[ok] / den[ok])) if ok.any() else float("nan")
    return out


def run(model: nn.Module, dataset, table: TopK, layer: str, out, *, units: Sequence[int] | None = None,
        n_units: int = 6, methods: Sequence[str] = METHODS, normalize=None, tap: str = "relu", seed: int = 0,
        display_mode: str = "symmetric", device="cpu", dpi: int = 110, tracker=None, info: dict | None = None
        ) -> float:
    """The same top-k rows of ``layer`` (``table``) projected with each method: ``methods.npz``, ``summary.json``
    (pairwise cosine agreement) and ``figures/methods_<layer>.png`` under ``out``.  Returns the deconvnet~guided
    agreement (NaN when either is missing)."""
    out = Path(out)
    units = [int(u) for u in units] if units else table.choose_units(n_units, seed)
    sub = table.select(units)
    patches, projs = method_views(model, dataset, sub, layer, units, methods=list(methods), normalize=normalize,
                                  device=device, tap=tap)
    np.savez_compressed(out / "methods.npz", units=np.array(units), patches=patches,
                        **{k: v.astype(np.float16) for k, v in projs.items()})
    agreement = method_agreement(projs)
    (out / "summary.json").write_text(json.dumps({**(info or {}), "layer": layer, "units": units, "k": table.k,
                                                   "methods": list(methods), "agreement_cosine": agreement,
                                                   "images": len(dataset)}, indent=1))
    fig, _ = methods_figure(patches, projs, units, layer, display_mode)
    path = save_figure(fig, out / "figures" / f"methods_{layer}.png", tracker, "methods", dpi)
    if tracker is not None:
        tracker.summary(agreement)
    print(f"methods: {layer}, units {units}; agreement {agreement}; {path}")
    return float(agreement.get("deconvnet~guided", float("nan")))
