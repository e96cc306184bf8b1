"""Correspondence analysis (Zeiler & Fergus, section 4.3, Table 1 and Fig. 8).

Five frontal dog images; the same part of the face (left eye, right eye, nose) is occluded in all five, and random
regions as a control.  For image i, ``eps_i = x_i - x~_i`` is the change of its layer-l features (original minus
occluded, flattened).  If the network ties the part to a consistent place in its representation, the changes point
the same way in every image:

    Delta_l = mean over pairs i < j of  H(sign(eps_i), sign(eps_j)) / D

with H the Hamming distance and D the feature length (the paper's sum over pairs i != j, normalised to the fraction
of differing signs and averaged over pairs, as its Table 1 reports).  Lower = more consistent.

``sign(0) = 0`` (numpy / MATLAB): a feature that occlusion leaves unchanged (e.g. a ReLU output that stays 0 in both
images) agrees with another unchanged one and differs from a changed one.

    res = correspondence(model, x, {"left_eye": xy_le, "nose": xy_n}, size=24)   # x: (5, 3, 224, 224) normalised
    res["rows"]["nose"]["pool5"]["mean"]

Run it: ``python scripts/run.py experiment=correspondence``.

Choices (the paper is silent): the occluder is a square of ``size`` px centred on the hand-marked point, filled with
the data mean (0 after normalisation).  The std of a part's Delta is over a 3 x 3 jitter of the occluder by
``jitter`` px (the same shift in all images); the random control's mean and std are over ``n_random`` seeded draws,
each draw one location shared by all images (as in the paper).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from zf.errors import ConfigError
from zf.experiments.features import forward_taps, tap_names
from zf.views.results import save_figure, write_csv

#: Table 1 of the paper: occluded part -> (layer 5 mean, std, layer 7 mean, std).
PAPER_TABLE1 = {"right_eye": (0.067, 0.007, 0.069, 0.015), "left_eye": (0.069, 0.007, 0.068, 0.013),
                "nose": (0.079, 0.017, 0.069, 0.011), "random": (0.107, 0.017, 0.073, 0.014)}


def sign_hamming(eps: torch.Tensor) -> torch.Tensor:
    """(N, N) fraction of positions where ``sign(eps_i) != sign(eps_j)`` for eps (N, D); ``sign(0) = 0``."""
    s = torch.sign(torch.as_tensor(eps)).to(torch.int8)
    return (s[:, None, :] != s[None, :, :]).float().mean(-1)


def delta(eps: torch.Tensor) -> tuple[float, np.ndarray]:
    """Delta of eps (N, D): the mean of ``sign_hamming`` over the N(N-1)/2 pairs i < j (the same as over the ordered
    pairs i != j), and those per-pair values (N(N-1)/2,)."""
    h = sign_hamming(eps)
    i, j = torch.triu_indices(len(h), len(h), offset=1)
    pairs = h[i, j].cpu().numpy()
    return float(pairs.mean()), pairs


def square_corners(centres: np.ndarray, size: int, height: int, width: int) -> np.ndarray:
    """Top-left corners (N, 2) as (y0, x0) of ``size`` squares centred on ``centres`` (N, 2) as (x, y), moved inside
    the image where they would cross its border."""
    c = np.asarray(centres, np.float64).reshape(-1, 2)
    x0 = np.clip(np.round(c[:, 0] - size / 2), 0, width - size).astype(int)
    y0 = np.clip(np.round(c[:, 1] - size / 2), 0, height - size).astype(int)
    return np.stack([y0, x0], 1)


def occlude_squares(images: torch.Tensor, centres: np.ndarray, size: int, value: float = 0.0) -> torch.Tensor:
    """Copies of ``images`` (N, C, H, W), image i with a ``size`` square of ``value`` centred on centres[i] = (x, y)."""
    out = images.clone()
    for i, (y0, x0) in enumerate(square_corners(centres, size, *images.shape[2:])):
        out[i, :, y0:y0 + size, x0:x0 + size] = value
    return out


@torch.no_grad()
def correspondence(model: nn.Module, images: torch.Tensor, parts: Mapping[str, np.ndarray], size: int = 28,
                   layers: Sequence[tuple] = ((5, "output"), ("fc7", "relu")), n_random: int = 10, jitter: int = 4,
                   seed: int = 0, value: float = 0.0, batch_size: int = 64) -> dict:
    """Table 1.

    Args:
        model: a network in eval mode.
        images: (N, 3, H, W) normalised.
        parts: part name -> (N, 2) centres (x, y) in pixels, one per image.
        size: the occluder's side; ``value`` its fill (normalised units: 0 = the data mean).
        layers: [(layer, tap), ...] compared: the paper's layer 5 and layer 7 (here pool5 and fc7 after its ReLU).
        n_random: random control draws (one location per draw, shared by all images), seeded by ``seed``.
        jitter: a part's occluder is also moved by -jitter, 0, +jitter px in x and y (9 placements, the same shift in
            all images); its mean and std are over those placements.  0: one placement, std over image pairs.
    Returns {"layers": names, "rows": {part or "random": {layer: {"mean", "std", "values" (placements,),
    "pairs" (pairs,) at the unshifted placement / first draw}}}, "random_centres" (n_random, 2) (x, y),
    "centres": {part: (N, 2)}}.
    """
    names = tap_names(model, layers)
    n, _, h, w = images.shape
    base, _ = forward_taps(model, images, layers, batch_size=batch_size)
    rng = np.random.default_rng(seed)
    rand = np.stack([rng.uniform(size / 2, w - size / 2, n_random), rng.uniform(size / 2, h - size / 2, n_random)], 1)
    shifts = [(dx, dy) for dy in (-jitter, 0, jitter) for dx in (-jitter, 0, jitter)] if jitter else [(0, 0)]
    # move (0, 0) first: its pairs are reported
    shifts.sort(key=lambda s: s != (0, 0))
    conditions = {p: [np.asarray(c, np.float64).reshape(n, 2) + np.array(s) for s in shifts]
                  for p, c in parts.items()}
    conditions["random"] = [np.repeat(c[None], n, 0) for c in rand]
    rows = {}
    for p, placements in conditions.items():
        occluded = torch.cat([occlude_squares(images, c, size, value) for c in placements])
        feats, _ = forward_taps(model, occluded, layers, batch_size=batch_size)
        rows[p] = {}
        for nm in names:
            vals, first = [], None
            for k in range(len(placements)):
                d, pairs = delta(base[nm] - feats[nm][k * n:(k + 1) * n])
                vals.append(d)
                first = pairs if first is None else first
            vals = np.array(vals)
            std = float(vals.std()) if len(vals) > 1 else float(first.std())
            rows[p][nm] = {"mean": float(vals.mean()), "std": std, "values": vals, "pairs": first}
    return {"layers": names, "rows": rows, "random_centres": rand,
            "centres": {p: np.asarray(c, np.float64).reshape(n, 2) for p, c in parts.items()}}


def table_rows(res: dict, paper: Mapping[str, Sequence[float]] = PAPER_TABLE1) -> list[dict]:
    """One flat row per occluded part: ours (mean, std at each layer) beside the paper's (NaN where it has none)."""
    l5, l7 = res["layers"][0], res["layers"][-1]
    out = []
    for p, r in res["rows"].items():
        ref = paper.get(p, (float("nan"),) * 4)
        out.append({"occluded": p, f"{l5}_mean": r[l5]["mean"], f"{l5}_std": r[l5]["std"],
                    f"{l7}_mean": r[l7]["mean"], f"{l7}_std": r[l7]["std"], "paper_l5_mean": ref[0],
                    "paper_l5_std": ref[1], "paper_l7_mean": ref[2], "paper_l7_std": ref[3]})
    return out


