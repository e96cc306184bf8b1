"""Feature invariance (Zeiler & Fergus, section 4, Fig. 5).

Images are translated vertically, scaled and rotated; for each amount we measure the Euclidean distance between the
features of the original and of the transformed image at layer 1 and layer 7, and the probability of the true class.

    res = invariance(model, x, labels, "rotate", np.arange(0, 361, 10))   # x: (N, 3, 224, 224) normalised
    res["distance"]["relu7"].shape == (N, 37)

Run it: ``python scripts/run.py experiment=invariance``.

Choices (the paper gives only the axes' ranges): the transforms act on normalised images and fill uncovered pixels
with 0 (the data mean); scaling resizes about the centre and crops or pads back to the input size; rotation is about
the centre, bilinear.  The identity amounts (0 px, scale 1, 0 / 360 degrees) return the image unchanged, exactly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from zf.experiments.classes import readable
from zf.experiments.features import forward_taps, p_of, tap_names
from zf.views.results import save_figure, write_csv

KINDS = ("translate", "scale", "rotate")


def translate_vertical(image: torch.Tensor, dy: int, fill: float = 0.0) -> torch.Tensor:
    """``image`` (..., H, W) moved down by ``dy`` pixels (up if negative): ``out[..., y, :] = image[..., y - dy, :]``;
    rows that come from outside the image are ``fill``."""
    dy = int(round(dy))
    out = torch.full_like(image, fill)
    h = image.shape[-2]
    if abs(dy) >= h:
        return out
    if dy >= 0:
        out[..., dy:, :] = image[..., :h - dy, :]
    else:
        out[..., :h + dy, :] = image[..., -dy:, :]
    return out


def scale(image: torch.Tensor, factor: float, fill: float = 0.0) -> torch.Tensor:
    """``image`` (C, H, W) resized by ``factor`` about its centre (bilinear, antialiased when shrinking), then
    centre-cropped (factor > 1) or padded with ``fill`` (factor < 1) back to (C, H, W)."""
    if factor == 1:
        return image.clone()
    c, h, w = image.shape
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    r = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=factor < 1)[0]
    out = torch.full_like(image, fill)
    # place the resized image's centre on the output's centre; crop whatever falls outside
    oy, ox = (h - nh) // 2, (w - nw) // 2
    sy0, sx0 = max(0, -oy), max(0, -ox)
    dy0, dx0 = max(0, oy), max(0, ox)
    hh, ww = min(nh - sy0, h - dy0), min(nw - sx0, w - dx0)
    out[:, dy0:dy0 + hh, dx0:dx0 + ww] = r[:, sy0:sy0 + hh, sx0:sx0 + ww]
    return out


def rotate(image: torch.Tensor, degrees: float, fill: float = 0.0) -> torch.Tensor:
    """``image`` (C, H, W) rotated counter-clockwise by ``degrees`` about its centre (bilinear), uncovered corners
    ``fill``."""
    if float(degrees) % 360 == 0:
        return image.clone()

    return TF.rotate(image, float(degrees), interpolation=TF.InterpolationMode.BILINEAR, fill=[fill] * image.shape[0])


def transform(image: torch.Tensor, kind: str, amount: float, fill: float = 0.0) -> torch.Tensor:
    """One of ``KINDS`` applied to ``image`` (C, H, W): pixels down, scale factor or degrees."""
    if kind == "translate":
        return translate_vertical(image, int(amount), fill)
    if kind == "scale":
        return scale(image, float(amount), fill)
    if kind == "rotate":
        return rotate(image, float(amount), fill)
    raise ValueError(f"transform {kind!r}: use one of {KINDS}")


@torch.no_grad()
def invariance(model: nn.Module, images: torch.Tensor, labels: Sequence[int], kind: str, amounts: Sequence[float],
               layers: Sequence[tuple] = ((1, "output"), ("fc7", "relu")), fill: float = 0.0,
               batch_size: int = 64) -> dict:
    """Fig. 5 for one kind of transform.

    Args:
        model: a network in eval mode.
        images: (N, 3, H, W) normalised; ``labels`` (N,) their true classes.
        kind: ``translate`` (pixels, positive = down), ``scale`` (factor) or ``rotate`` (degrees).
        amounts: (V,) the transform's amounts.
        layers: [(layer, tap), ...] whose features are compared (flattened), e.g. the conv1 block's output and fc7
            after its ReLU.
    Returns {"amounts": (V,), "distance": {layer name: (N, V)} Euclidean distance to the untransformed image's
    features, "p_true": (N, V), "p_true_original": (N,), "layers": names}.
    """
    names = tap_names(model, layers)
    base, base_logits = forward_taps(model, images, layers, batch_size=batch_size)
    n, v = len(images), len(amounts)
    dist = {nm: np.zeros((n, v), np.float32) for nm in names}
    p_true = np.zeros((n, v), np.float32)
    lab = list(labels)
    for i in range(n):
        batch = torch.stack([transform(images[i], kind, a, fill) for a in amounts])
        feats, logits = forward_taps(model, batch, layers, batch_size=batch_size)
        for nm in names:
            dist[nm][i] = (feats[nm] - base[nm][i:i + 1]).norm(dim=1).cpu().numpy()
        p_true[i] = p_of(torch.softmax(logits, 1), [lab[i]] * len(batch)).cpu().numpy()
    return {"amounts": np.asarray(amounts, np.float32), "distance": dist, "p_true": p_true, "layers": names,
            "p_true_original": p_of(torch.softmax(base_logits, 1), lab).cpu().numpy()}


def invariance_figure(results: dict, names: Sequence[str], cell: float = 3.0):
    """The paper's Fig. 5: rows translation / scale / rotation (the keys of ``results`` that are in ``KINDS``),
    columns the distance at each compared layer then p(true class); one curve per image (``names`` the legend).
    Returns (fig, axes)."""
    import matplotlib.pyplot as plt

    kinds = [k for k in KINDS if k in results]
    layers = results[kinds[0]]["layers"]
    fig, axes = plt.subplots(len(kinds), len(layers) + 1, figsize=(cell * (len(layers) + 1) + 1.5,
                                                                   cell * len(kinds)), squeeze=False)
    xlabel = {"translate": "vertical translation (px)", "scale": "scale factor", "rotate": "rotation (degrees)"}
    for r, kind in enumerate(kinds):
        res = results[kind]
        for c, nm in enumerate(layers):
            for i in range(len(names)):
                axes[r, c].plot(res["amounts"], res["distance"][nm][i], lw=1.2)
            axes[r, c].set_title(f"{nm}: distance to original", fontsize=9)
            axes[r, c].set_ylabel("Euclidean distance", fontsize=8)
        for i, nm in enumerate(names):
            axes[r, -1].plot(res["amounts"], res["p_true"][i], lw=1.2, label=nm)
        axes[r, -1].set_ylim(-0.02, 1.02)
        axes[r, -1].set_title("p(true class)", fontsize=9)
        for ax in axes[r]:
            ax.set_xlabel(xlabel[kind], fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return fig, axes


def amounts(spec: Sequence[float]) -> np.ndarray:
    """``[start, stop, step]`` -> start..stop inclusive."""
    a, b, s = (float(v) for v in spec)
    return np.linspace(a, b, int(round((b - a) / s)) + 1)


def run(model: nn.Module, x: torch.Tensor, labels: Sequence[int], paths: Sequence[str], classes: Sequence[str],
        out, specs: dict, layers: Sequence[tuple], batch_size: int = 64, dpi: int = 110, tracker=None) -> float:
    """Fig. 5 for normalised images ``x`` (N, 3, H, W): for each ``specs[kind] = [start, stop, step]`` (kinds of
    ``KINDS``; missing or None ones are skipped), distances at ``layers`` and p(true class); writes
    ``invariance.npz/.csv/.json`` and ``figures/invariance.png`` under ``out``.  Returns the mean p(true) over all
    transforms (NaN when no image has a known class)."""
    out = Path(out)
    results = {}
    for kind in KINDS:
        if specs.get(kind) is not None:
            print(f"invariance: {kind}")
            results[kind] = invariance(model, x, labels, kind, amounts(specs[kind]), layers=layers,
                                       batch_size=batch_size)
    label_names = [classes[l] if l >= 0 else None for l in labels]
    names = [f"{Path(str(p)).stem[-8:]} ({n})" for p, n in
             zip(paths, readable([c or "unknown" for c in label_names]))]
    arrays = {f"{k}_{f}": r[f] for k, r in results.items() for f in ("amounts", "p_true")}
    arrays.update({f"{k}_distance_{nm}": d for k, r in results.items() for nm, d in r["distance"].items()})
    np.savez(out / "invariance.npz", **arrays)
    lnames = next(iter(results.values()))["layers"]
    rows = [[k, f"{a:g}", str(rel), label_names[i]] + [f"{r['distance'][n][i, j]:.6g}" for n in lnames]
            + [f"{r['p_true'][i, j]:.6g}"]
            for k, r in results.items() for i, rel in enumerate(paths) for j, a in enumerate(r["amounts"])]
    write_csv(out / "invariance.csv", rows, ["transform", "amount", "image", "label"]
              + [f"distance_{n}" for n in lnames] + ["p_true"])
    summary = {"images": [str(p) for p in paths], "labels": label_names, "layers": lnames,
               "taps": [list(map(str, l)) for l in layers], "fill": "data mean (0 after normalisation)",
               "transforms": {k: {"amounts": r["amounts"].tolist(), "mean_p_true": float(np.nanmean(r["p_true"]))
                                  if np.isfinite(r["p_true"]).any() else None,
                                  "p_true_original": [None if not np.isfinite(v) else float(v)
                                                      for v in r["p_true_original"]],
                                  "max_distance": {n: float(d.max()) for n, d in r["distance"].items()}}
                              for k, r in results.items()}}
    (out / "invariance.json").write_text(json.dumps(summary, indent=1))
    fig, _ = invariance_figure(results, names)
    save_figure(fig, out / "figures" / "invariance.png", tracker, "invariance/figure", dpi)
    p = [r["p_true"] for r in results.values() if np.isfinite(r["p_true"]).any()]
    mean_p = float(np.mean([np.nanmean(v) for v in p])) if p else float("nan")
    if tracker is not None:
        tracker.summary({f"{k}/mean_p_true": s["mean_p_true"] for k, s in summary["transforms"].items()})
        tracker.artifact("invariance", "invariance", [out / "invariance.npz", out / "invariance.csv",
                                                      out / "invariance.json"])
    for k, s in summary["transforms"].items():
        print(f"  {k}: mean p(true) {s['mean_p_true']}; max distance "
              + ", ".join(f"{n} {d:.3g}" for n, d in s["max_distance"].items()))
    return mean_p
