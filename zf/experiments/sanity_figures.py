"""The figures of the sanity experiment (``zf.experiments.sanity``): Adebayo et al.'s Fig. 2 layout of the shown
units' projections per randomisation step (``sanity_figure``) and the median similarity per cascade step
(``curves_figure``).  Each returns (fig, axes)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from zf.views.visualize import display


def sanity_figure(steps: list[dict], patches: np.ndarray, units: Sequence[int], show: Sequence[int],
                  mode: str = "cascade", layer: str = "", rank: int = 0, display_mode: str = "symmetric"):
    """Adebayo et al.'s Fig. 2 layout for ``show`` (indices into ``units``): per shown unit, one row per method;
    columns: the patch, the trained projection, then each ``mode`` step (cascade: randomised down to layer L).
    Each tile is stretched on its own (``zf.views.visualize.display``).  Returns (fig, axes)."""
    import matplotlib.pyplot as plt

    cols = [steps[0]] + [s for s in steps if s["mode"] == mode]
    methods = list(steps[0]["projections"])
    nrows, ncols = len(show) * len(methods), len(cols) + 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.25 * ncols + 0.6, 1.25 * nrows + 0.8), squeeze=False)
    for a, i in enumerate(show):
        for b, m in enumerate(methods):
            r = a * len(methods) + b
            axes[r, 0].imshow(patches[i, rank], interpolation="nearest")
            for c, s in enumerate(cols, start=1):
                axes[r, c].imshow(display(s["projections"][m][i, rank], display_mode), interpolation="nearest")
            axes[r, 0].set_ylabel(f"unit {units[i]}\n{m}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_title("patch", fontsize=7)
    axes[0, 1].set_title("trained", fontsize=7)
    for c, s in enumerate(cols[1:], start=2):
        what = f"down to\n{s['down_to']}" if mode == "cascade" else f"only\n{s['down_to']}"
        axes[0, c].set_title(what, fontsize=7)
    fig.suptitle(f"{layer}: {mode} randomisation (Adebayo et al. 2018), rank {rank + 1} rows", fontsize=9)
    fig.tight_layout()
    return fig, axes


def curves_figure(summary: list[dict], layer: str = ""):
    """Median Spearman (abs) and SSIM against the cascade step, one line per method (Adebayo et al.'s Fig. 2
    curves).  Returns (fig, axes)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for m in dict.fromkeys(r["method"] for r in summary):
        pts = sorted((r["step"], r) for r in summary if r["method"] == m and r["mode"] in ("trained", "cascade"))
        labels = ["trained"] + [r["down_to"] for _, r in pts[1:]]
        for ax, key in zip(axes, ("median_spearman_abs", "median_ssim")):
            ax.plot(range(len(pts)), [r[key] for _, r in pts], marker="o", label=m)
            ax.set_xticks(range(len(pts)), labels, rotation=60, fontsize=7)
    for ax, name in zip(axes, ("Spearman rank corr. (abs)", "SSIM")):
        ax.set_ylabel(f"median {name}", fontsize=8)
        ax.set_xlabel("cascade: randomised down to", fontsize=8)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_ylim(-0.1, 1.05)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{layer}: similarity to the trained projection", fontsize=9)
    fig.tight_layout()
    return fig, axes


__all__ = ["sanity_figure", "curves_figure"]
