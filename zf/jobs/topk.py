"""The main job (paper Fig. 2, section 2.1) as one library call: mine the top-k images of every unit of some layers,
project them with the deconvnet (and optionally guided backpropagation and the gradient), and write a run directory
(layout: ``zf.views.results``) with tables, patches, projections, per-unit images, overview figures, ``summary.json``,
the gallery, and the W&B record.

    source = ImageSource(dataset, normalize, transform)
    summary = topk_job(model, source, TopkRequest(layers=[4]), out="outputs/run/x", cache_dir="outputs/cache")

``scripts/run.py layer=4`` reads its config and calls this (``zf.edge.tasks.topk``).  Every argument is checked before
the data pass starts: the values when the request is built, the layers and units against the model by
``TopkRequest.check`` (also run for every job of a sweep before the first starts, ``zf.edge.runtime``).
"""
from __future__ import annotations

import datetime
import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from zf.data import ImageSource
from zf.errors import ConfigError, LayerError
from zf.mining.cache import mine_cached
from zf.mining.table import TopK
from zf.net.layers import resolve_layer
from zf.projection.api import Target, activations, check_invertible, resolve_target
from zf.projection.dependence import DEFAULT_THRESHOLD, dependence_warning, reverse_context
from zf.tracking import Tracker
from zf.views import render
from zf.views.gallery import build_gallery
from zf.views.render import RenderOptions
from zf.views.results import layer_dir


@dataclass(frozen=True)
class TopkRequest:
    """What the main job computes, checked once (here and in ``RenderOptions``; the layers and units against the
    model by ``check``, before any image is read).

    layers: layers to render (numbers, names or module paths); ``mine_layers`` are mined in the same pass and cached
    for later runs.  units: channels to render (``None``: all; the overview then shows ``overview_units`` random
    units among those that fire, seeded by ``seed``; dead units are listed in the summary as ``dead_units`` and
    marked in the figures and the gallery; ``"overview"``: only the overview's units, for big layers; a list: those
    units, the overview figure showing its first ``overview_units``, since the figure draws every tile at native
    size: 64 conv5_3 units of VGG-16 would make a 68 MB PNG).  k: images per unit.  tap: where activations are read
    (``zf.net.layers``).  render: the methods (the first is the main one; the gallery toggles between them), their
    options (seed mode, LRN rule, ``crop``) and the figures (``zf.views.render.RenderOptions``).  batch_size,
    num_workers: the mining pass.  gallery: build the HTML gallery.  image_dependence_warn: warn when a layer's
    ``image_dependence`` (the median correlation of a unit's k projections, ``zf.projection.dependence``; in
    ``summary.json`` per layer and method) is above this."""

    layers: tuple
    units: tuple[int, ...] | str | None = None
    overview_units: int = 16
    k: int = 9
    tap: str = "relu"
    render: RenderOptions = field(default_factory=RenderOptions)
    mine_layers: tuple = ()
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 1
    gallery: bool = True
    image_dependence_warn: float = DEFAULT_THRESHOLD

    def __post_init__(self):
        if isinstance(self.k, bool) or int(self.k) != self.k:
            raise ConfigError(f"k={self.k!r}: use a whole number of at least 1")
        if int(self.k) < 1:
            raise ConfigError(f"k={self.k}: the number of top images per unit must be at least 1")
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise ConfigError("layer=[]: give at least one layer")
        object.__setattr__(self, "mine_layers", tuple(self.mine_layers))
        if self.units is not None and self.units != "overview":
            if not list(self.units):
                raise ConfigError("units=[]: give unit numbers, null (every unit) or overview")
            object.__setattr__(self, "units", tuple(int(u) for u in self.units))

    def check(self, model: torch.nn.Module, image_size: int) -> list[str]:
        """The names of ``layers``, after checking them against the model (``zf.errors`` errors): ``mine_layers``
        that exist (an error about them names the key: it is often the config's default, not what was typed),
        layers that exist, can be projected and have a spatial output (a unit has a position in the image), and
        ``units`` that exist in every layer."""
        for layer in self.mine_layers:
            try:
                resolve_layer(model, layer, self.tap)
            except LayerError as e:
                raise LayerError(f"mine_layers={list(self.mine_layers)} (mined in the same pass and cached; run.yaml's "
                                 f"default is for the ZF net): {e}; set mine_layers=[] or list this model's layers"
                                 ) from None
        names = [check_invertible(model, layer, self.tap).name for layer in self.layers]
        probe = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
        for name in names:
            shape = activations(model, probe, name, self.tap).shape
            if len(shape) != 4:
                raise ConfigError(f"layer={name}: its output {tuple(shape)} has no spatial positions (a fully "
                                  "connected layer?); the main job needs a layer with feature maps (N, C, H, W)")
            wrong = [u for u in self.units if not 0 <= u < shape[1]] if isinstance(self.units, tuple) else []
            if wrong:
                raise ConfigError(f"units={wrong}: {name} has units 0..{shape[1] - 1}")
        return names

    def resolve(self, model: torch.nn.Module, image_size: int) -> list[Target]:
        """Each layer as a ``Target`` (module, receptive field of just these layers, engine), after ``check``."""
        return [resolve_target(model, name, self.tap, image_size) for name in self.check(model, image_size)]

    def chosen(self, full: TopK) -> tuple[list[int], list[int]]:
        """(the units to render, the overview's units) of a layer's full table."""
        listed = list(self.units) if isinstance(self.units, tuple) else None
        overview = full.choose_units(self.overview_units, self.seed) if listed is None else listed[:self.overview_units]
        return (full.units.tolist() if self.units is None else listed or overview), overview


