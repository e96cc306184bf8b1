"""First-layer filters and second-layer projections (paper Fig. 6).

(a) without feature scale clipping one layer-1 filter dominates; (b) AlexNet's 11x11/4 first layer has high and low
frequencies, little in between, and dead filters; (c) ZF's 7x7/2 filters are more distinctive; (d) AlexNet's layer 2
shows aliasing, (e) ZF's is clean.

    python scripts/train.py experiment=fig6_zf_small      # and fig6_noclip, fig6_alexnet_conv1 (reduced budget)
    python scripts/run.py experiment=filters

Besides the pictures, ``filter_stats`` puts numbers on the paper's words: how much of the layer's filter energy the
largest filter holds (domination), the share of near-dead filters, and the spectral energy of the filters in low,
mid and high frequency bands (``mid`` should be low for the AlexNet-style layer).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..plotting import filter_grid, image_grid

#: frequency bands: radial frequency in cycles per input pixel (Nyquist 0.5 along an axis, 0.71 on the diagonal)
BANDS = {"low": (0.0, 0.125), "mid": (0.125, 0.25), "high": (0.25, float("inf"))}


def conv1_weight(model: nn.Module) -> torch.Tensor:
    """The first convolution's weight (C_out, 3, k, k), float32."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d")
    return conv.weight.detach().float().cpu()


def filter_stats(weight: torch.Tensor, dead: float = 0.25, pad: int = 32) -> dict:
    """Numbers for Fig. 6's claims about a first layer ``weight`` (C_out, C_in, k, k).

    Returns: ``n``; ``rms`` (C_out,) per-filter RMS; ``top_energy_share`` (largest filter's share of the summed
    squared norms: 1/n when all are equal, near 1 when one dominates); ``rms_max_over_median``; ``dead_fraction``
    (filters with RMS under ``dead`` x the median); ``band_energy`` {low, mid, high}: the mean over filters of the
    fraction of each filter's spectral energy (DC included) in that band, frequencies in cycles per input pixel
    (the FFT is zero-padded to ``pad``).
    """
    w = weight.detach().double().cpu()
    n = w.shape[0]
    rms = w.pow(2).mean(dim=(1, 2, 3)).sqrt()
    sq = w.pow(2).sum(dim=(1, 2, 3))
    med = rms.median()
    # no mean removal: a filter's DC (a flat colour blob, common in AlexNet's layer 1) is low-frequency content
    k = w.shape[-1]
    size = max(pad, k)
    power = torch.fft.fft2(w, s=(size, size)).abs().pow(2).sum(1)               # (n, size, size)
    f = torch.fft.fftfreq(size, d=1.0, dtype=torch.float64)
    radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    total = power.sum(dim=(1, 2)).clamp(min=1e-30)
    bands = {b: float(((power * ((radius >= lo) & (radius < hi))).sum(dim=(1, 2)) / total).mean())
             for b, (lo, hi) in BANDS.items()}
    return {"n": int(n), "rms": rms.tolist(), "top_energy_share": float(sq.max() / sq.sum().clamp(min=1e-30)),
            "rms_max_over_median": float(rms.max() / med.clamp(min=1e-30)),
            "dead_fraction": float((rms < dead * med).double().mean()), "band_energy": bands}


def filters_figure(weights: dict[str, torch.Tensor], title: str | None = None, scale: int = 4):
    """Layer-1 filter grids side by side, one panel per entry of ``weights`` ({panel title: (C_out, 3, k, k)});
    each filter contrast-stretched on its own (``zf.plotting.filter_grid``).  Returns (fig, axes)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    grids = {name: filter_grid(w, scale=scale) for name, w in weights.items()}
    fig, axes = plt.subplots(1, len(grids), figsize=(3.4 * len(grids), 3.6), squeeze=False)
    for ax, (name, g) in zip(axes[0], grids.items()):
        ax.imshow(g, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig, axes


def comparison_figure(panels: dict[str, tuple[torch.Tensor, np.ndarray]], mode: str = "symmetric",
                      ncols: int | None = None, title: str | None = None):
    """Fig. 6 (b)-(e): one row per model: its layer-1 filters, then the top-1 projections of some layer-2 units.

    panels: {row title: (conv1 weight (C_out, 3, k, k), layer-2 projections float (U, 3, s, s))}.
    Returns (fig, axes (rows, 2))."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..visualize import display

    fig, axes = plt.subplots(len(panels), 2, figsize=(8.0, 3.8 * len(panels)), squeeze=False)
    for row, (name, (w, proj)) in enumerate(panels.items()):
        axes[row, 0].imshow(filter_grid(w), interpolation="nearest")
        axes[row, 0].set_title(f"{name}: layer 1 ({tuple(w.shape[-2:])[0]}x{tuple(w.shape[-2:])[1]})", fontsize=9)
        shown = display(proj, mode)
        cols = ncols or int(np.ceil(np.sqrt(len(shown))))
        axes[row, 1].imshow(image_grid(shown, cols), interpolation="nearest")
        axes[row, 1].set_title(f"{name}: layer 2, top-1 projections", fontsize=9)
        for ax in axes[row]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig, axes


def layer2_views(model: nn.Module, dataset, n_units: int = 16, seed: int = 0, normalize=None,
                 device: str | torch.device = "cpu", mine_fn=None,
                 units: Sequence[int] | None = None) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The strongest activation over ``dataset`` of ``n_units`` layer-2 units (alive ones, seeded choice) and its
    projection.  Returns (units, patches uint8 (U, s, s, 3), projections float (U, 3, s, s))."""
    from ..layers import resolve_layer
    from .evolution import choose_units, default_mine, top1_views

    name = resolve_layer(model, 2, "relu").name
    tables = (mine_fn or (lambda m, d, ls: default_mine(m, d, ls, normalize, device)))(model, dataset, [name])
    units = list(units) if units is not None else choose_units(tables[name], n_units, seed)
    patches, proj = top1_views(model, dataset, tables[name], name, units, normalize=normalize, device=device)
    return units, patches, proj
