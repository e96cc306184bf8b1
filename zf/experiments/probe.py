"""Beyond the paper: a layer-wise linear probe.  How linearly separable are the classes in each layer's features?

The paper's Table 7 trains SVMs / softmax on the features of layers 1-7 for Caltech-101/256 and finds that deeper
layers give better features.  Here a softmax classifier (multinomial logistic regression, L2-regularised, fitted by
L-BFGS on standardised features) is trained on each layer's features of the shipped model for a subset of the
Imagenette train split and evaluated on its val split.  Conv layers are reduced by global average pooling of each
block's output (after pool/norm where the block has them), fc6/fc7 taken after their ReLU (dropout off).

    python scripts/run.py experiment=probe

Different data and a ten-class task: compare the trend with Table 7, not the numbers.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from zf.data import Normalize, collate_skip
from zf.net.layers import is_stack, layer_names, resolve_layer
from zf.net.modules import minable_layers
from zf.views.results import save_figure, write_csv

#: Table 7 of the paper: layer -> (Caltech-101 30/class, Caltech-256 60/class) accuracy %, SVM on that layer.
PAPER_TABLE7 = {1: (44.8, 24.6), 2: (66.2, 39.6), 3: (72.3, 46.0), 4: (76.6, 51.3), 5: (86.2, 65.6),
                7: (85.5, 71.7)}
#: Table 7's softmax rows: layer -> (Caltech-101, Caltech-256).
PAPER_TABLE7_SOFTMAX = {5: (82.9, 65.7), 7: (85.4, 72.6)}


def probe_layers(model: nn.Module, input_size: int = 224) -> "OrderedDict[str, str]":
    """{label: module path} of the layers probed: each conv block's output (``conv1`` -> ``norm1``, ...,
    ``conv5`` -> ``pool5``) and the hidden fc layers after their ReLU (not the last fc, which is the classifier).

    Any other network (no ``features`` stack: ResNet, DenseNet, ...): the top-level modules with a feature-map
    output, in forward order (``conv1 ... layer4`` of a ResNet), or the children of its one such module
    (``features.denseblock1 ...`` of a DenseNet); label = path."""
    if not is_stack(model):
        mods = dict(model.named_modules())
        skip = (nn.modules.batchnorm._NormBase, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Dropout, nn.Identity)
        paths = [p for p, shape in minable_layers(model, input_size)
                 if shape[1] * shape[2] > 1 and not isinstance(mods[p], skip)]
        top = [p for p in paths if "." not in p]
        if len(top) == 1:
            top = [p for p in paths if p.count(".") == 1 and p.startswith(top[0] + ".")]
        return OrderedDict((p, p) for p in top)
    out = OrderedDict()
    for name in layer_names(model, "conv"):
        out[name] = resolve_layer(model, name, "output").path
    fcs = layer_names(model, "fc")[:-1]
    for name in fcs:
        out[name] = resolve_layer(model, name, "relu").path
    return out


@torch.no_grad()
def extract(model: nn.Module, dataset, layers: dict[str, str] | None = None, normalize: Normalize | None = None,
            batch_size: int = 64, device: str | torch.device = "cpu",
            progress: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pooled features of ``layers`` ({label: module path}, default ``probe_layers``) for every image of ``dataset``
    (items ``(uint8 (3, H, W), label, index)``).  Returns ({label: float32 (N, D)}, labels long (N,)).
    4-d outputs are global-average-pooled to (N, C)."""
    layers = layers or probe_layers(model)
    normalize = (normalize or Normalize()).to(device)
    model = model.eval().to(device)
    modules = dict(model.named_modules())
    feats: dict[str, list] = {k: [] for k in layers}
    handles = []

    def hook(label):
        def fn(_m, _i, out):
            feats[label].append((out.mean(dim=(2, 3)) if out.dim() == 4 else out.flatten(1)).float().cpu())
        return fn

    ys = []
    try:
        for label, path in layers.items():
            handles.append(modules[path].register_forward_hook(hook(label)))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_skip)
        for batch in tqdm(loader, desc="features", disable=not progress, mininterval=5):
            if batch is None:
                continue
            model(normalize(batch[0].to(device)))
            ys.append(batch[1])
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(ys)


