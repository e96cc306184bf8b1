"""Features of several layers and the class scores from one forward pass (shared by the occlusion, invariance and
correspondence experiments).

    feats, logits = forward_taps(model, x, [(1, "output"), ("fc7", "relu")])   # {"norm1": (N, D1), "relu7": ...}
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from zf.data import read_image, resize_crop
from zf.errors import DataError
from zf.net.layers import resolve_layer


def tap_names(model: nn.Module, specs: Sequence[tuple]) -> list[str]:
    """The ``zf.net.layers`` names of ``specs`` = [(layer, tap), ...] (e.g. (1, "output") -> "norm1" in zfnet)."""
    return [resolve_layer(model, layer, tap).name for layer, tap in specs]


@torch.no_grad()
def forward_taps(model: nn.Module, x: torch.Tensor, specs: Sequence[tuple], flatten: bool = True,
                 batch_size: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run ``model`` on normalised images ``x`` (N, 3, H, W) and read the activations of ``specs``.

    Args:
        specs: [(layer, tap), ...] as ``zf.net.layers.resolve_layer`` takes them.
        flatten: return (N, D) per layer; else the layer's own shape (N, C, h, w) or (N, D).
        batch_size: images per forward pass (default: all at once).
    Returns:
        ({layer name: features}, logits (N, classes)).  Eval semantics: the caller puts the model in eval mode.
    """
    layers = [resolve_layer(model, layer, tap) for layer, tap in specs]
    store: dict[str, list[torch.Tensor]] = {l.name: [] for l in layers}
    # an in-place ReLU after a "conv" tap would overwrite the stored tensor: clone
    hooks = [l.module.register_forward_hook(lambda m, i, o, n=l.name: store[n].append(o.detach().clone()))
             for l in layers]
    logits = []
    try:
        bs = batch_size or len(x)
        for b0 in range(0, len(x), bs):
            logits.append(model(x[b0:b0 + bs]))
    finally:
        for h in hooks:
            h.remove()
    feats = {n: torch.cat(v) for n, v in store.items()}
    if flatten:
        feats = {n: v.flatten(1) for n, v in feats.items()}
    return feats, torch.cat(logits)


def load_images(root, rel_paths: Sequence[str], size: int, classes: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
    """uint8 (N, 3, size, size) of ``root / rel`` for each relative path, and each image's class index (its folder
    in ``classes``; -1, with a warning naming the image, when the folder is not a class: experiments then report
    p(true class) as NaN rather than reading another class)."""
    imgs, labels = [], []
    for rel in rel_paths:
        p = Path(root) / str(rel)
        img = read_image(p, size)
        if img is None:
            raise DataError(f"{p}: missing or unreadable (experiment image paths are relative to {root})")
        imgs.append(resize_crop(img, size))
        if p.parent.name in classes:
            labels.append(list(classes).index(p.parent.name))
        else:
            warnings.warn(f"{p}: its folder {p.parent.name!r} is not one of the model's classes; p(true class) is "
                          "reported as NaN for it", stacklevel=2)
            labels.append(-1)
    return torch.stack(imgs), labels


def grey_fill(grey, normalize) -> float | list[float]:
    """An occluder's fill in normalised units: ``"mean"`` (the data mean: 0) or a grey level 0..255 (one value per
    channel).  ``normalize`` (a ``zf.data.Normalize``) is read, never moved."""
    if str(grey) == "mean":
        return 0.0
    mean, std = normalize.mean.detach().cpu().flatten(), normalize.std.detach().cpu().flatten()
    return ((float(grey) - mean) / std).tolist()


def p_of(probs: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """``probs[i, labels[i]]`` for each row, NaN where the label is unknown (-1)."""
    lab = torch.as_tensor(list(labels), dtype=torch.long, device=probs.device)
    out = probs.gather(1, lab.clamp(min=0)[:, None])[:, 0]
    return torch.where(lab >= 0, out, torch.full_like(out, float("nan")))
