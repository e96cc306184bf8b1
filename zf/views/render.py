"""Rendering a main-job run directory (layout: ``zf.views.results``): the per-layer arrays and tables, the
receptive-field patches, the projection PNGs, the per-unit images and the Fig. 2 overview figures, and their W&B record.

``render_layer`` computes and writes one layer from a model and its mined table; ``write_layer_images`` draws the
PNGs and the overview from arrays alone; ``render_run`` re-renders a finished run from what it saved (no model, no
data pass), e.g. with another display mode: ``python scripts/render.py <run> --display minmax``.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from zf.data import ImageSource
from zf.errors import ConfigError
from zf.faults import pause_point
from zf.mining.table import TopK
from zf.projection.api import Target
from zf.projection.dependence import image_dependence
from zf.projection.rules import METHODS, ProjectionOptions
from zf.tracking import Tracker
from zf.views import results as R
from zf.views.gallery import build_gallery
from zf.views.plotting import image_grid
from zf.views.results import save_figure, write_csv
from zf.views.visualize import DISPLAYS, display, overview_figure, unit_image, unit_projections, unit_views

TOPK_COLUMNS = ["layer", "unit", "rank", "image", "path", "y", "x", "activation", "y0", "y1", "x0", "x1"]


def topk_rows(layer: str, table: TopK, paths: Sequence[str]) -> list[list]:
    """One CSV row per filled (unit, rank) of ``table`` (columns ``TOPK_COLUMNS``)."""
    rows = []
    for i, u in enumerate(table.units):
        for r in range(table.k):
            g = int(table.image[i, r])
            if g >= 0:
                rows.append([layer, int(u), r, g, paths[g], int(table.y[i, r]), int(table.x[i, r]),
                             f"{table.activation[i, r]:.6g}", *map(int, table.box[i, r])])
    return rows


def save_sources(out: Path, dataset, image_ids) -> None:
    """``sources/<id>.jpg``: the model-input-size image of every id (the gallery's full view); existing files stay."""
    (out / "sources").mkdir(parents=True, exist_ok=True)
    for g in np.unique(np.asarray(image_ids)[np.asarray(image_ids) >= 0]):
        src = R.source_path(out, int(g))
        if not src.is_file():
            Image.fromarray(dataset[int(g)][0].permute(1, 2, 0).numpy()).save(src, quality=90)


@dataclass(frozen=True)
class RenderOptions:
    """How a layer is computed and drawn, checked once: the projection ``methods`` (the first is the main one; its
    pass also writes the patches), the ``projection`` options they share (seed mode, LRN rule, crop), the ``display``
    stretch, the figures' ``dpi``, whether the per-unit images are written (``unit_figures``: they repeat the patch
    and projection PNGs in one picture, about a quarter of a big layer's disk use), a ``progress`` bar, and whether
    the patch PNGs are written (``write_patches``; a re-render has them already)."""

    methods: tuple[str, ...] = ("deconvnet",)
    projection: ProjectionOptions = field(default_factory=ProjectionOptions)
    display: str = "symmetric"
    dpi: int = 110
    unit_figures: bool = True
    progress: bool = True
    write_patches: bool = True

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(self.methods))
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ConfigError(f"method={bad[0] if bad else None!r}: use one of {', '.join(METHODS)}")
        if self.display not in DISPLAYS:
            raise ConfigError(f"display={self.display!r}: use one of {', '.join(DISPLAYS)}")


def render_layer(out: Path, model, source: ImageSource, table: TopK, target: Target, overview: list[int],
                 options: RenderOptions, tracker: Tracker | None = None) -> tuple[dict[str, Path], dict[str, float]]:
    """Write one layer's part of a run directory for the units of ``table``; returns ({method: overview figure},
    {method: image dependence}), the latter the median pairwise correlation of a unit's projections
    (``zf.projection.dependence.image_dependence``).  The patches are cut once, from the images the first
    method's pass reads; each method's projections are computed, stored (``save_projections``) and drawn from what
    was stored."""
    tracker = tracker or Tracker(enabled=False)
    ldir = R.layer_dir(out, target.name)
    ldir.mkdir(parents=True, exist_ok=True)
    table.save(ldir / "topk.npz")
    write_csv(ldir / "topk.csv", topk_rows(target.name, table, source.paths), TOPK_COLUMNS)
    save_sources(out, source.dataset, table.image)
    units = table.units.tolist()
    figs, dependence, patches = {}, {}, None
    for method in options.methods:
        projection = options.projection.with_method(method)
        if patches is None:  # the first method's pass cuts the patches from the images it reads
            patches, proj = unit_views(model, source, table, target, units, projection, progress=options.progress)
        else:
            proj = unit_projections(model, source, table, target, units, projection, options.progress)
        dependence[method] = image_dependence(proj, table.image[:, :proj.shape[1]] >= 0)
        proj = save_projections(ldir, method, proj)  # what the run keeps: a re-render gives the same pictures
        figs[method] = write_layer_images(out, target.name, table, overview, method, (patches, proj), options,
                                          tracker)
    return figs, dependence


