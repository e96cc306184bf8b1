"""Numbers for how readable a finished run's projections are, read from its run directory (no model, no data):
per layer and method, the image dependence (``zf.projection.dependence.image_dependence``: 1.0 when a unit's
projections are one picture whatever the image) and the edge alignment (``edge_alignment``: whether a projection
draws the edges of its own patch, against the chance level of another row's patch).

    python scripts/projection_stats.py outputs/run/<date>
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from zf.errors import ConfigError
from zf.mining.table import TopK
from zf.projection.dependence import edge_alignment, image_dependence
from zf.views import results as R
from zf.views.render import load_projections, read_patches
from zf.views.visualize import view_boxes, view_shape


def inside_image(boxes: np.ndarray, shape: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """(..., h, w) bool: which pixels of each view (``boxes`` (..., 4) = y0, y1, x0, x1, views of ``shape``) lie
    inside an image of ``image_hw``."""
    h, w = shape
    y = boxes[..., 0, None] + np.arange(h)
    x = boxes[..., 2, None] + np.arange(w)
    iy = (y >= 0) & (y < image_hw[0])
    ix = (x >= 0) & (x < image_hw[1])
    return iy[..., :, None] & ix[..., None, :]


def projection_stats(run: str | os.PathLike, layers: Sequence[str] | None = None,
                     methods: Sequence[str] | None = None, sigma: float = 2.0) -> dict[str, dict[str, dict]]:
    """``{layer: {method: {"image_dependence", "edge_own", "edge_shuffled", "rows"}}}`` for a main-job run
    directory (every layer and stored method by default).  ``DataError`` for a folder that is not a finished run or
    lacks a layer or an array file; ``ConfigError`` for a method the run did not store or a negative ``sigma``."""
    run = Path(run)
    summary = R.read_summary(run)
    stored = list(summary.get("methods") or ["deconvnet"])
    methods = list(methods or stored)
    unknown = [m for m in methods if m not in stored]
    if unknown:
        raise ConfigError(f"--methods {' '.join(unknown)}: run {run} stored the projections of {', '.join(stored)} "
                          "(compare_methods=true stores all three)")
    out: dict[str, dict[str, dict]] = {}
    for layer in R.check_run_files(run, layers, methods):
        ldir = R.layer_dir(run, layer)
        table = TopK.load(ldir / "topk.npz")
        valid = table.image >= 0
        if not valid.any():
            continue
        with Image.open(R.source_path(run, int(table.image[valid][0]))) as im:
            hw = (im.height, im.width)
        shape = view_shape(table, hw)
        boxes = view_boxes(table.box.reshape(-1, 4), *hw).reshape(table.box.shape)
        patches = read_patches(run, layer, table, shape)
        inside = inside_image(boxes, shape, hw)
        out[layer] = {}
        for method in methods:
            proj = load_projections(ldir, method)
            ea = edge_alignment(proj, patches, inside, valid, sigma)
            out[layer][method] = {"image_dependence": image_dependence(proj, valid), "edge_own": ea["own"],
                                  "edge_shuffled": ea["shuffled"], "rows": ea["rows"]}
    return out


def stats_table(stats: dict[str, dict[str, dict]]) -> str:
    """``projection_stats``'s result as a markdown table."""
    lines = ["| layer | method | image dependence | edge alignment (own patch) | chance (other patch) | rows |",
             "|---|---|---|---|---|---|"]
    for layer, per in stats.items():
        for method, s in per.items():
            lines.append(f"| {layer} | {method} | {s['image_dependence']:.2f} | {s['edge_own']:.2f} | "
                         f"{s['edge_shuffled']:.2f} | {s['rows']} |")
    return "\n".join(lines)


__all__ = ["projection_stats", "stats_table", "inside_image"]
