"""Feature evolution during training (paper Fig. 4): for a few units of each layer, the strongest activation over the
training data at each saved epoch, projected to pixels by the deconvnet.  One row per unit, one column per epoch.

    python scripts/run.py experiment=evolution            # reads zf/weights/evolution/features_epochNNN.pt

The snapshots are the small ``features_epochNNN.pt`` files ``zf.training.train.fit`` writes at ``snapshot_epochs`` (a
dict ``{"features": fp16 state dict of features.*, "arch": zfnet kwargs, "epoch": int}``); the classifier is not stored
and not needed (every layer shown is convolutional).  The paper mines "all training examples"; the task mines a
seeded subset (``evolution.images``) to fit a CPU budget.

    from zf.net.models import EVOLUTION_SNAPSHOTS
    snaps = [load_snapshot(p) for _, p in find_snapshots(EVOLUTION_SNAPSHOTS)]
    res = evolution(snaps, dataset, layers=[1, 2, 3, 4, 5], n_units=3)
    fig, ax = evolution_figure(res)
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from zf.data import ImageSource, Normalize
from zf.mining.mine import mine
from zf.mining.table import TopK
from zf.net.layers import resolve_layer
from zf.net.models import zfnet
from zf.projection.rules import ProjectionOptions
from zf.views.results import save_figure, write_csv
from zf.views.visualize import display, unit_views

SNAPSHOT = re.compile(r"features_epoch(\d+)\.pt$")


def find_snapshots(folder: str | os.PathLike, epochs: Sequence[int] | None = None) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the ``features_epochNNN.pt`` files in ``folder``, by epoch; ``epochs`` keeps only those
    (each must exist).  Raises ``FileNotFoundError`` naming the folder when nothing is there."""
    folder = Path(folder)
    found = sorted((int(m.group(1)), p) for p in folder.glob("features_epoch*.pt") if (m := SNAPSHOT.search(p.name)))
    if not found:
        raise FileNotFoundError(f"no features_epochNNN.pt snapshots in {folder}: train with train.snapshot_epochs=[...] "
                                "and copy <run>/checkpoints/features_epoch*.pt there (or set evolution.snapshots=...)")
    if epochs is not None:
        have = dict(found)
        missing = [e for e in epochs if e not in have]
        if missing:
            raise FileNotFoundError(f"snapshots for epochs {missing} are not in {folder} (it has {sorted(have)})")
        found = [(e, have[e]) for e in epochs]
    return found


def load_snapshot(path: str | os.PathLike) -> tuple[int, nn.Module]:
    """(epoch, zfnet in eval mode) from a feature snapshot; the classifier keeps its random initial weights."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "features" not in obj or "arch" not in obj:
        raise ValueError(f"{path} is not a feature snapshot (a dict with 'features', 'arch', 'epoch')")
    model = zfnet(**obj["arch"])
    state = {k[len("features."):]: v.float() for k, v in obj["features"].items()}
    model.features.load_state_dict(state)
    return int(obj.get("epoch", -1)), model.eval()


def top1_views(model: nn.Module, dataset, table: TopK, layer: str, units: Sequence[int], method: str = "deconvnet",
               normalize: Normalize | None = None, device: str | torch.device = "cpu",
               tap: str = "relu") -> tuple[np.ndarray, np.ndarray]:
    """The receptive-field patch and the projection of each unit's strongest activation (rank 0 of ``table``).

    Returns patches uint8 (U, s, s, 3) and projections float32 (U, 3, s, s), s = the layer's receptive field."""
    sub = table.select(units, ranks=1)
    source = ImageSource(dataset, normalize or Normalize(), device=device)
    patches, proj = unit_views(model, source, sub, layer, list(units), ProjectionOptions(method), tap)
    return patches[:, 0], proj[:, 0]


def default_mine(model: nn.Module, dataset, layers: Sequence[str], normalize: Normalize | None,
                 device) -> dict[str, TopK]:
    return mine(model, dataset, layers=layers, k=1, normalize=normalize, device=device, progress=False)


def evolution(snapshots: Sequence[tuple[int, nn.Module]], dataset, layers: Sequence = (1, 2, 3, 4, 5),
              n_units: int = 3, units: dict | None = None, seed: int = 0, method: str = "deconvnet",
              normalize: Normalize | None = None, device: str | torch.device = "cpu",
              mine_fn: Callable | None = None) -> dict:
    """Fig. 4: for each snapshot, the strongest activation of each chosen unit over ``dataset`` and its projection.

    Args:
        snapshots: ``(epoch, model)`` pairs, in the order of the figure's columns.
        dataset: items ``(uint8 (3, H, W), label, index)`` (``zf.data.ImageDataset``).
        layers: the paper's integers or layer names (tap ``relu``).
        n_units: units per layer, chosen by ``TopK.choose_units`` on the *last* snapshot (units that end up alive).
        units: ``{layer: [unit, ...]}`` to fix the units instead (layer as given in ``layers``).
        mine_fn: ``(model, dataset, layer_names) -> {name: TopK}`` with k >= 1 (default: ``zf.mining.mine``, k=1);
            the task passes a cached miner.
    Returns:
        ``{"epochs": [E], "layers": [names], "units": {name: [U]}, "projections": {name: (U, E, 3, s, s)},
        "patches": {name: (U, E, s, s, 3) uint8}, "activation": {name: (U, E)}, "image": {name: (U, E)},
        "y"/"x": {name: (U, E)}}``.
    """
    if not snapshots:
        raise ValueError("evolution needs at least one snapshot")
    mine_fn = mine_fn or (lambda m, d, ls: default_mine(m, d, ls, normalize, device))
    first = snapshots[-1][1]
    names = [resolve_layer(first, l, "relu").name for l in layers]
    given = {resolve_layer(first, l, "relu").name: list(v) for l, v in (units or {}).items()}
    tables = [mine_fn(m, dataset, names) for _, m in snapshots]
    chosen = {n: given.get(n) or tables[-1][n].choose_units(n_units, seed + i) for i, n in enumerate(names)}
    res = {"epochs": [int(e) for e, _ in snapshots], "layers": names, "units": chosen, "projections": {},
           "patches": {}, "activation": {}, "image": {}, "y": {}, "x": {}}
    for n in names:
        projs, pats, acts, imgs, ys, xs = [], [], [], [], [], []
        for (_, model), tabs in zip(snapshots, tables):
            sub = tabs[n].select(chosen[n])
            pat, proj = top1_views(model, dataset, tabs[n], n, chosen[n], method=method, normalize=normalize,
                                   device=device)
            projs.append(proj)
            pats.append(pat)
            acts.append(sub.activation[:, 0])
            imgs.append(sub.image[:, 0])
            ys.append(sub.y[:, 0])
            xs.append(sub.x[:, 0])
        res["projections"][n] = np.stack(projs, 1)
        res["patches"][n] = np.stack(pats, 1)
        for key, v in (("activation", acts), ("image", imgs), ("y", ys), ("x", xs)):
            res[key][n] = np.stack(v, 1)
    return res


