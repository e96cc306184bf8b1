"""Occlusion sensitivity (Zeiler & Fergus, section 4.2, Fig. 7).

A grey square slides over the image; at every position the network sees the occluded copy and we record (b) the total
activation of the layer-5 feature map that is strongest on the unoccluded image, (d) the probability of the correct
class and (e) the most probable class.  Many occluded copies go through the network in one batch.

    res = occlusion(model, x, label=3, size=48, stride=8)        # x: (3, 224, 224) normalised
    res["p_true"].shape == (23, 23)

Run it: ``python scripts/run.py experiment=occlusion``.

The paper gives neither the square's size, its stride nor its grey.  Defaults here: 48 px, stride 8 and grey = the
data set's mean colour, i.e. 0 after normalisation.  Occluder positions are top-left corners ``0, stride, ...`` up to
``H - size`` (the square always lies inside the image); the maps are indexed by those corners and are drawn at the
square's centres.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from zf.data import ImageSource
from zf.errors import ConfigError
from zf.experiments.classes import readable
from zf.experiments.features import forward_taps, grey_fill
from zf.net.layers import resolve_layer
from zf.projection.api import project_windows, resolve_target
from zf.projection.rules import ProjectionOptions
from zf.views.plotting import image_grid
from zf.views.results import save_figure
from zf.views.visualize import display, unit_projections


def grid_positions(height: int, width: int, size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (ys, xs) of a ``size`` square moved by ``stride`` and kept inside a ``height`` x ``width``
    image: ``range(0, height - size + 1, stride)`` (likewise for x)."""
    if size > min(height, width) or size < 1 or stride < 1:
        raise ValueError(f"occluder size {size} / stride {stride} do not fit a {height}x{width} image")
    return np.arange(0, height - size + 1, stride), np.arange(0, width - size + 1, stride)


def occlude(image: torch.Tensor, corners: torch.Tensor, size: int, value: float | Sequence[float] = 0.0
            ) -> torch.Tensor:
    """Copies of ``image`` (C, H, W), each with a ``size`` square set to ``value`` (a number or one per channel)
    at its row of ``corners`` (B, 2) = (y0, x0).  Returns (B, C, H, W)."""
    c, h, w = image.shape
    out = image.unsqueeze(0).repeat(len(corners), 1, 1, 1)
    fill = torch.as_tensor(value, dtype=image.dtype, device=image.device).reshape(-1, 1, 1).expand(c, size, size)
    for b, (y0, x0) in enumerate(corners.tolist()):
        out[b, :, y0:y0 + size, x0:x0 + size] = fill[:, :min(size, h - y0), :min(size, w - x0)]
    return out


@torch.no_grad()
def occlusion_sweep(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, size: int, stride: int,
                    value: float | Sequence[float] = 0.0, batch_size: int = 64, progress: bool = False,
                    desc: str = "occlusion") -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``fn`` of every occluded copy of ``image`` (C, H, W), batched.

    ``fn`` maps (B, C, H, W) to (B, ...).  Returns (out (ny, nx, ...), ys, xs) with ``out[i, j]`` = ``fn`` of the
    image occluded at corner (ys[i], xs[j])."""
    ys, xs = grid_positions(image.shape[1], image.shape[2], size, stride)
    corners = torch.tensor([(y, x) for y in ys for x in xs], dtype=torch.long)
    outs = []
    for b0 in tqdm(range(0, len(corners), batch_size), desc=desc, disable=not progress, mininterval=2):
        outs.append(fn(occlude(image, corners[b0:b0 + batch_size], size, value)).cpu())
    out = torch.cat(outs)
    return out.reshape(len(ys), len(xs), *out.shape[1:]), ys, xs


def strongest_unit(maps: torch.Tensor) -> tuple[int, int, int]:
    """(channel, y, x) of the largest activation in ``maps`` (C, h, w): the "strongest feature map" of Fig. 7(b)
    is the one holding the image's largest single activation (the one the deconvnet projects in (c))."""
    c, h, w = maps.shape
    i = int(torch.argmax(maps))
    return i // (h * w), (i % (h * w)) // w, i % w


