"""A static, browsable gallery of every mined unit of a run (Zeiler & Fergus 2014, Sec. 2.1 / Fig. 2: top-9 patches
and their deconvnet projections, here for every unit rather than a chosen few).

    python scripts/gallery.py outputs/<date>/<time>        # rebuild from the run's saved arrays and PNGs

writes, next to the run's arrays (layout: ``zf.views.results``)::

    <run>/gallery/index.html            layers of the run (with their dead units); model, data, methods, date
                                        (from summary.json); the unreadable images the run skipped, listed
    <run>/gallery/layer_<layer>.html    grid of every unit: rank-0 projection + patch, largest activation;
                                        sort by unit / activation / dead first, filter by unit numbers and by
                                        live / dead, method toggle; dead units carry a badge
    <run>/gallery/unit_<layer>.html     one page per layer showing one unit, chosen by the hash
                                        (``#u=<unit>&m=<method>``): 3x3 projections beside 3x3 patches, each with its
                                        activation and source image; click one for the source with its receptive
                                        field boxed; ArrowLeft/ArrowRight (or k/j) for the previous/next unit
    <run>/gallery/data_<layer>.js       the layer's table as one global (``ZF_LAYER``), loaded by a <script> tag
    <run>/gallery/gallery.js, .css      the viewer, plain JS and CSS from ``zf/views/gallery_static``

Why these choices: pages must open from ``file://`` with no server and no network, where ``fetch()`` of JSON is
refused, so each page loads its data as a script.  One unit page per layer, driven by the URL hash, keeps next /
previous unit a re-render instead of a page load and needs no dynamic script loading.  Images are the run's PNGs,
referenced by relative path (never inlined), and which of them exist is checked here, at build time, so a missing
PNG becomes a placeholder instead of a broken image.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
from pathlib import Path
from urllib.parse import quote

from zf.faults import pause_point
from zf.mining.table import TopK
from zf.views.results import check_run_files, layer_dir, read_image_paths, read_summary

# Next to this module (package data, see pyproject.toml); a plain path rather than importlib.resources, which
# trips over the namespace-package view a stale editable install gives ``zf``.
STATIC = Path(__file__).resolve().parent / "gallery_static"
STATIC_FILES = ("gallery.js", "gallery.css")


def slug(layer: str) -> str:
    """File-name-safe form of a layer name (``features.9`` stays, anything but ``[A-Za-z0-9_.-]`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer)


def layer_page(layer: str) -> str:
    return f"layer_{slug(layer)}.html"


def unit_page(layer: str) -> str:
    return f"unit_{slug(layer)}.html"


def data_script(layer: str) -> str:
    return f"data_{slug(layer)}.js"


def _pngs(directory: Path) -> set[str]:
    """Names of the PNGs in ``directory`` (one listdir instead of one stat per image)."""
    try:
        return {n for n in os.listdir(directory) if n.endswith(".png")}
    except FileNotFoundError:
        return set()


def _number(v: float) -> float | None:
    """JSON has no NaN/inf: a unit that never fired (or a padded rank) gets null."""
    v = float(v)
    return v if math.isfinite(v) else None


def dead_units(topk: TopK, info: dict) -> tuple[set[int], str]:
    """The units of a layer that never fire on the data, and where that came from: summary.json's ``dead_units``
    for the layer when it lists them, else the table itself (a unit whose largest activation is not > 0: its
    "top k" are ties at zero, broken by image index, so its patches say nothing about it)."""
    if info.get("dead_units") is not None:
        return {int(u) for u in info["dead_units"]}, "summary.json"
    return set(topk.dead), "topk.npz"


def layer_data(run: Path, layer: str, summary: dict, image_paths: list[str]) -> dict:
    """The table one layer's pages need, as plain JSON: per unit, per rank, activation, image id, source name,
    box (y0, y1, x0, x1, unclipped) and which PNGs exist.  Flags are strings of '0'/'1', one character per rank.
    ``d`` is 1 for a dead unit (``dead_units``)."""
    topk = TopK.load(layer_dir(run, layer) / "topk.npz")
    methods = list(summary.get("methods", []))
    info = summary.get("layers", {}).get(layer, {})
    ldir = layer_dir(run, layer)
    patches = _pngs(ldir / "patches")
    projections = {m: _pngs(ldir / m) for m in methods}
    figures = _pngs(ldir / "units")
    sources = {n for n in os.listdir(run / "sources")} if (run / "sources").is_dir() else set()
    dead, dead_from = dead_units(topk, info)

    units = []
    for i, u in enumerate(topk.units.tolist()):
        ranks = range(topk.k)
        ids = [int(v) for v in topk.image[i]]
        units.append({
            "u": int(u),
            "a": [_number(v) if ids[r] >= 0 else None for r, v in enumerate(topk.activation[i])],
            "i": ids,
            "b": [[int(c) for c in topk.box[i, r]] for r in ranks],
            "yx": [[int(topk.y[i, r]), int(topk.x[i, r])] for r in ranks],
            "p": "".join("1" if ids[r] >= 0 and f"u{u:04d}_r{r}.png" in patches else "0" for r in ranks),
            "m": {m: "".join("1" if ids[r] >= 0 and f"u{u:04d}_r{r}.png" in projections[m] else "0" for r in ranks)
                  for m in methods},
            "f": [m for m in methods if f"u{u:04d}_{m}.png" in figures],
            "d": int(u in dead),
        })
    used = sorted({i for unit in units for i in unit["i"] if i >= 0})
    return {
        "layer": layer,
        "dir": "../layers/" + quote(layer) + "/",
        "k": int(topk.k),
        "rf": info.get("rf"),
        "rf_label": _hw(info, "rf"),
        "stride": info.get("stride"),
        "channels": info.get("channels"),
        "methods": methods,
        "model": summary.get("model"),
        "n_dead": sum(unit["d"] for unit in units),
        "dead_from": dead_from,
        "units": units,
        "layer_page": layer_page(layer),
        "unit_page": unit_page(layer),
        # id -> [source file name, whether sources/<id:06d>.jpg exists, path as in images.json]
        "images": {str(i): [Path(image_paths[i]).name if i < len(image_paths) else f"image {i}",
                            f"{i:06d}.jpg" in sources, image_paths[i] if i < len(image_paths) else ""]
                   for i in used},
    }


def _page(title: str, body: str, scripts: list[str] = ()) -> str:
    tags = "".join(f'<script src="{quote(s)}"></script>\n' for s in scripts)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="gallery.css">
</head>
<body>
{body}
{tags}</body>
</html>
"""


def _hw(info: dict, key: str) -> str:
    """A layer's receptive field or stride as the gallery shows it: ``"99"``, or ``"16x20"`` where the two axes
    differ (``<key>_hw`` in summary.json)."""
    hw = info.get(f"{key}_hw")
    if hw and hw[0] != hw[1]:
        return f"{hw[0]}x{hw[1]}"
    return "" if info.get(key) is None else str(info.get(key))


def _dependence(d: dict) -> str:
    """A layer's ``image_dependence`` per method as the gallery shows it: ``deconvnet 1.00, guided 0.31``."""
    dep = d.get("image_dependence") or {}
    return ", ".join(f"{m} {v:.2f}" if v is not None else f"{m} -" for m, v in dep.items())


def _weights_line(summary: dict) -> str:
    """Where the run's weights came from when no training checkpoint was given: the weights file (``model.weights``),
    the torch hub cache, random weights, or the model's built-in ones."""
    w = summary.get("weights")
    if w in (None, "None", "null", ""):
        return "none (built-in weights)"
    if w == "random":
        return "none (random weights)"
    n = len(summary.get("weights_random") or [])
    return f"weights {w}" + (f" ({n} tensors not in the file stayed random)" if n else "")


def _index_html(run: Path, summary: dict, layers: list[str], missing: list[str], n_dead: dict) -> str:
    e = html.escape
    methods = summary.get("methods", [])
    meta = [
        ("model", summary.get("model")),
        ("checkpoint", summary.get("checkpoint") or _weights_line(summary)),
        ("data", summary.get("data")),
        ("images", summary.get("n_images")),
        ("methods", ", ".join(methods)),
        ("top k", summary.get("k")),
        ("date", summary.get("date")),
        ("transform", json.dumps(summary.get("transform")) if summary.get("transform") is not None else None),
        ("skipped images", len(summary.get("skipped", []))),
    ]
    rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>\n" for k, v in meta if v is not None)
    info = summary.get("layers", {})
    lrows = []
    for layer in layers:
        d = info.get(layer, {})
        lrows.append(
            f'<tr><td><a class="layer-link" href="{quote(layer_page(layer))}">{e(layer)}</a></td>'
            f'<td>{e(str(d.get("units", "")))}</td><td>{e(str(d.get("channels", "")))}</td>'
            f'<td>{e(_hw(d, "rf"))}</td><td>{e(_hw(d, "stride"))}</td>'
            f'<td class="dead-count">{n_dead.get(layer, 0)}</td>'
            f'<td class="dependence">{e(_dependence(d))}</td></tr>\n')
    for layer in missing:
        lrows.append(f'<tr class="missing"><td>{e(layer)}</td><td colspan="6">no topk.npz: not mined</td></tr>\n')
    skipped = [str(p) for p in summary.get("skipped", [])]
    if skipped:
        items = "".join(f"<li>{e(p)}</li>\n" for p in skipped)
        skipped_html = (f'<h2>Skipped images ({len(skipped)})</h2>\n<p class="sub">These files could not be read '
                        f'and were left out of the mining: replace or remove them and re-run.</p>\n'
                        f'<ul class="skipped" id="skipped">\n{items}</ul>')
    else:
        skipped_html = ('<p class="sub" id="skipped-none">No images were skipped.</p>')
    body = f"""<header><h1>{e(str(summary.get("model", "run")))} &middot; unit gallery</h1>
<p class="sub">{e(run.parent.name + "/" + run.name)}: top-{e(str(summary.get("k", "")))} patches and their projections for every mined unit
(Zeiler &amp; Fergus 2014, Fig. 2).</p></header>
<main>
<table class="meta" id="meta">{rows}</table>
<h2>Layers</h2>
<table class="layers" id="layers"><thead><tr><th>layer</th><th>units</th><th>channels</th><th>receptive field</th>
<th>stride</th><th>dead units</th><th title="median correlation of a unit's k projections: 1 = the same picture
for every image (the deconvnet with no max pool before the layer); README, 'When the deconvnet shows the image'">image
dependence</th></tr></thead><tbody>
{"".join(lrows)}</tbody></table>
{skipped_html}
</main>"""
    return _page(f"{summary.get('model', 'run')} gallery", body)


def _layer_html(layer: str) -> str:
    e = html.escape
    body = f"""<header><a href="index.html">&larr; index</a>
<h1>layer {e(layer)}</h1><p class="sub" id="layer-meta"></p>
<div class="controls">
<label>sort <select id="sort"><option value="unit">unit number</option>
<option value="act">largest activation</option>
<option value="dead">dead units first</option></select></label>
<label>show <select id="show"><option value="all">all units</option><option value="live">live units</option>
<option value="dead">dead units</option></select></label>
<label>units <input id="filter" type="search" placeholder="e.g. 12 or 3-40, 96" size="18"></label>
<span id="methods" class="methods"></span>
<span id="count" class="count"></span>
</div></header>
<main><div id="grid" class="grid"></div></main>"""
    return _page(f"layer {layer}", body, [data_script(layer), "gallery.js"])


def _unit_html(layer: str) -> str:
    e = html.escape
    body = f"""<header><a href="index.html">&larr; index</a> &middot; <a id="back" href="{quote(layer_page(layer))}">layer
{e(layer)}</a>
<h1>layer {e(layer)} &middot; unit <span id="unit-number"></span> <span id="unit-pos" class="sub"></span></h1>
<p id="dead-note" class="dead-note" hidden><span class="badge dead">dead</span> never fires on this data: its
largest activation is 0, so the images below are ties broken by index, not what the unit responds to.</p>
<div class="controls">
<a id="prev" title="previous unit (ArrowLeft or k)">&larr; prev</a>
<a id="next" title="next unit (ArrowRight or j)">next &rarr;</a>
<span id="methods" class="methods"></span>
<span id="figures"></span>
<span class="sub">keys: &larr;/&rarr; or k/j &middot; Esc closes the source view</span>
</div></header>
<main class="unit"><section><h2 id="proj-title">projections</h2><div id="projections" class="nine"></div></section>
<section><h2>patches</h2><div id="patches" class="nine"></div></section></main>
<div id="viewer" class="viewer" hidden><div class="viewer-inner">
<button id="viewer-close" title="close (Esc)">&times;</button>
<div class="source-wrap" id="source-wrap"><div id="rf-box" class="rf-box"></div></div>
<p id="viewer-caption"></p></div></div>"""
    return _page(f"layer {layer} unit", body, [data_script(layer), "gallery.js"])


def build_gallery(run_dir: str | os.PathLike, layers: list[str] | None = None) -> Path:
    """Write ``<run>/gallery/`` (see the module docstring) from the run's saved arrays and PNGs; return index.html.

    Reads, as laid out by ``zf.views.results``: ``layers/<layer>/topk.npz``; the PNGs ``patches/``, ``<method>/`` and
    ``units/`` (any may be missing: placeholders are shown); ``sources/<id:06d>.jpg``; ``images.json`` (list of
    source paths indexed by image id; only the file names are shown); and ``summary.json`` with the keys

        "model" (str), "checkpoint" (str or null), "data" (str), "transform" (dict), "methods" (list of str,
        e.g. ["deconvnet", "guided", "gradient"]; the sub-directory name of each method's PNGs), "k" (int),
        "layers" ({name: {"rf": int, "stride": int, "units": int, "channels": int}}), "date" (ISO str),
        "n_images" (int), "skipped" (list of str, listed on the index); per layer optionally "dead_units" (list
        of int: marked in the grid and on the unit page; computed from the table where absent).

    Only "layers" and "methods" are needed to build; the rest is shown on the index when present.

    layers: the layers to include (default: every layer of summary.json "layers" that has a topk.npz, in that
    order, then any other ``layers/*/topk.npz``; a layer named here without one raises FileNotFoundError).  Rebuilding
    overwrites the gallery's own files only.
    """
    run = Path(run_dir)
    summary = read_summary(run)
    if layers is not None:
        check_run_files(run, layers)
    images_json = run / "images.json"
    image_paths = read_image_paths(run) if images_json.is_file() else []
    if layers is None:
        named = list(summary.get("layers", {}))
        on_disk = sorted(p.parent.name for p in (run / "layers").glob("*/topk.npz"))
        layers = [n for n in named if n in on_disk] + [n for n in on_disk if n not in named]
        missing = [n for n in named if n not in on_disk]
    else:
        for n in layers:
            if not (layer_dir(run, n) / "topk.npz").is_file():
                raise FileNotFoundError(f"{layer_dir(run, n) / 'topk.npz'} does not exist: layer {n!r} was not mined")
        missing = []
    slugs = [slug(n) for n in layers]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"layer names {layers} collide as file names {slugs}")

    out = run / "gallery"
    out.mkdir(exist_ok=True)
    for name in STATIC_FILES:
        shutil.copyfile(STATIC / name, out / name)
    n_dead = {}
    for layer in layers:
        data = layer_data(run, layer, summary, image_paths)
        n_dead[layer] = data["n_dead"]
        blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
        (out / data_script(layer)).write_text(f"window.ZF_LAYER = {blob};\n", encoding="utf-8")
        (out / layer_page(layer)).write_text(_layer_html(layer), encoding="utf-8")
        (out / unit_page(layer)).write_text(_unit_html(layer), encoding="utf-8")
        pause_point("gallery")
    index = out / "index.html"
    index.write_text(_index_html(run, summary, layers, missing, n_dead), encoding="utf-8")
    return index
