"""The explorer's computations, without any web framework: a finished main-job run (``zf.views.results`` layout) with its
model rebuilt once, any image through it, every channel of a layer as a grid, and one unit's activation map,
projection and mined top-k (Zeiler & Fergus 2014, Sec. 2.1 and Fig. 2, on the user's own image; the live form is the
Deep Visualization Toolbox's, Yosinski et al. 2015).

    runs = find_runs("outputs/run/2026-11-28_12-00-00")     # one run, or a folder holding runs
    ex = Explorer(runs)
    image_id = ex.images.add(open("cat.jpg", "rb").read())  # held per id: requests never share a "current image"
    grid = ex.grid(name, image_id, "relu4")                  # every channel's map, one sprite
    unit = ex.unit(name, image_id, "relu4", 17, "deconvnet") # its map over the image, projection, top 9

Nothing is re-mined: the model is rebuilt from the run's ``.hydra/config.yaml`` (``zf.edge.runtime.model_from_cfg``, with
the config's seed, so weights that stayed random are the run's) and ``summary.json`` (transform, tap, seed mode,
norm, methods), and the top-k come from the run's arrays and PNGs.  Activations are ``zf.projection.api.activations`` and
projections ``zf.projection.api.project``: the functions the main job uses.

Uploaded images are checked, decoded and held by ``zf.explore.images``.  Computation on a model runs under one
lock: ``zf.net.modules.capture`` reads layers through forward hooks registered on the shared model, which two
concurrent forwards would mix.  Requests still run concurrently for everything else (decoding, PNG encoding, static
files), and on 2 cores two forwards at once would gain nothing.
"""
from __future__ import annotations

import math
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from ..data import Normalize
from ..edge.runtime import model_from_cfg
from ..errors import CheckpointError, DataError
from ..mining.table import TopK
from ..net.receptive import RF, unit_box
from ..projection.api import METHODS, activations, fast_path, project
from ..views import results as R
from ..views.gallery import unit_page
from ..views.visualize import crop_boxes, display, view_boxes
from .images import ImageStore, RequestError, jpeg_uri, png_uri, prepare  # noqa: F401 (app.py: RequestError)


class RunError(DataError):
    """A folder that is not a main-job run (and holds none)."""


def is_run(path: Path) -> bool:
    """A run directory of ``scripts/run.py``: ``summary.json`` with layers, and ``layers/``."""
    try:
        return (path / "summary.json").is_file() and (path / "layers").is_dir()
    except OSError:
        return False