@torch.no_grad()
def occlusion(model: nn.Module, image: torch.Tensor, label: int, layer: int | str = 5, tap: str = "relu",
              unit: int | None = None, size: int = 48, stride: int = 8, value: float | Sequence[float] = 0.0,
              batch_size: int = 64, progress: bool = False) -> dict:
    """Fig. 7 (b), (d), (e) for one image.

    Args:
        model: a ``features`` -> ``classifier`` network in eval mode.
        image: (3, H, W) normalised input; ``label`` its true class index.
        layer, tap: the layer of panel (b) (the paper: layer 5; here its rectified maps, ``relu5``).
        unit: the feature map of (b); ``None``: the strongest on the unoccluded image (``strongest_unit``).
        size, stride, value: the occluder (``value`` in normalised units: 0 = the data mean).
    Returns a dict of numpy arrays / numbers: ``activation`` (ny, nx) total activation of the map, ``p_true``
    (ny, nx), ``top_label`` (ny, nx) int, ``probs`` (ny, nx, K), ``ys``/``xs`` corners, ``unit``, ``unit_pos``
    (y, x) of its largest activation, ``layer`` name and the unoccluded ``base_activation``, ``base_p_true``,
    ``base_label``.
    """
    name = resolve_layer(model, layer, tap).name
    spec = [(layer, tap)]
    feats, logits = forward_taps(model, image[None], spec, flatten=False)
    maps = feats[name][0]
    if unit is None:
        unit, uy, ux = strongest_unit(maps)
    else:
        m = maps[unit]
        uy, ux = int(torch.argmax(m)) // m.shape[1], int(torch.argmax(m)) % m.shape[1]

    def fn(x):
        f, lg = forward_taps(model, x, spec, flatten=False)
        return torch.cat([f[name][:, unit].sum((1, 2))[:, None], torch.softmax(lg, 1)], 1)

    out, ys, xs = occlusion_sweep(fn, image, size, stride, value, batch_size, progress)
    probs = out[..., 1:].numpy()
    base_probs = torch.softmax(logits, 1)[0]
    return {"layer": name, "unit": int(unit), "unit_pos": (int(uy), int(ux)),
            "activation": out[..., 0].numpy(), "probs": probs, "p_true": probs[..., label],
            "top_label": probs.argmax(-1), "ys": ys, "xs": xs, "size": int(size), "stride": int(stride),
            "base_activation": float(maps[unit].sum()), "base_p_true": float(base_probs[label]),
            "base_label": int(base_probs.argmax()), "label": int(label)}