def topk_job(model: torch.nn.Module, source: ImageSource, request: TopkRequest, out: str | Path,
             cache_dir: str | Path, tracker: Tracker | None = None, info: dict | None = None) -> dict | None:
    """Run the main job; returns the run's summary (also written to ``out/summary.json``), or ``None`` on
    distributed ranks other than 0 (they only mine their shard).

    model: in eval mode, on ``source.device``.  source: the data set, its normalisation and transform spec
    (``zf.data.ImageSource``).  info: extra keys for ``summary.json`` (model name, checkpoint, weights).
    A ``k`` above the number of images is lowered to it, with a warning.
    """
    tracker = tracker or Tracker(enabled=False)
    out = Path(out)
    targets = request.resolve(model, source.image_size)
    if request.k > len(source.dataset):  # more ranks than images: empty ranks, and memory that grows with k
        warnings.warn(f"k={request.k} is more than the {len(source.dataset)} images of {source.dataset.files.root}: "
                      f"using k={len(source.dataset)}", stacklevel=2)
        request = replace(request, k=len(source.dataset))
    tables, cache = mine_cached(model, source.dataset, list(request.mine_layers) + [t.name for t in targets],
                                int(request.k), cache_dir, source.transform, source.normalize, tap=request.tap,
                                batch_size=request.batch_size, num_workers=request.num_workers, device=source.device,
                                progress=request.render.progress)
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    (out / "images.json").write_text(json.dumps(source.paths))
    info_layers, figs, selected = {}, {}, {}
    for t in targets:
        chosen, overview = request.chosen(tables[t.name])
        table = selected[t.name] = tables[t.name].select(chosen)
        figs[t.name], dep = render.render_layer(out, model, source, table, t, overview, request.render, tracker)
        info_layers[t.name] = _layer_info(t, table, len(tables[t.name].units), overview, out, dep)
        _say_dependence(model, t, dep, request.image_dependence_warn, source.image_size)
    summary = _summary(source, request, info_layers, cache, info)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _log(tracker, out, selected, request.render.methods, source.paths, summary)
    if request.gallery:
        print(f"gallery: {build_gallery(out)}")
    _report(out, summary, figs, len(source.dataset))
    return summary


