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

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from zf.errors import CheckpointError, ConfigError
from zf.experiments.evolution import default_mine, top1_views
from zf.net.layers import resolve_layer
from zf.net.models import DEFAULT_CHECKPOINT, load_zfnet
from zf.views.plotting import filter_grid, image_grid
from zf.views.results import save_figure, write_csv
from zf.views.visualize import display

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


#: ``high_frequency_share``'s defaults: a 14x14 DFT (a 7x7 filter zero-padded to twice its side) and the cut at
#: 1/4 cycle per pixel, half of Nyquist
HF_SIZE, HF_CUTOFF = 14, 0.25


def high_frequency_share(weight: torch.Tensor, size: int = HF_SIZE, cutoff: float = HF_CUTOFF) -> float:
    """The share of a layer's filter energy above ``cutoff`` cycles per pixel: a number for how much of a first
    layer is pixel-scale noise rather than the edges and colour blobs of the paper's Fig. 6.

    For each filter of ``weight`` (C_out, C_in, k, k), each input channel's mean is removed (a flat colour blob
    is not high frequency; it adds only DC) and its ``size`` x ``size`` DFT (zero-padded) taken.  A frequency
    (fy, fx) counts as high when it lies above ``cutoff`` along either axis, max(|fy|, |fx|) > cutoff.  The share is
    the high power over the total power, both summed over the layer's filters and channels, so that strong filters
    weigh more than faint ones.  This is the definition that reproduces the reference values: 0.76 for PyTorch's
    default init of a 96-filter conv1 (white noise), 0.19 for smooth 7x7 Gabor filters, and 0.76, 0.73, 0.64, 0.54,
    0.49 for the previous shipped model's conv1 snapshots at epochs 1, 5, 10, 20 and 50.  A layer whose filters
    are all constant counts as 0.  The paper has no such number; it shows the filters (Fig. 6)."""
    w = weight.detach().double().cpu()
    if w.dim() != 4:
        raise ValueError(f"high_frequency_share: weight must be (C_out, C_in, k, k), got {tuple(w.shape)}")
    size = max(int(size), w.shape[-2], w.shape[-1])
    energy = float(w.pow(2).sum())
    w = w - w.mean(dim=(2, 3), keepdim=True)
    power = torch.fft.fft2(w, s=(size, size)).abs().pow(2)  # (C_out, C_in, size, size)
    f = torch.fft.fftfreq(size, dtype=torch.float64).abs()
    high = torch.maximum(f[:, None], f[None, :]) > cutoff
    total = float(power.sum())
    if total <= 1e-20 * energy:
        return 0.0  # constant (or zero) filters: what is left is rounding
    return float((power * high).sum()) / total


def similarity_to_init(state: dict, init_state: dict) -> dict[str, float]:
    """How far training moved each conv layer from its initial weights: {layer: mean over its filters of the
    cosine similarity between the filter (all its weights, flattened) and the same filter in ``init_state``}.

    ``state`` and ``init_state`` are state dicts (``features_epoch000.pt``'s ``features``, a checkpoint's
    ``model``); every 4-D ``*.weight`` present in both is a conv layer, named by its key without ``.weight``
    (``features.conv1``).  1 = untouched (or only rescaled), 0 = no trace of the init.  A filter that is zero in
    either counts as 0.  Shapes that differ are a ``ValueError`` naming the key."""
    out = {}
    for key, w in state.items():
        if not key.endswith(".weight") or getattr(w, "dim", lambda: 0)() != 4 or key not in init_state:
            continue
        a, b = w.detach().double().cpu().flatten(1), init_state[key].detach().double().cpu().flatten(1)
        if a.shape != b.shape:
            raise ValueError(f"similarity_to_init: {key} is {tuple(w.shape)} but {tuple(init_state[key].shape)} "
                             "at init; compare checkpoints of the same run")
        den = a.norm(dim=1) * b.norm(dim=1)
        cos = torch.where(den > 0, (a * b).sum(1) / den.clamp(min=1e-300), torch.zeros_like(den))
        out[key[:-len(".weight")]] = float(cos.mean())
    return out


def filters_figure(weights: dict[str, torch.Tensor], title: str | None = None, scale: int = 4):
    """Layer-1 filter grids side by side, one panel per entry of ``weights`` ({panel title: (C_out, 3, k, k)});
    each filter contrast-stretched on its own (``zf.views.plotting.filter_grid``).  Returns (fig, axes)."""
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
    import matplotlib.pyplot as plt

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
    name = resolve_layer(model, 2, "relu").name
    tables = (mine_fn or (lambda m, d, ls: default_mine(m, d, ls, normalize, device)))(model, dataset, [name])
    units = list(units) if units is not None else tables[name].choose_units(n_units, seed)
    patches, proj = top1_views(model, dataset, tables[name], name, units, normalize=normalize, device=device)
    return units, patches, proj


#: the command that makes each Fig. 6 checkpoint (named in the error when it is missing)
FIG6_COMMANDS = {"default": "python scripts/train.py experiment=default_model",
                 "zf_small": "python scripts/train.py experiment=fig6_zf_small",
                 "noclip": "python scripts/train.py experiment=fig6_noclip",
                 "alexnet": "python scripts/train.py experiment=fig6_alexnet_conv1"}