def occlusion_figure(images: Sequence[np.ndarray], results: Sequence[dict], projections: Sequence[np.ndarray],
                     others: Sequence[np.ndarray | None], boxes: Sequence[Sequence[int]], class_names: Sequence[str],
                     cell: float = 2.4):
    """The paper's Fig. 7, one row per image.

    Args:
        images: uint8 (H, W, 3) inputs.
        results: ``occlusion(...)`` of each image.
        projections: uint8 (s, s, 3) display of the unit's deconvnet projection in this image (its receptive field).
        others: uint8 (h, w, 3) grid of the same unit's projections in other images (the mined top 9), or None.
        boxes: (y0, y1, x0, x1) of the projection's receptive field in the image (drawn on (a)).
        class_names: the K class names (legend of (e)).
    Returns (fig, axes) with axes (rows, 6): (a) image, (b) activation, (c) projection here, (c') in other images,
    (d) p(true class), (e) most probable class.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch, Rectangle

    n, k = len(images), len(class_names)
    fig, axes = plt.subplots(n, 6, figsize=(6 * cell + 2.2, n * cell), squeeze=False)
    colours = plt.get_cmap("tab10" if k <= 10 else "tab20")(np.arange(k) % (10 if k <= 10 else 20))
    cmap = ListedColormap(colours)
    for r, (img, res) in enumerate(zip(images, results)):
        h, w = img.shape[:2]
        s = res["size"]
        # maps are drawn at the occluder's centres, on the image's own pixel frame
        ext = (res["xs"][0] + s / 2 - res["stride"] / 2, res["xs"][-1] + s / 2 + res["stride"] / 2,
               res["ys"][-1] + s / 2 + res["stride"] / 2, res["ys"][0] + s / 2 - res["stride"] / 2)
        a = axes[r]
        a[0].imshow(img)
        y0, y1, x0, x1 = boxes[r]
        a[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="k", lw=1.5))
        a[0].add_patch(Rectangle((-0.5, -0.5), s, s, fill=True, fc="0.5", ec="w", lw=0.8, alpha=0.8))
        a[0].set_title(f"(a) {class_names[res['label']]}\np={res['base_p_true']:.2f}", fontsize=8)
        im = a[1].imshow(res["activation"], extent=ext, cmap="viridis")
        fig.colorbar(im, ax=a[1], fraction=0.046, pad=0.02)
        a[1].set_title(f"(b) {res['layer']} map {res['unit']}\ntotal activation", fontsize=8)
        a[2].imshow(projections[r])
        a[2].set_title("(c) projection, this image", fontsize=8)
        if others[r] is not None:
            a[3].imshow(others[r])
        a[3].set_title("(c) same map, other images", fontsize=8)
        im = a[4].imshow(res["p_true"], extent=ext, cmap="jet", vmin=0, vmax=1)
        fig.colorbar(im, ax=a[4], fraction=0.046, pad=0.02)
        a[4].set_title("(d) p(true class)", fontsize=8)
        a[5].imshow(res["top_label"], extent=ext, cmap=cmap, norm=BoundaryNorm(np.arange(k + 1) - 0.5, k),
                    interpolation="nearest")
        present = sorted(set(np.unique(res["top_label"]).tolist()))
        a[5].legend(handles=[Patch(color=colours[c], label=class_names[c]) for c in present], fontsize=6,
                    loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        a[5].set_title("(e) most probable class", fontsize=8)
        for j in (1, 4, 5):
            a[j].set_xlim(0, w)
            a[j].set_ylim(h, 0)
        for ax in a:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig, axes


def run(model: nn.Module, raw: torch.Tensor, labels: Sequence[int], paths: Sequence[str], classes: Sequence[str],
        normalize, out, *, layer: int | str = 5, tap: str = "relu", size: int = 48, stride: int = 8,
        grey="mean", batch_size: int = 64, method: str = "deconvnet", norm: str = "identity",
        display_mode: str = "symmetric", dataset=None, mine_fn: Callable | None = None, device="cpu",
        dpi: int = 110, tracker=None, progress: bool = False) -> float:
    """Fig. 7 for each image of ``raw`` (uint8 (N, 3, H, W), true class indices ``labels``, relative ``paths``):
    occlusion maps, the unit's projection here and (with ``dataset`` and ``mine_fn(layers) -> {name: TopK}``) in its
    mined top-k; writes ``activation/p_true/top_label/probs/projections.npy``, ``occlusion.json`` and
    ``figures/occlusion.png`` under ``out``.  Returns the mean drop of p(true class) from the unoccluded image to
    the worst occluder position."""
    if any(l < 0 for l in labels):
        raise ConfigError("occlusion: every image must lie in a folder named after one of the model's classes "
                          f"({', '.join(classes[:5])}, ...): p(true class) is the figure's panel (d)")
    out = Path(out)
    normalize = normalize.to(device)
    x = normalize(raw.to(device))
    value = grey_fill(grey, normalize)
    results = []
    for i, rel in enumerate(paths):
        print(f"occlusion: {rel}")
        results.append(occlusion(model, x[i], labels[i], layer=layer, tap=tap, size=size, stride=stride,
                                 value=value, batch_size=batch_size, progress=progress))
    name = results[0]["layer"]
    projections, boxes, others = [], [], [None] * len(results)
    for i, r in enumerate(results):
        row = torch.tensor([[0, r["unit"], *r["unit_pos"]]], device=device)
        win, corner = project_windows(model, x[i:i + 1], row, name, method=method, tap=tap, norm=norm)
        projections.append(display(win[0].cpu(), display_mode))
        y0, x0 = corner[0].tolist()
        boxes.append((y0, y0 + win.shape[2], x0, x0 + win.shape[3]))
    if dataset is not None and mine_fn is not None:
        # (c): the same maps in other images = their mined top-k
        table = mine_fn([name])[name]
        for i, r in enumerate(results):
            source = ImageSource(dataset, normalize, device=device)
            target = resolve_target(model, name, tap, source.image_size)
            proj = unit_projections(model, source, table, target, [r["unit"]], ProjectionOptions(method, norm=norm))
            others[i] = image_grid(display(proj[0], display_mode), ncols=3)
    names = readable(list(classes))
    np.save(out / "activation.npy", np.stack([r["activation"] for r in results]))
    np.save(out / "p_true.npy", np.stack([r["p_true"] for r in results]))
    np.save(out / "top_label.npy", np.stack([r["top_label"] for r in results]))
    np.save(out / "probs.npy", np.stack([r["probs"] for r in results]).astype(np.float16))
    np.save(out / "projections.npy", np.stack(projections))
    summary = {"layer": name, "size": int(size), "stride": int(stride), "grey": str(grey),
               "fill_normalised": value, "classes": list(classes), "class_names": names,
               "ys": results[0]["ys"].tolist(), "xs": results[0]["xs"].tolist(), "images": []}
    for rel, r, b in zip(paths, results, boxes):
        iy, ix = np.unravel_index(int(np.argmin(r["p_true"])), r["p_true"].shape)
        summary["images"].append({
            "path": str(rel), "label": r["label"], "class": names[r["label"]], "unit": r["unit"],
            "unit_pos": list(r["unit_pos"]), "projection_box": list(b), "base_activation": r["base_activation"],
            "base_p_true": r["base_p_true"], "base_label": names[r["base_label"]],
            "min_p_true": float(r["p_true"].min()), "min_p_true_corner": [int(r["ys"][iy]), int(r["xs"][ix])],
            "labels_seen": sorted({names[c] for c in np.unique(r["top_label"]).tolist()})})
    (out / "occlusion.json").write_text(json.dumps(summary, indent=1))
    fig, _ = occlusion_figure([im.permute(1, 2, 0).numpy() for im in raw], results, projections, others, boxes,
                              names)
    save_figure(fig, out / "figures" / "occlusion.png", tracker, "occlusion/figure", dpi)
    drop = float(np.mean([r["base_p_true"] - r["p_true"].min() for r in results]))
    if tracker is not None:
        tracker.summary({"mean_p_true_drop": drop})
        tracker.artifact("occlusion", "occlusion", [out / f for f in ("activation.npy", "p_true.npy",
                                                                      "top_label.npy", "occlusion.json")])
    for s in summary["images"]:
        print(f"  {s['path']}: {s['class']} p={s['base_p_true']:.3f} (min {s['min_p_true']:.3f} at "
              f"{s['min_p_true_corner']}), {name} map {s['unit']}; labels seen: {', '.join(s['labels_seen'])}")
    return drop