def _layer_info(t: Target, table: TopK, channels: int, overview: list[int], out: Path, dep: dict) -> dict:
    """The summary's entry for one rendered layer."""
    return {"rf": t.rf.size, "stride": t.rf.stride, "rf_hw": list(t.rf.size_hw), "stride_hw": list(t.rf.stride_hw),
            "units": len(table.units), "channels": channels, "overview_units": overview,
            "mean_top1_activation": float(np.nanmean(table.activation[:, 0])), "dead_units": table.dead,
            "disk_mb": round(_disk_mb(layer_dir(out, t.name)), 1),
            "image_dependence": {m: round(v, 4) if v == v else None for m, v in dep.items()}}


def _summary(source: ImageSource, request: TopkRequest, info_layers: dict, cache: Path, info: dict | None) -> dict:
    r = request.render
    return {**(info or {}), "data": str(source.dataset.files.root), "transform": source.transform,
            "methods": list(r.methods), "k": int(request.k), "tap": request.tap, "crop": r.projection.crop,
            "image_dependence_warn": float(request.image_dependence_warn),
            "seed_mode": r.projection.seed_mode, "norm": r.projection.norm, "unit_figures": bool(r.unit_figures),
            "layers": info_layers, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "n_images": len(source.dataset), "skipped": sorted(set(map(str, source.dataset.skipped))),
            "mining_cache": str(cache)}


def _say_dependence(model, t: Target, dep: dict, threshold: float, size: int) -> None:
    """One log line with the layer's image dependence per method, and a warning (``zf.projection.dependence``) above
    ``threshold``."""
    if not dep:
        return
    print(f"{t.name}: image dependence (median correlation of a unit's projections; 1 = the same picture for every "
          "image): " + ", ".join(f"{m} {v:.2f}" for m, v in dep.items()))
    context = reverse_context(model, t.name, size, t.tap) if any(v > threshold for v in dep.values()) else (False, None)
    if context[1] == 1:
        print(f"{t.name}: the first convolution: a unit's projection is its own filter whatever the image and the "
              "method (as in the paper's Fig. 2, layer 1)")
    for m, v in dep.items():
        msg = dependence_warning(t.name, m, v, threshold, *context)
        if msg:
            warnings.warn(msg, stacklevel=3)


def _log(tracker: Tracker, out: Path, selected: dict, methods, paths, summary: dict) -> None:
    """W&B: each layer's table and arrays, the mean top-1 activations, the unreadable images."""
    for layer, table in selected.items():
        render.log_layer(tracker, out, layer, table, methods, paths)
    tracker.summary({f"{n}/mean_top1_activation": v["mean_top1_activation"] for n, v in summary["layers"].items()})
    if summary["skipped"]:
        tracker.summary({"skipped_images": len(summary["skipped"])})
        tracker.table("skipped", ["path"], [[p] for p in summary["skipped"]])


def _report(out: Path, summary: dict, figs: dict, n_images: int) -> None:
    """What the run wrote, on stdout."""
    if summary["skipped"]:
        print(f"{len(summary['skipped'])} unreadable images skipped (listed in {out / 'summary.json'})")
    n_read = n_images - len(summary["skipped"])
    for layer, info in summary["layers"].items():
        print(f"{layer}: {info['units']} units, top {min(summary['k'], n_read)} of {n_read} images"
              + (f"; {len(info['dead_units'])} never fire" if info["dead_units"] else "")
              + f"; {info['disk_mb']:.1f} MB on disk")
        for m, f in figs[layer].items():
            print(f"  figure ({m}): {f}")
    print(f"written to {out} ({_disk_mb(out):.1f} MB)")


def _disk_mb(folder: Path) -> float:
    """Size of the files under ``folder`` in MB (1e6 bytes)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6