def fit_softmax(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-3, max_iter: int = 200) -> dict:
    """Multinomial logistic regression on ``x`` (N, D) with labels ``y`` (N,), by full-batch L-BFGS.

    Features are standardised with the training mean/std (stored in the result); the loss is the mean cross-entropy
    plus ``l2`` * ||W||^2 / 2 (no penalty on the bias).  Returns {"W" (D, C), "b" (C,), "mean", "std"}."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    W = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ W + b, y) + 0.5 * l2 * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"W": W.detach(), "b": b.detach(), "mean": mean, "std": std}


def predict(params: dict, x: torch.Tensor) -> torch.Tensor:
    """Logits (N, C) of a ``fit_softmax`` classifier."""
    z = (x.double() - params["mean"]) / params["std"]
    return z @ params["W"] + params["b"]


def accuracy(params: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(params, x).argmax(1) == y).double().mean())


def probe(train: dict[str, torch.Tensor], y_train: torch.Tensor, val: dict[str, torch.Tensor],
          y_val: torch.Tensor, num_classes: int | None = None, l2: float = 1e-3, max_iter: int = 200) -> list[dict]:
    """Fit one softmax per layer on ``train`` features, score on ``val``.  Returns one row per layer (in order):
    {"layer", "dim", "train_acc", "val_acc"} (fractions)."""
    num_classes = num_classes or int(max(y_train.max(), y_val.max())) + 1
    rows = []
    for label, xtr in train.items():
        p = fit_softmax(xtr, y_train, num_classes, l2=l2, max_iter=max_iter)
        rows.append({"layer": label, "dim": int(xtr.shape[1]), "train_acc": accuracy(p, xtr, y_train),
                     "val_acc": accuracy(p, val[label], y_val)})
    return rows


def _layer_number(label: str) -> int | None:
    digits = "".join(ch for ch in label if ch.isdigit())
    return int(digits) if digits else None


def probe_figure(rows: Sequence[dict], paper: dict = PAPER_TABLE7, chance: float | None = None):
    """Bars: our val accuracy per layer; lines: the paper's Table 7 (Caltech-101 and -256, SVM) at the same layer
    numbers (layer 6 is not in the paper).  Returns (fig, ax)."""
    import matplotlib.pyplot as plt

    labels = [r["layer"] for r in rows]
    xs = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.0 * len(rows) + 2.5, 3.6))
    ax.bar(xs, [100 * r["val_acc"] for r in rows], color="tab:blue", alpha=0.8, label="ours: Imagenette val (softmax)")
    for j, (name, style) in enumerate((("Caltech-101 (paper, SVM)", "o-"), ("Caltech-256 (paper, SVM)", "s--"))):
        pts = [(x, paper[_layer_number(lab)][j]) for x, lab in zip(xs, labels) if _layer_number(lab) in paper]
        if pts:
            ax.plot(*zip(*pts), style, color=("tab:orange", "tab:green")[j], label=name)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xticks(xs, labels)
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.set_title("linear probe by layer (paper: Table 7 trend)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig, ax


def run(model: nn.Module, train_set, val_set, out, *, normalize: Normalize | None = None, l2: float = 1e-3,
        max_iter: int = 200, batch_size: int = 64, device="cpu", transform: dict | None = None,
        progress: bool = False, dpi: int = 110, tracker=None) -> float:
    """The layer-wise probe: features of ``probe_layers(model)`` on both sets, one softmax per layer; writes
    ``probe.csv/.json`` and ``figures/probe.png`` under ``out``.  Returns the best val accuracy."""
    out = Path(out)
    layers = probe_layers(model, int((transform or {}).get("center_crop", 224)))
    kw = dict(layers=layers, normalize=normalize, batch_size=batch_size, device=device, progress=progress)
    xtr, ytr = extract(model, train_set, **kw)
    xva, yva = extract(model, val_set, **kw)
    n_classes = len(train_set.classes) or int(max(ytr.max(), yva.max())) + 1
    rows = probe(xtr, ytr, xva, yva, n_classes, l2=l2, max_iter=max_iter)
    for r in rows:
        r["paper_caltech101"], r["paper_caltech256"] = PAPER_TABLE7.get(_layer_number(r["layer"]), (None, None))
    write_csv(out / "probe.csv", rows)
    (out / "probe.json").write_text(json.dumps({"rows": rows, "train_images": len(train_set),
                                                 "val_images": len(val_set), "classes": n_classes, "l2": float(l2),
                                                 "layers": dict(layers), "transform": transform}, indent=1))
    fig, _ = probe_figure(rows, chance=1.0 / n_classes)
    save_figure(fig, out / "figures" / "probe.png", tracker, "probe", dpi)
    if tracker is not None:
        tracker.table("probe", list(rows[0]), [list(r.values()) for r in rows])
    for r in rows:
        print(f"  {r['layer']:>6}  dim {r['dim']:5d}  train {100 * r['train_acc']:5.1f}%  val {100 * r['val_acc']:5.1f}%")
    return max(r["val_acc"] for r in rows)
