"""The layout of a main-job run directory, written by ``zf.jobs.topk.topk_job`` and read by the figures and the gallery;
the writers every run uses (``write_csv``, ``save_figure``).  The top-k table itself is ``zf.mining.table.TopK``.

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
    <run>/layers/<layer>/<method>.npy           float16 (U, k, 3, rf, rf) projections in the box, each divided by its
                                                largest magnitude (re-rendering; ``zf.views.render.load_projections``)
    <run>/layers/<layer>/<method>_scale.npy     float32 (U, k): those magnitudes
    <run>/layers/<layer>/units/u<unit:04d>_<method>.png      per-unit figure: 3x3 projections beside 3x3 patches
    <run>/figures/<layer>_<method>.png          the Fig. 2 style overview for a subset of units

Everything here is plain numpy / json, so a run can be re-rendered (``zf.views.render.render_run``,
``scripts/render.py``; the gallery with ``scripts/gallery.py``) without the model.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

from zf.errors import DataError


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
    """A run's ``summary.json``; ``DataError`` (a ``FileNotFoundError``) naming the folder when it is missing, is
    not a run directory of ``scripts/run.py`` or holds a damaged summary."""
    run = Path(run)
    if not run.is_dir():
        raise DataError(f"run directory {run} does not exist: pass a run directory of scripts/run.py "
                        "(outputs/run/<date>)")
    path = run / "summary.json"
    if not path.is_file():
        raise DataError(f"{run} is not a run directory of scripts/run.py (it has no summary.json); pass one such as "
                        "outputs/run/<date>")
    try:
        summary = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path} cannot be read ({e}): rerun the job that wrote {run}") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("layers"), dict):
        raise DataError(f"{path} is not a main-job summary (no \"layers\"): pass a run directory of scripts/run.py")
    return summary


def check_run_files(run: str | os.PathLike, layers: Sequence[str] | None = None,
                    methods: Sequence[str] = ()) -> list[str]:
    """The layers of a run (``layers``, default every layer of its summary), after checking that each has its
    ``topk.npz`` and each method's ``<method>.npy``: ``DataError`` for a layer the run does not have, ``DataError``
    naming a missing array file (deleted or never written), before anything is rewritten."""
    run = Path(run)
    summary = read_summary(run)
    have = list(summary["layers"]) or sorted(p.parent.name for p in (run / "layers").glob("*/topk.npz"))
    wanted = list(layers) if layers else have
    unknown = [n for n in wanted if n not in have and not (layer_dir(run, n) / "topk.npz").is_file()]
    if unknown:
        raise DataError(f"--layers {' '.join(unknown)}: run {run} has the layers {', '.join(have)}")
    for n in wanted:
        for f in [layer_dir(run, n) / "topk.npz"] + [layer_dir(run, n) / f"{m}.npy" for m in methods]:
            if not f.is_file():
                raise DataError(f"{f} is missing: the run {run} is incomplete; rerun the job that wrote it "
                                "(python scripts/run.py ... hydra.run.dir=<that run>)")
    return wanted


def read_image_paths(run: str | os.PathLike) -> list[str]:
    return json.loads((Path(run) / "images.json").read_text())


def write_csv(path: str | os.PathLike, rows: Sequence, columns: Sequence[str] | None = None) -> Path:
    """A CSV file of ``rows``: dicts (``columns`` default to the first row's keys; extra keys are left out) or
    lists (``columns`` is the header)."""
    path = Path(path)
    rows = list(rows)
    with open(path, "w", newline="") as f:
        if not rows or isinstance(rows[0], dict):
            w = csv.DictWriter(f, fieldnames=list(columns or (rows[0].keys() if rows else [])), extrasaction="ignore")
            w.writeheader()
        else:
            w = csv.writer(f)
            if columns:
                w.writerow(list(columns))
        w.writerows(rows)
    return path


def save_figure(fig, path: str | os.PathLike, tracker=None, key: str | None = None, dpi: int = 110) -> Path:
    """Save a matplotlib figure, close it, and log it to W&B as ``key`` when a tracker is given."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, **({"pil_kwargs": {"compress_level": 1}} if path.suffix == ".png" else {}))
    plt.close(fig)
    if tracker is not None:
        tracker.image(key or path.stem, str(path))
    return path