#: each panel's title
FIG6_NAMES = {"default": "shipped model (clipping)", "zf_small": "ZF 7x7/2, clipping",
              "noclip": "ZF 7x7/2, no clipping", "alexnet": "AlexNet-style 11x11/4, clipping"}


def load_fig6(key: str, path) -> tuple[nn.Module, dict]:
    """(model, info) for the Fig. 6 panel ``key`` (``FIG6_COMMANDS``) from a training checkpoint (``"default"``: the
    shipped one); a missing file raises a ``zf.errors.CheckpointError`` naming the command that writes it."""
    file = DEFAULT_CHECKPOINT if str(path) == "default" else Path(str(path))
    if not file.is_file():
        raise CheckpointError(f"filters.{key}: checkpoint {file} does not exist. Make it with `{FIG6_COMMANDS[key]}` "
                              f"(or point filters.{key}=... elsewhere, or set filters.{key}=null to skip it).")
    model = load_zfnet(file)
    blob = torch.load(file, map_location="cpu", weights_only=True)
    hist = blob.get("history", []) if isinstance(blob, dict) else []
    info = {"checkpoint": str(file), "epoch": blob.get("epoch") if isinstance(blob, dict) else None,
            "arch": getattr(model, "arch", {}),
            "clipped_filters": int(sum(h.get("clipped_filters", 0) for h in hist)) if hist else None,
            "val_top1": next((h["val_top1"] for h in reversed(hist) if "val_top1" in h), None)}
    return model, info


def run(checkpoints: dict, out, *, dataset=None, layer2_units: int = 16, seed: int = 0, normalize=None,
        mine_fn=None, device="cpu", dpi: int = 110, tracker=None) -> float:
    """Fig. 6 from ``checkpoints`` ({panel key of ``FIG6_COMMANDS``: path or "default"}; missing keys are
    skipped): ``filters.csv``, ``summary.json`` and the figures under ``out``; the AlexNet-vs-ZF panel also
    projects layer-2 units over ``dataset``.  Returns the no-clipping model's top filter energy share (NaN without
    it)."""
    out = Path(out)
    models, infos = {}, {}
    for key in FIG6_COMMANDS:
        if checkpoints.get(key) is not None:
            models[key], infos[key] = load_fig6(key, checkpoints[key])
    if not models:
        raise ConfigError("filters: every checkpoint (filters.default/zf_small/noclip/alexnet) is null")
    rows, figs = [], {}
    for key, m in models.items():
        s = filter_stats(conv1_weight(m))
        infos[key]["stats"] = s
        rows.append({"model": key, "description": FIG6_NAMES[key], "filters": s["n"],
                     "kernel": int(conv1_weight(m).shape[-1]), "top_energy_share": s["top_energy_share"],
                     "rms_max_over_median": s["rms_max_over_median"], "dead_fraction": s["dead_fraction"],
                     **{f"band_{b}": v for b, v in s["band_energy"].items()},
                     "clipped_filters": infos[key]["clipped_filters"], "val_top1": infos[key]["val_top1"]})
    write_csv(out / "filters.csv", rows)
    if "default" in models:
        fig, _ = filters_figure({FIG6_NAMES["default"]: conv1_weight(models["default"])},
                                title="Fig. 6(a)-(c) style: layer-1 filters")
        figs["default"] = save_figure(fig, out / "figures" / "fig6_default_filters.png", tracker, "default", dpi)
    clip = {FIG6_NAMES[k]: conv1_weight(models[k]) for k in ("noclip", "zf_small") if k in models}
    if clip:
        fig, _ = filters_figure(clip, title="Fig. 6(a): without vs with feature scale clipping")
        figs["clipping"] = save_figure(fig, out / "figures" / "fig6_clipping.png", tracker, "clipping", dpi)
    pair = [k for k in ("alexnet", "zf_small") if k in models]
    if pair and dataset is not None:
        panels = {}
        for k in pair:
            m = models[k].to(device)
            units, _, proj = layer2_views(m, dataset, layer2_units, seed, normalize, device, mine_fn=mine_fn)
            infos[k]["layer2_units"] = units
            panels[FIG6_NAMES[k]] = (conv1_weight(m), proj)
        fig, _ = comparison_figure(panels, title="Fig. 6(b)-(e): first layer and layer-2 projections")
        figs["alexnet_vs_zf"] = save_figure(fig, out / "figures" / "fig6_alexnet_vs_zf.png", tracker,
                                            "alexnet_vs_zf", dpi)
    (out / "summary.json").write_text(json.dumps({"models": infos, "figures": {k: str(v) for k, v in figs.items()}},
                                                 indent=1, default=str))
    if tracker is not None:
        tracker.table("filters", list(rows[0]), [list(r.values()) for r in rows])
    for k, v in figs.items():
        print(f"  figure ({k}): {v}")
    return float(infos["noclip"]["stats"]["top_energy_share"]) if "noclip" in infos else float("nan")