def save_projections(ldir: Path, method: str, proj: np.ndarray) -> np.ndarray:
    """Store projections (U, k, 3, s, s) compactly and safely: ``<method>.npy`` holds each projection divided by its
    largest magnitude, as float16 (values in [-1, 1]: no overflow, whatever the network's scale; real networks give
    1e3-1e5, beyond float16's 65504), and ``<method>_scale.npy`` the float32 factors (U, k).  Returns what a reader
    of the two files gets back (``load_projections``), so the run draws exactly what a re-render draws."""
    proj = np.asarray(proj, np.float32)
    if not np.isfinite(proj).all():
        raise FloatingPointError(f"{ldir.name}/{method}: {int((~np.isfinite(proj)).sum())} projection values are not "
                                 "finite (the model's activations overflow float32)")
    scale = np.abs(proj).reshape(*proj.shape[:2], -1).max(-1) if proj.size else np.zeros(proj.shape[:2], np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    stored = (proj / scale[..., None, None, None]).astype(np.float16)
    np.save(ldir / f"{method}.npy", stored)
    np.save(ldir / f"{method}_scale.npy", scale)
    return stored.astype(np.float32) * scale[..., None, None, None]  # = load_projections(ldir, method)


def load_projections(ldir: Path, method: str) -> np.ndarray:
    """Projections (U, k, 3, s, s) float32 as ``save_projections`` stored them (runs written before the scale file
    existed hold plain float16 projections)."""
    proj = np.load(ldir / f"{method}.npy").astype(np.float32)
    scale_file = ldir / f"{method}_scale.npy"
    return proj * np.load(scale_file)[..., None, None, None] if scale_file.is_file() else proj


def write_layer_images(out: Path, layer: str, table: TopK, overview: list[int], method: str, views: tuple,
                       options: RenderOptions, tracker: Tracker | None = None) -> Path:
    """The PNGs of one layer and method (projections; patches when ``method`` is the first of ``options.methods``
    and ``options.write_patches``; per-unit images with ``options.unit_figures``) and its overview figure, from
    arrays: ``views`` = (patches uint8 (U, k, h, w, 3), projections (U, k, 3, h, w)), units in ``table.units``
    order."""
    patches, proj = views
    with_patches = options.write_patches and method == options.methods[0]
    display_mode, dpi, unit_figures = options.display, options.dpi, options.unit_figures
    proj = np.asarray(proj, np.float32)  # no copy when it is float32 already (a big layer's array is GBs)
    shown = display(proj, display_mode)
    units = table.units.tolist()
    for d in ({R.projection_path(out, layer, method, 0, 0).parent}
              | ({R.unit_figure_path(out, layer, 0, method).parent} if unit_figures else set())
              | ({R.patch_path(out, layer, 0, 0).parent} if with_patches else set())):
        d.mkdir(parents=True, exist_ok=True)

    def save(path, arr) -> None:  # thousands of small PNGs: favour speed (zlib runs outside the GIL: 2 threads)
        Image.fromarray(arr).save(path, compress_level=1)

    jobs = []

    def finish() -> None:  # wait for the writes so far; a failed write raises here
        for job in jobs:
            job.result()
        jobs.clear()

    with ThreadPoolExecutor(2) as pool:
        for i, u in enumerate(units):
            for r in range(table.k):
                if table.image[i, r] < 0:
                    continue
                jobs.append(pool.submit(save, R.projection_path(out, layer, method, u, r), shown[i, r]))
                if with_patches:
                    jobs.append(pool.submit(save, R.patch_path(out, layer, u, r), patches[i, r]))
            if unit_figures:
                jobs.append(pool.submit(save, R.unit_figure_path(out, layer, u, method),
                                        unit_image(patches[i], None, shown=shown[i])))
            if i == 0:
                finish()  # the first unit's files are on disk before the fault-injection point
                pause_point(f"render:{layer}")
            if len(jobs) > 256:
                finish()
        finish()
    oi = [units.index(u) for u in overview]
    fig, _ = overview_figure(patches[oi], proj[oi], overview, title=f"{layer}: top {table.k} ({method})",
                             mode=display_mode, dpi=dpi, dead=table.dead)
    return save_figure(fig, out / "figures" / f"{layer}_{method}.png", tracker, f"{layer}/{method}", dpi)


def read_patches(run: Path, layer: str, table: TopK, shape: tuple[int, int]) -> np.ndarray:
    """The saved patch PNGs of a layer, views of ``shape`` (h, w), as uint8 (U, k, h, w, 3); empty ranks are zero."""
    patches = np.zeros((len(table.units), table.k, *shape, 3), np.uint8)
    for i, u in enumerate(table.units.tolist()):
        for r in range(table.k):
            if table.image[i, r] >= 0:
                patches[i, r] = np.asarray(Image.open(R.patch_path(run, layer, u, r)).convert("RGB"))
    return patches


def render_run(run: str | os.PathLike, display_mode: str = "symmetric", dpi: int = 110,
               gallery: bool = True) -> list[Path]:
    """Re-render a main-job run directory from its saved arrays (``topk.npz``, ``<method>.npy``, patch PNGs): the
    projection PNGs, per-unit images and overview figures, then the gallery.  Returns the overview figures."""
    run = Path(run)
    summary = R.read_summary(run)
    R.check_run_files(run, methods=summary.get("methods", ()))
    figs = []
    for layer, info in summary["layers"].items():
        table = TopK.load(R.layer_dir(run, layer) / "topk.npz")
        projs = {m: load_projections(R.layer_dir(run, layer), m) for m in summary["methods"]}
        patches = read_patches(run, layer, table, next(iter(projs.values())).shape[-2:])
        overview = info.get("overview_units") or table.units.tolist()[:16]
        options = RenderOptions(tuple(projs), display=display_mode, dpi=dpi, progress=False,
                                unit_figures=summary.get("unit_figures", True), write_patches=False)
        for method, proj in projs.items():
            figs.append(write_layer_images(run, layer, table, overview, method, (patches, proj), options))
    if gallery:
        build_gallery(run)
    return figs


def log_layer(tracker: Tracker, out: Path, layer: str, table: TopK, methods: Sequence[str], paths: Sequence[str],
              max_rows: int = 2000) -> None:
    """W&B: a Table with one row per (unit, rank) (patch and projection images), and the arrays as an artifact."""
    if not tracker.active:
        return
    rows = []
    for i, u in enumerate(table.units.tolist()):
        for r in range(table.k):
            g = int(table.image[i, r])
            if g >= 0 and len(rows) < max_rows:
                rows.append([layer, u, r, float(table.activation[i, r]), Path(paths[g]).name,
                             R.patch_path(out, layer, u, r)] + [R.projection_path(out, layer, m, u, r)
                                                                for m in methods])
    tracker.table(f"{layer}/top{table.k}", ["layer", "unit", "rank", "activation", "image", "patch"] + list(methods),
                  rows)
    ldir = R.layer_dir(out, layer)
    tracker.artifact(f"topk-{layer}", "topk", [ldir / "topk.npz", ldir / "topk.csv", out / "summary.json"]
                     + [ldir / f"{m}{s}.npy" for m in methods for s in ("", "_scale")])


def methods_overview(run: str | os.PathLike, layers: Sequence[str] | None = None,
                     methods: Sequence[str] = ("deconvnet", "guided"), units_per_layer: int = 4, tile: int = 64,
                     seed: int = 0):
    """Fig. 2's layout for several layers and methods side by side, from a finished run (no model, no data): for
    ``units_per_layer`` units of each layer (the overview's units, seeded choice), each method's 3x3 projections
    and the 3x3 patches, tiles resampled to ``tile`` px with an antialiasing filter.  Returns (fig, axes)."""
    import matplotlib.pyplot as plt

    run = Path(run)
    summary = R.read_summary(run)
    layers = list(layers or summary["layers"])
    rng = np.random.default_rng(seed)

    def tiles(a: np.ndarray) -> np.ndarray:  # (n, s, s, 3) uint8 -> (n, tile, tile, 3), antialiased
        return np.stack([np.asarray(Image.fromarray(t).resize((tile, tile), Image.LANCZOS)) for t in a])

    panels = []  # (label, [grid per method..., patch grid])
    for layer in layers:
        table = TopK.load(R.layer_dir(run, layer) / "topk.npz")
        dead = set(table.dead)
        ov = [u for u in summary["layers"][layer].get("overview_units") or table.units.tolist() if u not in dead]
        chosen = sorted(int(u) for u in rng.choice(ov, size=min(units_per_layer, len(ov)), replace=False))
        idx = [table.units.tolist().index(u) for u in chosen]
        projs = {m: load_projections(R.layer_dir(run, layer), m)[idx, :9] for m in methods}
        patches = read_patches(run, layer, table.select(chosen, ranks=9), next(iter(projs.values())).shape[-2:])
        projs = {m: display(p) for m, p in projs.items()}
        for j, u in enumerate(chosen):
            panels.append((f"{layer} unit {u}", [image_grid(tiles(projs[m][j]), 3) for m in methods]
                           + [image_grid(tiles(patches[j]), 3)]))
    per_row = 2
    nrows = -(-len(panels) // per_row)
    ncols = per_row * (len(methods) + 1)
    side = panels[0][1][0].shape[0] / 100
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * side * 1.02, nrows * side * 1.18), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (label, grids) in enumerate(panels):
        r, c0 = divmod(i, per_row)
        for k, g in enumerate(grids):
            ax = axes[r, c0 * len(grids) + k]
            ax.imshow(g, interpolation="antialiased")
            ax.set_title(f"{label}: {(list(methods) + ['patches'])[k]}" if k == 0 else
                         (list(methods) + ["patches"])[k], fontsize=7)
    fig.tight_layout(pad=0.3)
    return fig, axes
