"""The main job (paper Fig. 2, section 2.1) as one library call: mine the top-k images of every unit of some layers,
project them with the deconvnet (and optionally guided backpropagation and the gradient), and write a run directory
(layout: ``zf.views.results``) with tables, patches, projections, per-unit images, overview figures, ``summary.json``,
the gallery, and the W&B record.

    summary = topk_job(model, dataset, normalize, transform, layers=[4], out="outputs/run/x",
                       cache_dir="outputs/cache")

``scripts/run.py layer=4`` reads its config and calls this (``zf.edge.tasks.topk``).  Every argument is checked before
the data pass starts.
"""
from __future__ import annotations

import datetime
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from zf.errors import ConfigError, LayerError
from zf.mining.cache import mine_cached
from zf.net.layers import is_stack, resolve_layer
from zf.net.receptive import graph_receptive_fields, receptive_fields
from zf.projection.api import activations, check_invertible, graph_crop
from zf.projection.dependence import dependence_warning, max_pool_before
from zf.projection.rules import METHODS
from zf.tracking import Tracker
from zf.views import render
from zf.views.gallery import build_gallery
from zf.views.results import layer_dir

DISPLAYS = ("symmetric", "minmax")


def check_args(model, layers: Sequence, k: int, methods: Sequence[str], tap: str, display: str,
               image_size: int, units: Sequence[int] | None = None, mine_layers: Sequence = ()) -> list[str]:
    """The layer names of ``layers``, after checking every argument of the job (raises ``zf.errors`` errors, before
    any data is read): ``k >= 1``, known methods and display, layers that exist, can be projected and have a
    spatial output (a unit has a position in the image), ``units`` that exist in every layer, and ``mine_layers``
    that exist (an error about them names the key: it is often the config's default, not what was typed)."""
    if isinstance(k, bool) or int(k) != k:
        raise ConfigError(f"k={k!r}: use a whole number of at least 1")
    if int(k) < 1:
        raise ConfigError(f"k={k}: the number of top images per unit must be at least 1")
    if not list(layers):
        raise ConfigError("layer=[]: give at least one layer")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"method={bad[0] if bad else None!r}: use one of {', '.join(METHODS)}")
    if display not in DISPLAYS:
        raise ConfigError(f"display={display!r}: use one of {', '.join(DISPLAYS)}")
    for layer in mine_layers:
        try:
            resolve_layer(model, layer, tap)
        except LayerError as e:
            raise LayerError(f"mine_layers={list(mine_layers)} (mined in the same pass and cached; run.yaml's "
                             f"default is for the ZF net): {e}; set mine_layers=[] or list this model's layers"
                             ) from None
    names = []
    for layer in layers:
        names.append(check_invertible(model, layer, tap).name)
    if units is not None and units != "overview" and not list(units):
        raise ConfigError("units=[]: give unit numbers, null (every unit) or overview")
    probe = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
    for name in names:
        shape = activations(model, probe, name, tap).shape
        if len(shape) != 4:
            raise ConfigError(f"layer={name}: its output {tuple(shape)} has no spatial positions (a fully "
                              "connected layer?); the main job needs a layer with feature maps (N, C, H, W)")
        if units is not None and units != "overview":
            wrong = [u for u in units if not 0 <= int(u) < shape[1]]
            if wrong:
                raise ConfigError(f"units={wrong}: {name} has units 0..{shape[1] - 1}")
    return names