def table_markdown(res: dict, paper: Mapping[str, Sequence[float]] = PAPER_TABLE1) -> str:
    """Table 1 as Markdown: ours at the first and last compared layers (named in the header; the paper's Table 1
    has layers 5 and 7) beside the paper's."""
    l5, l7 = res["layers"][0], res["layers"][-1]
    lines = [f"| occluded | ours, {l5} | paper, layer 5 | ours, {l7} | paper, layer 7 |",
             "|---|---|---|---|---|"]
    for row in table_rows(res, paper):
        def pp(m, s):
            return "-" if np.isnan(m) else f"{m:.3f} +- {s:.3f}"
        lines.append(f"| {row['occluded']} | {row[f'{l5}_mean']:.3f} +- {row[f'{l5}_std']:.3f} | "
                     f"{pp(row['paper_l5_mean'], row['paper_l5_std'])} | {row[f'{l7}_mean']:.3f} +- "
                     f"{row[f'{l7}_std']:.3f} | {pp(row['paper_l7_mean'], row['paper_l7_std'])} |")
    return "\n".join(lines) + "\n"


def correspondence_figure(images: Sequence[np.ndarray], centres: Mapping[str, np.ndarray], size: int,
                          random_centres: np.ndarray | None = None, cell: float = 2.6):
    """Fig. 8: the images (uint8 (H, W, 3)) with each part's occluder drawn (one colour per part) and, dashed, the
    first random draws (``random_centres`` (R, 2), at most 3 drawn).  Returns (fig, axes)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(cell * n, cell + 0.6), squeeze=False)
    colours = plt.get_cmap("tab10")(np.arange(10))
    for i, (ax, img) in enumerate(zip(axes[0], images)):
        h, w = img.shape[:2]
        ax.imshow(img)
        for c, (p, xy) in enumerate(centres.items()):
            y0, x0 = square_corners(np.asarray(xy)[i:i + 1], size, h, w)[0]
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), size, size, fill=False, ec=colours[c], lw=1.8,
                                   label=p if i == 0 else None))
        if random_centres is not None:
            for r, xy in enumerate(random_centres[:3]):
                y0, x0 = square_corners(xy[None], size, h, w)[0]
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), size, size, fill=False, ec="yellow", ls="--", lw=1,
                                       label="random" if i == 0 and r == 0 else None))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8, frameon=False)
    return fig, axes


def run(model: nn.Module, x: torch.Tensor, raw: torch.Tensor, paths: Sequence[str], parts: Mapping[str, Sequence],
        out, *, size: int = 28, layers: Sequence[tuple] = ((5, "output"), ("fc7", "relu")), n_random: int = 50,
        jitter: int = 2, seed: int = 0, value: float | Sequence[float] = 0.0, batch_size: int = 64,
        dpi: int = 110, tracker=None) -> float:
    """Table 1 and Fig. 8 for normalised images ``x`` (raw uint8 ``raw`` for the figure) and hand-marked ``parts``
    ({part: one (x, y) per image}); writes ``table1.csv/.md/.json`` and ``figures/correspondence.png`` under
    ``out``.  Returns the random control's Delta at the last layer minus the mean of the parts' (> 0: the parts
    correspond better than chance)."""
    out = Path(out)
    parts = {p: np.asarray(xy, np.float64) for p, xy in parts.items()}
    for p, xy in parts.items():
        if xy.shape != (len(paths), 2):
            raise ConfigError(f"correspondence.parts.{p}: one (x, y) per image ({len(paths)}), got {xy.shape}")
    res = correspondence(model, x, parts, size=size, layers=layers, n_random=n_random, jitter=jitter, seed=seed,
                         value=value, batch_size=batch_size)
    rows = table_rows(res)
    write_csv(out / "table1.csv", rows)
    md = table_markdown(res)
    (out / "table1.md").write_text(md)
    (out / "table1.json").write_text(json.dumps({
        "layers": res["layers"], "size": int(size), "jitter": int(jitter), "n_random": int(n_random),
        "images": [str(p) for p in paths], "rows": rows,
        "values": {p: {n: {"values": r[n]["values"].tolist(), "pairs": r[n]["pairs"].tolist()}
                       for n in res["layers"]} for p, r in res["rows"].items()},
        "random_centres": res["random_centres"].tolist()}, indent=1))
    fig, _ = correspondence_figure([im.permute(1, 2, 0).numpy() for im in raw], res["centres"], size,
                                   res["random_centres"])
    save_figure(fig, out / "figures" / "correspondence.png", tracker, "correspondence/figure", dpi)
    if tracker is not None:
        tracker.table("table1", list(rows[0]), [list(r.values()) for r in rows])
        tracker.artifact("correspondence", "table", [out / "table1.csv", out / "table1.json", out / "table1.md"])
    print(md)
    last = res["layers"][-1]
    parts_mean = float(np.mean([res["rows"][p][last]["mean"] for p in parts]))
    return float(res["rows"]["random"][last]["mean"] - parts_mean)