def find_runs(folder) -> dict[str, Path]:
    """{name: path} of the runs at ``folder``: the folder itself if it is a run, else its sub-folders that are
    (``outputs/run``); ``RunError`` naming the folder when there is none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise RunError(f"run={folder}: no such folder; give a run directory of scripts/run.py (it holds "
                       "summary.json), e.g. outputs/run/<date>")
    folder = folder.resolve()
    if is_run(folder):
        return {folder.name: folder}
    runs = {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and is_run(p)}
    if not runs:
        raise RunError(f"run={folder} is not a run of scripts/run.py (no summary.json and layers/) and holds none; "
                       "give outputs/run/<date> or the folder above it")
    return runs


def run_config(run: Path, summary: dict) -> tuple[dict, int, str]:
    """(model config, seed, display mode) of a run: from its ``.hydra/config.yaml`` (interpolations resolved), or
    from ``summary.json`` for a run copied without its ``.hydra`` folder.  A weights file that the config names by a
    path relative to another working directory is replaced by the path ``summary.json`` recorded (``weights``)."""


    cfg_file = run / ".hydra" / "config.yaml"
    if cfg_file.is_file():
        cfg = OmegaConf.load(cfg_file)
        try:
            model = OmegaConf.to_container(cfg.model, resolve=True)
        except Exception as e:  # an interpolation that only Hydra resolves
            raise RunError(f"{cfg_file}: cannot read its model section ({e})") from None
        seed, display_mode = int(cfg.get("seed", 0)), str(cfg.get("display", "symmetric"))
    else:
        model = {"name": summary.get("model", "zfnet"), "arch_name": summary.get("arch_name"),
                 "checkpoint": summary.get("checkpoint"), "weights": None}
        if model["name"] != "zfnet" and not model["checkpoint"]:
            model["weights"] = summary.get("weights")
        seed, display_mode = 0, "symmetric"
    recorded = summary.get("weights")
    for key in ("checkpoint", "weights"):
        v = model.get(key)
        if isinstance(v, str) and v not in ("default", "cache", "random") and not Path(v).expanduser().exists():
            if recorded and Path(recorded).is_file():
                model[key] = recorded
            else:
                raise CheckpointError(f"{run}: the run's model.{key}={v} is not found from {Path.cwd()}; run the "
                                      "explorer from the folder the run was started in")
    return model, seed, display_mode


def model_from_run(run: Path, summary: dict) -> tuple[torch.nn.Module, str]:
    """The run's model (eval mode) rebuilt as ``zf.edge.tasks.topk`` built it, and the run's display mode."""




    model, seed, display_mode = run_config(run, summary)
    return model_from_cfg(OmegaConf.create({"model": model, "seed": seed})).eval(), display_mode


class RunModel:
    """One run: its summary, its rebuilt model (loaded on first use, once), its layers and tables."""

    def __init__(self, name: str, path: Path, device="cpu"):
        self.name, self.path, self.device = name, Path(path), torch.device(device)
        try:
            self.summary = R.read_summary(self.path)
        except (OSError, ValueError) as e:
            raise RunError(f"{self.path}: cannot read summary.json ({e})") from None
        s = self.summary
        missing = [k for k in ("layers", "transform", "methods") if k not in s]
        if missing or not s.get("layers"):
            raise RunError(f"{self.path}/summary.json lacks {', '.join(missing) or 'layers'}: not a run of "
                           "scripts/run.py")
        t = s["transform"]
        self.size = int(t.get("center_crop", t.get("size", 224)))
        resize = t.get("resize_shorter_side", t.get("resize"))
        self.resize = int(resize) if resize else None
        self.mean, self.std = list(t.get("mean", [0.485, 0.456, 0.406])), list(t.get("std", [0.229, 0.224, 0.225]))
        self.layers = list(s["layers"])
        self.methods = list(s["methods"])
        self.tap, self.seed_mode, self.norm = s.get("tap", "relu"), s.get("seed_mode", "activation"), \
            s.get("norm", "identity")
        self._model = None
        self.display_mode = "symmetric"
        self._tables: dict[str, TopK] = {}
        self._load_lock = threading.Lock()

    def load(self):
        """The model, its ``Normalize`` and receptive fields: built once, on first use."""
        with self._load_lock:
            if self._model is None:

                model, self.display_mode = model_from_run(self.path, self.summary)
                self.normalize = Normalize(self.mean, self.std).to(self.device)
                self._model = model.to(self.device)
                self.rfs = {name: rf for name in self.layers if (rf := self.field(name)) is not None}

                with torch.no_grad():  # warm-up: the first user's request does not pay for it
                    activations(self._model, torch.zeros(1, 3, self.size, self.size, device=self.device),
                                self.layers[-1], self.tap)
            return self._model

    @property
    def model(self):
        return self.load()

    def field(self, layer: str):
        """The layer's receptive field (``zf.net.receptive.RF``) as the run recorded it: size and stride from
        ``summary.json``, the offset from the first row of its table (box = position x stride + offset).  No
        measurement (a graph's fields are measured by gradient support: minutes for a ResNet on 2 cores), and the
        boxes drawn are the run's own.  ``None`` for a run without them (the map is then stretched over the image)."""

        li, t = self.summary["layers"][layer], self.table(layer)
        if t is None or "rf" not in li or "stride" not in li or not t.image.size or t.image[0, 0] < 0:
            return None
        size, stride = li.get("rf_hw") or [li["rf"]] * 2, li.get("stride_hw") or [li["stride"]] * 2
        y0, _, x0, _ = (int(v) for v in t.box[0, 0])
        offset = (y0 - int(t.y[0, 0]) * int(stride[0]), x0 - int(t.x[0, 0]) * int(stride[1]))
        return RF.hw(size, stride, offset, (0, 0))

    def table(self, layer: str) -> TopK | None:
        if layer not in self._tables:
            f = R.layer_dir(self.path, layer) / "topk.npz"
            self._tables[layer] = TopK.load(f) if f.is_file() else None
        return self._tables[layer]

    def check_layer(self, layer) -> str:
        if layer not in self.layers:
            raise RequestError(f"layer={layer!r} is not a layer of run {self.name}: use one of "
                               f"{', '.join(self.layers)}", 404)
        return layer

    def info(self) -> dict:
        """What the page needs to know about the run (JSON)."""
        layers = []
        for name in self.layers:
            li = self.summary["layers"][name]
            t = self.table(name)
            layers.append({"name": name, "channels": li.get("channels"), "rf": li.get("rf"),
                           "stride": li.get("stride"),
                           "units": [] if t is None else [int(u) for u in t.units],
                           "dead_units": li.get("dead_units", [])})
        sources = sorted(p.name for p in (self.path / "sources").glob("*.jpg")) if (self.path / "sources").is_dir() \
            else []
        return {"name": self.name, "model": self.summary.get("model"), "arch_name": self.summary.get("arch_name"),
                "data": self.summary.get("data"), "date": self.summary.get("date"), "k": self.summary.get("k"),
                "methods": self.methods, "tap": self.tap, "size": self.size, "layers": layers,
                "sources": sources[:200], "gallery": (self.path / "gallery" / "index.html").is_file()}


class Explorer:
    """Runs by name, uploaded images by id, and the two computations the page asks for (``grid``, ``unit``)."""

    def __init__(self, runs: dict[str, Path], device="cpu", capacity: int = 32, max_pixels: int = 40_000_000,
                 acts_per_image: int = 4):
        self.runs = {name: RunModel(name, path, device) for name, path in runs.items()}
        self.images = ImageStore(capacity, max_pixels)
        self.acts_per_image = acts_per_image
        self.lock = threading.Lock()  # one computation on the models at a time (see the module docstring)

    def run(self, name) -> RunModel:
        if name is None and len(self.runs) == 1:
            return next(iter(self.runs.values()))
        r = self.runs.get(name) if isinstance(name, str) else None
        if r is None:
            raise RequestError(f"run={name!r} is not a run this server was started on: use one of "
                               f"{', '.join(self.runs)}", 404)
        return r

    def input(self, run: RunModel, entry: dict) -> torch.Tensor:
        """The image's model input for ``run``: uint8 (3, S, S), decoded once per transform."""
        key = (run.size, run.resize)
        if key not in entry["inputs"]:
            entry["inputs"][key] = prepare(entry["data"], run.size, run.resize, self.images.max_pixels)
        return entry["inputs"][key]

    def activations(self, run: RunModel, image_id: str, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input uint8 (3, S, S), the layer's activations (C, h, w)) for an uploaded image."""

        entry = self.images.get(image_id)
        layer = run.check_layer(layer)
        raw = self.input(run, entry)
        key = (run.name, layer)
        acts = entry["acts"].get(key)
        if acts is None:
            model = run.load()
            with self.lock, torch.no_grad():
                acts = activations(model, run.normalize(raw[None].to(run.device)), layer, run.tap)[0].float().cpu()
            entry["acts"][key] = acts
            while len(entry["acts"]) > self.acts_per_image:
                entry["acts"].popitem(last=False)
        return raw, acts

    def grid(self, run_name, image_id: str, layer: str) -> dict:
        """Every channel's activation map of ``layer`` on the image, as one PNG sprite (channel c at row c // cols,
        column c % cols, each tile h x w), all on one scale: 0 black, the layer's largest activation on this image
        white, the square root between (weak responses of sparse deep layers stay visible; negative values, at
        ``tap=conv``, black), so strong channels stand out as in the DeepVis toolbox.
        ``peak``: each channel's largest activation; ``strongest``: the channel with the largest."""
        run = self.run(run_name)
        raw, acts = self.activations(run, image_id, layer)
        c, h, w = acts.shape
        peak = acts.reshape(c, -1).amax(1)
        top = float(peak.max()) if c else 0.0
        tiles = (acts / top).clamp(0, 1).sqrt() if top > 0 else torch.zeros_like(acts)
        tiles = (tiles * 255 + 0.5).to(torch.uint8).numpy()
        cols = max(1, math.ceil(math.sqrt(c)))
        rows = math.ceil(c / cols)
        sprite = np.zeros((rows * h, cols * w), np.uint8)
        for i in range(c):
            r, q = divmod(i, cols)
            sprite[r * h:(r + 1) * h, q * w:(q + 1) * w] = tiles[i]
        return {"run": run.name, "layer": layer, "channels": c, "h": h, "w": w, "cols": cols,
                "peak": [round(float(v), 6) for v in peak], "strongest": int(peak.argmax()) if c else None,
                "max": top, "sprite": png_uri(sprite), "input": jpeg_uri(raw.permute(1, 2, 0).numpy())}

    def unit(self, run_name, image_id: str, layer: str, unit, method: str | None = None) -> dict:
        """One unit on the image: its map over the image, the box of its strongest activation, the projection of
        that activation with ``method`` (``zf.projection.api.project``; the run's seed mode, tap and norm) in the run's view
        of the box (``zf.views.visualize.view_boxes``: grey beyond the image) and shown as the run shows its projections
        (``zf.views.visualize.display``), and the run's top-k for it."""

        run = self.run(run_name)
        layer = run.check_layer(layer)
        method = method or run.methods[0]
        if method not in METHODS:
            raise RequestError(f"method={method!r}: use one of {', '.join(METHODS)}", 400)
        try:
            unit = int(unit)
        except (TypeError, ValueError):
            raise RequestError(f"unit={unit!r} is not a unit number", 400) from None
        raw, acts = self.activations(run, image_id, layer)
        c, h, w = acts.shape
        if not 0 <= unit < c:
            raise RequestError(f"unit={unit}: {layer} has units 0..{c - 1}", 404)
        a = acts[unit]
        flat = int(a.reshape(-1).argmax())
        y, x = divmod(flat, w)
        value = float(a[y, x])
        rf = run.rfs.get(layer)
        size = raw.shape[1:]
        out = {"run": run.name, "layer": layer, "unit": unit, "method": method, "y": y, "x": x, "value": value,
               "fires": value > 0, "map": png_uri(self._overlay(raw, a, rf)), "box": None, "projection": None,
               "projection_box": None}
        view = [0, size[0], 0, size[1]]
        if rf is not None:
            b = unit_box(rf, y, x, tuple(size))
            out["box"] = [b.y0, b.y1, b.x0, b.x1]
            view = [int(v) for v in view_boxes(np.array([out["box"]]), *size)[0]]
        out["projection_box"] = view
        if value > 0:
            model = run.load()
            rows = torch.tensor([[0, unit, y, x]], dtype=torch.long, device=run.device)
            with self.lock:
                # crop: a features stack reverses on receptive-field windows (its fields are analytic); any other
                # graph runs on the whole image, which for one row costs one forward and backward, where its crop
                # path would first measure the layer's field (minutes for a ResNet on 2 cores); both are exact
                p = project(model, run.normalize(raw[None].to(run.device)), rows, layer, method=method,
                            seed_mode=run.seed_mode, tap=run.tap, norm=run.norm, crop=fast_path(model)).float().cpu()
            # the run's view of a projection: the receptive field (cut to the image where larger), zero beyond the
            # image, stretched by the run's display mode (as zf.views.render draws the top k)
            p = crop_boxes(p, torch.tensor([view]), fill=0.0)[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out["projection"] = png_uri(display(p, run.display_mode))
        out.update(self.top(run, layer, unit, method))
        return out

    @staticmethod
    def _overlay(raw: torch.Tensor, a: torch.Tensor, rf) -> np.ndarray:
        """The image (S, S, 3) under the unit's map coloured by matplotlib's ``inferno``, each map cell placed over
        the stride-wide square at its receptive field's centre (``zf.net.receptive.RF``; stretched over the image when
        the layer has no field); scaled to the map's maximum on this image (a map that never fires shows dark)."""
        from matplotlib import colormaps

        img = raw.permute(1, 2, 0).numpy().astype(np.float32)
        hh, ww = img.shape[:2]
        top = float(a.max())
        v = (a / top).clamp(0, 1).numpy() if top > 0 else np.zeros(tuple(a.shape), np.float32)
        m = Image.fromarray(np.ascontiguousarray(v, np.float32))
        canvas = np.zeros((hh, ww), np.float32)
        if rf is None:
            canvas = np.asarray(m.resize((ww, hh), Image.BILINEAR))
        else:
            (sy, sx), (oy, ox), (ky, kx) = rf.stride_hw, rf.offset_hw, rf.size_hw
            big = np.asarray(m.resize((a.shape[1] * sx, a.shape[0] * sy), Image.BILINEAR))
            ty, tx = int(round(oy + (ky - sy) / 2)), int(round(ox + (kx - sx) / 2))  # top-left of cell (0, 0)
            ys0, xs0 = max(0, -ty), max(0, -tx)
            yd0, xd0 = max(0, ty), max(0, tx)
            ny, nx = min(big.shape[0] - ys0, hh - yd0), min(big.shape[1] - xs0, ww - xd0)
            if ny > 0 and nx > 0:
                canvas[yd0:yd0 + ny, xd0:xd0 + nx] = big[ys0:ys0 + ny, xs0:xs0 + nx]
        color = colormaps["inferno"](canvas)[..., :3] * 255
        alpha = (0.25 + 0.6 * canvas)[..., None]
        return np.clip(img * (1 - alpha) + color * alpha + 0.5, 0, 255).astype(np.uint8)

    @staticmethod
    def top(run: RunModel, layer: str, unit: int, method: str) -> dict:
        """The run's top-k of the unit: activation, patch and projection PNG (files of the run, by path relative
        to it), the gallery's page of the unit; ``top_note`` says why there is none or which method is shown."""

        table = run.table(layer)
        units = [] if table is None else table.units.tolist()
        gallery = run.path / "gallery" / unit_page(layer)
        shown = method if method in run.methods else run.methods[0]
        res = {"top": [], "top_method": shown, "top_note": None,
               "gallery": (f"gallery/{unit_page(layer)}#u={unit}&m={shown}" if gallery.is_file() else None)}
        if unit not in units:
            res["top_note"] = (f"the run did not render unit {unit} of {layer} (it rendered {len(units)} units): "
                               "no top images; run scripts/run.py with units=[...] for it")
            res["gallery"] = None
            return res
        i = units.index(unit)
        for r in range(table.k):
            g = int(table.image[i, r])
            if g < 0:
                continue
            rel = lambda p: p.relative_to(run.path).as_posix()  # noqa: E731
            pp = R.patch_path(run.path, layer, unit, r)
            qp = R.projection_path(run.path, layer, shown, unit, r)
            res["top"].append({"rank": r, "activation": float(table.activation[i, r]), "image": g,
                               "patch": rel(pp) if pp.is_file() else None,
                               "projection": rel(qp) if qp.is_file() else None})
        if shown != method:
            res["top_note"] = f"the run computed {', '.join(run.methods)} only: its top images show {shown}"
        if unit in (run.summary["layers"][layer].get("dead_units") or []):
            res["top_note"] = f"unit {unit} never fired on the run's data: its top images are ties at zero"
        return res
