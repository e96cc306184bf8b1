"""The main job (paper Fig. 2, section 2.1) as one library call: mine the top-k images of every unit of some layers,
project them with the deconvnet (and optionally guided backpropagation and the gradient), and write a run directory
(layout: ``zf.results``) with tables, patches, projections, per-unit images, overview figures, ``summary.json``, the
gallery, and the W&B record.

    summary = topk_job(model, dataset, normalize, transform, layers=[4], out="outputs/run/x",
                       cache_dir="outputs/cache")

``scripts/run.py layer=4`` reads its config and calls this (``zf.tasks.topk``).  Every argument is checked before
the data pass starts.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import render
from .cache import mine_cached
from .deconv import METHODS
from .errors import ConfigError
from .receptive import receptive_fields
from .results import layer_dir
from .tracking import Tracker

DISPLAYS = ("symmetric", "minmax")


def check_args(model, layers: Sequence, k: int, methods: Sequence[str], tap: str, display: str,
               image_size: int, units: Sequence[int] | None = None) -> list[str]:
    """The layer names of ``layers``, after checking every argument of the job (raises ``zf.errors`` errors, before
    any data is read): ``k >= 1``, known methods and display, layers that exist and can be projected, and
    ``units`` that exist in every layer."""
    from .deconv import activations, check_invertible

    if int(k) < 1:
        raise ConfigError(f"k={k}: the number of top images per unit must be at least 1")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"method={bad[0] if bad else None!r}: use one of {', '.join(METHODS)}")
    if display not in DISPLAYS:
        raise ConfigError(f"display={display!r}: use one of {', '.join(DISPLAYS)}")
    names = []
    for layer in layers:
        names.append(check_invertible(model, layer, tap).name)
    if units is not None and units != "overview":
        probe = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
        for name in names:
            channels = activations(model, probe, name, tap).shape[1]
            wrong = [u for u in units if not 0 <= int(u) < channels]
            if wrong:
                raise ConfigError(f"units={wrong}: {name} has units 0..{channels - 1}")
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
        crop: ``"auto"`` (any graph's projections on receptive-field crops where ``zf.graph_project.crop_check``
            finds them exact, else whole images) or ``"off"`` (whole images).
        image_dependence_warn: warn when a layer's ``image_dependence`` (the median correlation of a unit's k
            projections, ``zf.dependence``; in ``summary.json`` per layer and method) is above this.
    """
    import torch.distributed as dist

    tracker = tracker or Tracker(enabled=False)
    out = Path(out)
    targets = check_args(model, layers, k, methods, tap, display, int(transform.get("size", 224)), units)
    if crop not in ("auto", "off"):
        raise ConfigError(f"crop={crop!r}: use auto or off")
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
        from .gallery import build_gallery

        print(f"gallery: {build_gallery(out)}")
    if summary["skipped"]:
        print(f"{len(summary['skipped'])} unreadable images skipped (listed in {out / 'summary.json'})")
    for layer in targets:
        print(f"{layer}: {info_layers[layer]['units']} units, top {k} of {len(dataset)} images"
              + (f"; {len(info_layers[layer]['dead_units'])} never fire" if info_layers[layer]["dead_units"] else "")
              + f"; {info_layers[layer]['disk_mb']:.1f} MB on disk")
        for m, f in figs[layer].items():
            print(f"  figure ({m}): {f}")
    print(f"written to {out} ({_disk_mb(out):.1f} MB)")
    return summary


def _fields(model, targets: Sequence[str], tap: str, size: int) -> dict:
    """The receptive fields of the layers ``targets`` only (names as ``check_args`` gives them): the recurrence for
    a ``features`` stack, a measurement of just these module paths for any other graph."""
    from .layers import is_stack, resolve_layer
    from .receptive import graph_receptive_fields

    if is_stack(model):
        return receptive_fields(model, input_size=size)
    paths = {t: resolve_layer(model, t, tap).path for t in targets}
    got = graph_receptive_fields(model, size, list(dict.fromkeys(paths.values())))
    return {t: got[p] for t, p in paths.items()}


def _say_dependence(model, layer: str, tap: str, dep: dict, threshold: float, size: int) -> None:
    """One log line with the layer's image dependence per method, and a warning (``zf.dependence``) above
    ``threshold``."""
    import warnings

    from .dependence import dependence_warning, max_pool_before

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