def topk_job(model: torch.nn.Module, dataset, normalize, transform: dict, layers: Sequence, out: str | Path,
             cache_dir: str | Path, *, units: Sequence[int] | str | None = None, overview_units: int = 16, k: int = 9,
             methods: Sequence[str] = ("deconvnet",), tap: str = "relu", seed_mode: str = "activation",
             norm: str = "identity", display: str = "symmetric", mine_layers: Sequence = (), batch_size: int = 64,
             num_workers: int = 1, device="cpu", seed: int = 0, gallery: bool = True, dpi: int = 110,
             unit_figures: bool = True, tracker: Tracker | None = None, progress: bool = True,
             info: dict | None = None, crop: str = "auto",
             image_dependence_warn: float = 0.95) -> dict | None:
    """Run the main job; returns the run's summary (also written to ``out/summary.json``), or ``None`` on
    distributed ranks other than 0 (they only mine their shard).

    Args:
        model: in eval mode, on ``device``. dataset: a ``zf.data.ImageDataset``. normalize: a ``zf.data.Normalize``.
        transform: the transform spec (part of the mining cache key and the summary).
        layers: layers to render (numbers, names or module paths); ``mine_layers`` are mined in the same pass and
            cached for later runs. units: channels to render (``None``: all; the overview then shows
            ``overview_units`` random units among those that fire, seeded by ``seed``; dead units are listed in the
            summary as ``dead_units`` and marked in the figures and the gallery; ``"overview"``: only the overview's
            units, for big layers; a list: those units, the overview figure showing its first ``overview_units``,
            since the figure draws every tile at native size: 64 conv5_3 units of VGG-16 would make a 68 MB PNG).
        methods: the first is the main one; the others are computed too (the gallery toggles between them).
        unit_figures: also write the per-unit images ``units/u<unit>_<method>.png`` (``render.render_layer``).
        info: extra keys for ``summary.json`` (model name, checkpoint, weights).
        crop: ``"auto"`` (any graph's projections on receptive-field crops where ``zf.projection.graph.crop_check``
            finds them exact, else whole images) or ``"off"`` (whole images).
        image_dependence_warn: warn when a layer's ``image_dependence`` (the median correlation of a unit's k
            projections, ``zf.projection.dependence``; in ``summary.json`` per layer and method) is above this.
    """
    tracker = tracker or Tracker(enabled=False)
    out = Path(out)
    targets = check_args(model, layers, k, methods, tap, display, int(transform.get("size", 224)), units,
                         mine_layers)
    if int(k) > len(dataset):  # more ranks than images: empty ranks, and memory that grows with k for nothing
        warnings.warn(f"k={k} is more than the {len(dataset)} images of {dataset.files.root}: using k={len(dataset)}",
                      stacklevel=2)
        k = len(dataset)
    graph_crop(crop)  # a ConfigError for anything but auto / off (True / False)
    tables, cache = mine_cached(model, dataset, list(mine_layers) + targets, int(k), cache_dir, transform,
                                normalize, tap=tap, batch_size=batch_size, num_workers=num_workers, device=device,
                                progress=progress)
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    id_paths = [str(dataset.path(i)) for i in range(len(dataset))]
    (out / "images.json").write_text(json.dumps(id_paths))
    rfs = _fields(model, targets, tap, int(transform.get("size", 224)))
    info_layers, figs, selected = {}, {}, {}
    listed = None if units is None or units == "overview" else [int(u) for u in units]
    for layer in targets:
        full = tables[layer]
        overview = full.choose_units(overview_units, seed) if listed is None else listed[:overview_units]
        chosen = full.units.tolist() if units is None else listed or overview
        table = selected[layer] = full.select(chosen)
        dep: dict = {}
        figs[layer] = render.render_layer(out, model, dataset, normalize, table, layer, overview, methods, tap,
                                          seed_mode, norm, display, device, dpi, tracker, progress, unit_figures,
                                          id_paths, crop=crop, dependence=dep)
        info_layers[layer] = {"rf": rfs[layer].size, "stride": rfs[layer].stride,
                              "rf_hw": list(rfs[layer].size_hw), "stride_hw": list(rfs[layer].stride_hw),
                              "units": len(chosen),
                              "channels": len(full.units), "overview_units": overview,
                              "mean_top1_activation": float(np.nanmean(table.activation[:, 0])),
                              "dead_units": table.dead, "disk_mb": round(_disk_mb(layer_dir(out, layer)), 1),
                              "image_dependence": {m: round(v, 4) if v == v else None for m, v in dep.items()}}
        _say_dependence(model, layer, tap, dep, image_dependence_warn, int(transform.get("size", 224)))
    summary = {**(info or {}), "data": str(dataset.files.root), "transform": transform, "methods": list(methods),
               "k": int(k), "tap": tap, "crop": crop, "image_dependence_warn": float(image_dependence_warn),
               "seed_mode": seed_mode, "norm": norm, "unit_figures": bool(unit_figures),
               "layers": info_layers,
               "date": datetime.datetime.now().isoformat(timespec="seconds"), "n_images": len(dataset),
               "skipped": sorted(set(map(str, dataset.skipped))), "mining_cache": str(cache)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for layer, table in selected.items():
        render.log_layer(tracker, out, layer, table, methods, id_paths)
    tracker.summary({f"{n}/mean_top1_activation": v["mean_top1_activation"] for n, v in info_layers.items()})
    if summary["skipped"]:
        tracker.summary({"skipped_images": len(summary["skipped"])})
        tracker.table("skipped", ["path"], [[p] for p in summary["skipped"]])
    if gallery:
        print(f"gallery: {build_gallery(out)}")
    if summary["skipped"]:
        print(f"{len(summary['skipped'])} unreadable images skipped (listed in {out / 'summary.json'})")
    n_read = len(dataset) - len(summary["skipped"])
    for layer in targets:
        print(f"{layer}: {info_layers[layer]['units']} units, top {min(int(k), n_read)} of {n_read} images"
              + (f"; {len(info_layers[layer]['dead_units'])} never fire" if info_layers[layer]["dead_units"] else "")
              + f"; {info_layers[layer]['disk_mb']:.1f} MB on disk")
        for m, f in figs[layer].items():
            print(f"  figure ({m}): {f}")
    print(f"written to {out} ({_disk_mb(out):.1f} MB)")
    return summary


def _fields(model, targets: Sequence[str], tap: str, size: int) -> dict:
    """The receptive fields of the layers ``targets`` only (names as ``check_args`` gives them): the recurrence for
    a ``features`` stack, a measurement of just these module paths for any other graph."""
    if is_stack(model):
        return receptive_fields(model, input_size=size)
    paths = {t: resolve_layer(model, t, tap).path for t in targets}
    got = graph_receptive_fields(model, size, list(dict.fromkeys(paths.values())))
    return {t: got[p] for t, p in paths.items()}


def _say_dependence(model, layer: str, tap: str, dep: dict, threshold: float, size: int) -> None:
    """One log line with the layer's image dependence per method, and a warning (``zf.projection.dependence``) above
    ``threshold``."""
    if not dep:
        return
    print(f"{layer}: image dependence (median correlation of a unit's projections; 1 = the same picture for every "
          "image): " + ", ".join(f"{m} {v:.2f}" for m, v in dep.items()))
    switches = None
    for m, v in dep.items():
        if v > threshold and switches is None:
            switches = max_pool_before(model, layer, size, tap)
        msg = dependence_warning(layer, m, v, threshold, bool(switches))
        if msg:
            warnings.warn(msg, stacklevel=3)


def _disk_mb(folder: Path) -> float:
    """Size of the files under ``folder`` in MB (1e6 bytes)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6