def evolution_figure(res: dict, mode: str = "symmetric", cell: float = 0.9, title: str | None = None):
    """Fig. 4 from ``evolution``'s result: rows = units grouped by layer (labelled at the left), columns = epochs.
    Each projection is stretched on its own (``zf.views.visualize.display``).  Returns (fig, axes (rows, E))."""
    import matplotlib.pyplot as plt

    rows = [(n, i, u) for n in res["layers"] for i, u in enumerate(res["units"][n])]
    ne = len(res["epochs"])
    fig, axes = plt.subplots(len(rows), ne, figsize=(cell * ne + 1.2, cell * len(rows) + 0.6), squeeze=False)
    for r, (n, i, u) in enumerate(rows):
        shown = display(res["projections"][n][i], mode)        # (E, s, s, 3)
        for e in range(ne):
            ax = axes[r, e]
            ax.imshow(shown[e], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"epoch {res['epochs'][e]}", fontsize=8)
            if e == 0:
                ax.set_ylabel(f"{n} u{u}", fontsize=7, rotation=0, ha="right", va="center")
            if i == 0 and r > 0:  # a visible break between layers
                ax.spines["top"].set_color("red")
                ax.spines["top"].set_linewidth(1.5)
    fig.suptitle(title or "Fig. 4: top-1 projection by epoch", fontsize=9)
    fig.tight_layout(h_pad=0.1, w_pad=0.1)
    return fig, axes


def rows_table(res: dict, paths: Sequence[str] | None = None) -> list[dict]:
    """One dict per (layer, unit, epoch): activation, image id (and path), position."""
    out = []
    for n in res["layers"]:
        for i, u in enumerate(res["units"][n]):
            for e, ep in enumerate(res["epochs"]):
                g = int(res["image"][n][i, e])
                out.append({"layer": n, "unit": int(u), "epoch": ep,
                            "activation": float(res["activation"][n][i, e]), "image": g,
                            "path": (paths[g] if paths is not None and g >= 0 else ""),
                            "y": int(res["y"][n][i, e]), "x": int(res["x"][n][i, e])})
    return out


def run(snapshots: Sequence[tuple[int, nn.Module]], snapshot_paths: Sequence[str], dataset, out, *,
        layers: Sequence = (1, 2, 3, 4, 5), n_units: int = 3, units: dict | None = None, seed: int = 0,
        method: str = "deconvnet", normalize: Normalize | None = None, transform: dict | None = None,
        device: str | torch.device = "cpu", mine_fn: Callable | None = None, split: str = "val", dpi: int = 110,
        tracker=None) -> float:
    """Fig. 4: ``evolution`` over ``snapshots``, written as ``evolution.npz/.csv``, ``summary.json`` and
    ``figures/evolution.png`` under ``out``.  Returns the mean top-1 activation at the last snapshot."""
    out = Path(out)
    res = evolution(snapshots, dataset, layers=layers, n_units=n_units, units=units, seed=seed, method=method,
                    normalize=normalize, device=device, mine_fn=mine_fn)
    arrays = {"epochs": np.array(res["epochs"])}
    for n in res["layers"]:
        arrays[f"{n}_units"] = np.array(res["units"][n])
        arrays[f"{n}_projections"] = res["projections"][n].astype(np.float16)
        for key in ("patches", "activation", "image", "y", "x"):
            arrays[f"{n}_{key}"] = res[key][n]
    np.savez_compressed(out / "evolution.npz", **arrays)
    write_csv(out / "evolution.csv", rows_table(res, [str(dataset.path(i)) for i in range(len(dataset))]))
    last = float(np.nanmean([np.nanmean(res["activation"][n][:, -1]) for n in res["layers"]]))
    summary = {"epochs": res["epochs"], "snapshots": [str(p) for p in snapshot_paths], "layers": res["layers"],
               "units": res["units"], "images": len(dataset), "split": split, "method": method,
               "transform": transform, "mean_last_top1_activation": last}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    fig, _ = evolution_figure(res)
    path = save_figure(fig, out / "figures" / "evolution.png", tracker, "evolution", dpi)
    if tracker is not None:
        tracker.summary({"mean_last_top1_activation": last})
        tracker.artifact("evolution", "results", [out / "evolution.npz", out / "evolution.csv", out / "summary.json"])
    print(f"evolution: {len(res['epochs'])} snapshots x {sum(map(len, res['units'].values()))} units; {path}")
    return last
