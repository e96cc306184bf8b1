"""The layout of a main-job run directory, written by ``zf.tasks.run_task`` and read by the figures and the gallery.

    <run>/summary.json                          model, data, transform, methods, k, layers, skipped images, date
    <run>/images.json                           source path of every image id used in a table
    <run>/sources/<image id:06d>.jpg            the model-input-size image (for the gallery's full view)
    <run>/layers/<layer>/topk.npz               arrays, each (U, k) unless noted:
                                                  units (U,) channel numbers, activation, image (ids), y, x (the unit's
                                                  position in the layer's map), box (U, k, 4) = y0, y1, x0, x1 of the
                                                  receptive field in input pixels, unclipped (may run past the image)
    <run>/layers/<layer>/topk.csv               one row per (unit, rank): the same, plus the image path
    <run>/layers/<layer>/patches/u<unit:04d>_r<rank>.png     the receptive-field patch (border padding shown grey)
    <run>/layers/<layer>/<method>/u<unit:04d>_r<rank>.png    the projection cropped to the same box, contrast-stretched
    <run>/layers/<layer>/<method>.npy           float16 (U, k, 3, rf, rf) raw projections in the box (re-rendering)
    <run>/layers/<layer>/units/u<unit:04d>_<method>.png      per-unit figure: 3x3 projections beside 3x3 patches
    <run>/figures/<layer>_<method>.png          the Fig. 2 style overview for a subset of units

Everything here is plain numpy / json, so a run can be re-rendered (``zf.tasks.render_run``, ``scripts/render.py``;
the gallery with ``scripts/gallery.py``) without the model.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOPK_FIELDS = ("units", "activation", "image", "y", "x", "box")


@dataclass
class TopK:
    """The top-k table of one layer.  ``units`` (U,); ``activation``, ``image``, ``y``, ``x`` (U, k); ``box``
    (U, k, 4) as y0, y1, x0, x1 (half-open, unclipped input pixels).  ``image`` = -1 where fewer than k images
    had a value (tiny data sets)."""

    units: np.ndarray
    activation: np.ndarray
    image: np.ndarray
    y: np.ndarray
    x: np.ndarray
    box: np.ndarray

    @property
    def k(self) -> int:
        return self.activation.shape[1]

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, **{f: getattr(self, f) for f in TOPK_FIELDS})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TopK":
        with np.load(path) as z:
            return cls(**{f: z[f] for f in TOPK_FIELDS})


def layer_dir(run: str | os.PathLike, layer: str) -> Path:
    return Path(run) / "layers" / layer


def patch_path(run, layer: str, unit: int, rank: int) -> Path:
    return layer_dir(run, layer) / "patches" / f"u{unit:04d}_r{rank}.png"


def projection_path(run, layer: str, method: str, unit: int, rank: int) -> Path:
    return layer_dir(run, layer) / method / f"u{unit:04d}_r{rank}.png"


def unit_figure_path(run, layer: str, unit: int, method: str) -> Path:
    return layer_dir(run, layer) / "units" / f"u{unit:04d}_{method}.png"


def source_path(run, image_id: int) -> Path:
    return Path(run) / "sources" / f"{image_id:06d}.jpg"


def read_summary(run: str | os.PathLike) -> dict:
    path = Path(run) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run} a run directory of scripts/run.py?")
    return json.loads(path.read_text())


def read_image_paths(run: str | os.PathLike) -> list[str]:
    return json.loads((Path(run) / "images.json").read_text())
