"""The Hydra edge: turns composed configs into library calls.  Nothing else in ``zf`` sees a config object.

Each ``*_task(cfg)`` takes a composed ``DictConfig`` and returns a metric (for sweepers) after writing everything
under ``cfg.paths.output_dir``.  ``scripts/*.py`` only call these.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import data as zdata
from .models import build_model
from .tracking import Tracker


def plain(cfg) -> dict:
    """A resolved config as plain Python containers (plain containers pass through)."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def save_figure(fig, path: Path, tracker: Tracker, key: str, dpi: int) -> Path:
    """Save a matplotlib figure under the run directory, close it, and log it to W&B as ``key``."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    tracker.image(key, str(path))
    return path


def make_tracker(cfg: DictConfig, job_type: str, rank: int = 0) -> Tracker:
    lg = cfg.logger
    return Tracker(project=lg.project, dir=cfg.paths.output_dir, config=plain(cfg), mode=lg.mode, group=lg.group,
                   name=lg.name, tags=list(lg.tags or []), enabled=rank == 0, job_type=job_type)


def model_from_cfg(cfg: DictConfig, num_classes: int | None = None) -> torch.nn.Module:
    """The model a config names.  For zfnet, ``arch`` builds fresh weights (checkpoint null) or describes a bare
    state dict; ``num_classes`` (from the data) wins over the config's."""
    m = cfg.model
    arch = plain(m.get("arch") or {})
    n = num_classes or m.get("num_classes")
    if m.name == "zfnet" and not m.get("checkpoint") and n is None:
        n = 1000
    return build_model(name=m.name, checkpoint=m.get("checkpoint"), weights=m.get("weights"), num_classes=n, **arch)


def split_root(cfg: DictConfig, split: str | None) -> Path:
    root = Path(cfg.data.root)
    return root / split if split else root


def train_task(cfg: DictConfig) -> float:
    """Train a model (``configs/train.yaml``); returns the best validation top-1 accuracy."""
    from .train import TrainConfig, export_checkpoint, fit

    out = Path(cfg.paths.output_dir)
    d, t = cfg.data, cfg.train
    rank = int(os.environ.get("RANK", "0"))
    train_files = zdata.list_images(split_root(cfg, d.train_split))
    if not train_files.classes:
        raise ValueError(f"{train_files.root} is a flat folder: training needs class sub-folders (ImageFolder)")
    size = int(d.size)
    augment = zdata.BatchAugment(size, t.augment, t.crop_scale, t.flip)
    store = int(d.resize or size)
    base = zdata.ImageDataset(train_files, size=store, resize=store, limit=d.limit, subset_seed=cfg.seed)
    if t.preload:
        images, labels = zdata.preload(base, progress=rank == 0 and t.progress)
        train_set = zdata.TensorImages(images, labels)
    else:
        train_set = base

    val_set = None
    if d.val_split:
        val_set = zdata.ImageDataset(split_root(cfg, d.val_split), size=size, resize=d.resize, limit=d.limit,
                                     subset_seed=cfg.seed)
        if t.preload:
            val_set = zdata.TensorImages(*zdata.preload(val_set, progress=rank == 0 and t.progress))
    torch.manual_seed(cfg.seed)  # the initial weights: a rerun (or a resumed run's twin) starts from the same ones
    model = model_from_cfg(cfg, num_classes=len(train_files.classes))
    meta = {"classes": train_files.classes, "mean": list(d.mean), "std": list(d.std), "input_size": size,
            "data": str(train_files.root)}
    tcfg = TrainConfig(**{k: v for k, v in plain(t).items() if k in TrainConfig.__dataclass_fields__})
    tracker = make_tracker(cfg, "train", rank)
    try:
        history = fit(model, train_set, val_set, out, tcfg, meta=meta, tracker=tracker, resume=cfg.resume,
                      config_to_save=plain(cfg), augment=augment)
        if rank == 0:
            (out / "history.json").write_text(json.dumps(history, indent=1))
            from .plotting import training_curves

            fig, _ = training_curves(history)
            fig.savefig(out / "curves.png", dpi=100)
            tracker.image("curves", fig)
            if cfg.get("export"):
                path = export_checkpoint(out / "checkpoints" / "last.pt", cfg.export)
                print(f"exported {path}")
        skipped = getattr(base, "skipped", [])
        if skipped and rank == 0:
            (out / "skipped.txt").write_text("\n".join(skipped) + "\n")
            print(f"{len(skipped)} unreadable images skipped, listed in {out / 'skipped.txt'}")
    finally:
        tracker.finish()
    best = max((h.get("val_top1", 0.0) for h in history), default=0.0)
    if rank == 0:
        print(f"best val top-1 {best:.4f}; run directory {out}")
    return best


# ---------------------------------------------------------------------------------------------------------------
# the main job: top-k patches and projections of every unit of a layer (paper Fig. 2)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _fingerprint(model: torch.nn.Module, files: "zdata.ImageList", extra: dict) -> str:
    """A key for the mining cache: the model's weights, the data's file list (names, sizes, times) and ``extra``."""
    import hashlib

    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for p in files.paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]


def mine_cached(model, dataset, layers, k: int, tap: str, cache_dir: Path, transform: dict, batch_size: int,
                num_workers: int, device, normalize, progress: bool = True) -> tuple[dict, Path]:
    """``zf.mining.mine`` with a cache under ``cache_dir`` keyed by model, data, transform, layers, k and tap;
    an interrupted pass resumes from its partial state there."""
    from .mining import mine
    from .results import TopK

    from .layers import resolve_layer

    names = sorted({resolve_layer(model, l, tap).name for l in layers})
    key = _fingerprint(model, dataset.files, {"transform": transform, "layers": names, "k": k, "tap": tap,
                                             "subset": dataset.indices.tolist()})
    folder = cache_dir / f"mine-{key}"
    done = folder / "done.json"
    if done.is_file():
        return {n: TopK.load(folder / f"{n}.npz") for n in names}, folder
    folder.mkdir(parents=True, exist_ok=True)
    tables = mine(model, dataset, layers=names, k=k, tap=tap, batch_size=batch_size, num_workers=num_workers,
                  device=device, normalize=normalize, state_path=folder / "partial.pt", progress=progress)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        for n, t in tables.items():
            t.save(folder / f"{n}.npz")
        done.write_text(json.dumps({"layers": names, "k": k, "tap": tap, "transform": transform,
                                    "n_images": len(dataset)}))
    return tables, folder


def _write_csv(path: Path, layer: str, table, paths: list[str]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "unit", "rank", "image", "path", "y", "x", "activation", "y0", "y1", "x0", "x1"])
        for i, u in enumerate(table.units):
            for r in range(table.k):
                g = int(table.image[i, r])
                if g < 0:
                    continue
                w.writerow([layer, int(u), r, g, paths[g], int(table.y[i, r]), int(table.x[i, r]),
                            f"{table.activation[i, r]:.6g}", *map(int, table.box[i, r])])


def model_normalize(cfg: DictConfig, model: torch.nn.Module | None = None):
    """(Normalize, transform spec): the checkpoint's statistics if it has them, else the config's."""
    meta = getattr(model, "meta", {}) or {}
    mean, std = meta.get("mean", list(cfg.data.mean)), meta.get("std", list(cfg.data.std))
    return zdata.Normalize(mean, std), zdata.transform_spec(int(cfg.data.size), cfg.data.resize, mean, std)


def load_split(cfg: DictConfig, model: torch.nn.Module):
    """The data set a run mines, its normalisation (the checkpoint's own, else the config's) and transform spec."""
    d = cfg.data
    split = d.get(f"{cfg.split}_split") if cfg.get("split") else None
    root = split_root(cfg, split) if split and (Path(d.root) / split).is_dir() else Path(d.root)
    dataset = zdata.ImageDataset(root, size=int(d.size), resize=d.resize, limit=d.limit, subset_seed=cfg.seed)
    return (dataset, *model_normalize(cfg, model))


def _units(cfg: DictConfig, all_units: list[int], layer: str) -> tuple[list[int], list[int]]:
    """(units to render, units of the overview figure) from ``cfg.units`` / ``cfg.overview_units``."""
    import numpy as np

    if cfg.units is not None:
        units = [int(u) for u in (cfg.units if not isinstance(cfg.units, int) else [cfg.units])]
        bad = [u for u in units if u not in all_units]
        if bad:
            raise ValueError(f"units {bad} do not exist in {layer} (0..{len(all_units) - 1})")
        return units, units
    rng = np.random.default_rng(cfg.seed)
    overview = rng.choice(all_units, size=min(cfg.overview_units, len(all_units)), replace=False)
    return all_units, sorted(int(u) for u in overview)


def render_layer(out: Path, model, dataset, normalize, table, layer: str, units: list[int], overview: list[int],
                 methods: list[str], tap: str, seed_mode: str, norm: str, display_mode: str, device, dpi: int,
                 tracker: Tracker, progress: bool = True) -> dict:
    """Write one layer's part of a run directory (``zf.results`` layout); returns {method: overview figure path}."""
    import numpy as np
    from PIL import Image

    from . import results as R
    from .visualize import unit_views

    ldir = R.layer_dir(out, layer)
    ldir.mkdir(parents=True, exist_ok=True)
    table.save(ldir / "topk.npz")
    id_paths = [str(dataset.path(i)) for i in range(len(dataset))]
    _write_csv(ldir / "topk.csv", layer, table, id_paths)
    (out / "sources").mkdir(exist_ok=True)
    for g in np.unique(table.image[table.image >= 0]):
        src = R.source_path(out, int(g))
        item = None if src.is_file() else dataset[int(g)]
        if item is not None:
            Image.fromarray(item[0].permute(1, 2, 0).numpy()).save(src, quality=90)
    figs = {}
    for method in methods:
        patches, proj = unit_views(model, dataset, table, layer, units, method=method, tap=tap, seed=seed_mode,
                                   norm=norm, normalize=normalize, device=device, progress=progress)
        proj = proj.astype(np.float16)  # what the run keeps, so a re-render (render_run) gives the same pictures
        np.save(ldir / f"{method}.npy", proj)
        figs[method] = write_layer_images(out, layer, table, overview, method, patches, proj, display_mode, dpi,
                                          tracker, with_patches=method == methods[0])
    return figs


def write_layer_images(out: Path, layer: str, table, overview: list[int], method: str, patches, proj,
                       display_mode: str, dpi: int, tracker: Tracker, with_patches: bool = True) -> Path:
    """The PNGs of one layer and method (projections, optionally patches, per-unit images) and its overview figure,
    from arrays: patches uint8 (U, k, s, s, 3), proj (U, k, 3, s, s), units in ``table.units`` order."""
    from PIL import Image

    from . import results as R
    from .visualize import display, overview_figure, unit_image

    proj = proj.astype("float32")
    shown = display(proj, display_mode)
    units = table.units.tolist()
    for i, u in enumerate(units):
        for r in range(table.k):
            if table.image[i, r] < 0:
                continue
            files = [(R.projection_path(out, layer, method, u, r), shown[i, r])]
            if with_patches:
                files.append((R.patch_path(out, layer, u, r), patches[i, r]))
            for path, arr in files:
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path, compress_level=1)  # thousands of small PNGs: favour speed
        up = R.unit_figure_path(out, layer, u, method)
        up.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(unit_image(patches[i], proj[i], display_mode)).save(up, compress_level=1)
    oi = [units.index(u) for u in overview]
    fig, _ = overview_figure(patches[oi], proj[oi], overview, title=f"{layer}: top {table.k} ({method})",
                             mode=display_mode)
    return save_figure(fig, out / "figures" / f"{layer}_{method}.png", tracker, f"{layer}/{method}", dpi)


def render_run(run: str | os.PathLike, display_mode: str = "symmetric", dpi: int = 110,
               gallery: bool = True) -> list[Path]:
    """Re-render a main-job run directory from its saved arrays (``topk.npz``, ``<method>.npy``, patch PNGs): the
    projection PNGs, per-unit images and overview figures, then the gallery.  No model, no data pass.
    Returns the overview figures."""
    import numpy as np
    from PIL import Image

    from . import results as R

    run = Path(run)
    summary = R.read_summary(run)
    figs = []
    for layer, info in summary["layers"].items():
        table = R.TopK.load(R.layer_dir(run, layer) / "topk.npz")
        s = int(table.box[0, 0, 1] - table.box[0, 0, 0])
        patches = np.zeros((len(table.units), table.k, s, s, 3), np.uint8)
        for i, u in enumerate(table.units.tolist()):
            for r in range(table.k):
                if table.image[i, r] >= 0:
                    patches[i, r] = np.asarray(Image.open(R.patch_path(run, layer, u, r)).convert("RGB"))
        overview = info.get("overview_units") or table.units.tolist()[:16]
        for method in summary["methods"]:
            proj = np.load(R.layer_dir(run, layer) / f"{method}.npy")
            figs.append(write_layer_images(run, layer, table, overview, method, patches, proj, display_mode, dpi,
                                           Tracker(enabled=False), with_patches=False))
    if gallery:
        from .gallery import build_gallery

        build_gallery(run)
    return figs


def run_task(cfg: DictConfig) -> float:
    """The main job (``configs/run.yaml``): mine the top-k images of every unit, project them, write tables,
    figures, per-unit images and the gallery into the run directory, log them to W&B.  ``layer`` may be one layer
    or a list.  Returns the mean top-1 activation of the (last) layer, a number for sweepers."""
    import datetime

    import numpy as np
    import torch.distributed as dist

    from .layers import resolve_layer
    from .receptive import receptive_fields
    from .results import TOPK_FIELDS, TopK

    out = Path(cfg.paths.output_dir)
    device = _device(cfg.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.manual_seed(cfg.seed)  # fresh (checkpoint=null) weights are then the same on every run and process
    model = model_from_cfg(cfg).eval()
    dataset, normalize, transform = load_split(cfg, model)
    requested = list(cfg.layer) if OmegaConf.is_list(cfg.layer) else [cfg.layer]
    targets = [resolve_layer(model, l, cfg.tap).name for l in requested]
    methods = ["deconvnet", "guided", "gradient"] if cfg.compare_methods else [cfg.method]
    if cfg.method not in methods:
        raise ValueError(f"method={cfg.method!r}: use deconvnet, guided or gradient")
    methods.remove(cfg.method)
    methods.insert(0, cfg.method)
    tracker = make_tracker(cfg, "run", rank)
    try:
        tables, cache = mine_cached(model, dataset, list(cfg.mine_layers or []) + targets, int(cfg.k), cfg.tap,
                                    Path(cfg.paths.cache_dir), transform, int(cfg.batch_size), int(cfg.num_workers),
                                    device, normalize, progress=cfg.progress)
        if rank != 0:
            return 0.0
        id_paths = [str(dataset.path(i)) for i in range(len(dataset))]
        (out / "images.json").write_text(json.dumps(id_paths))
        rfs = receptive_fields(model, input_size=int(cfg.data.size))
        layers, figs, selected, score = {}, {}, {}, 0.0
        for layer in targets:
            all_units = tables[layer].units.tolist()
            units, overview = _units(cfg, all_units, layer)
            sel = np.array([all_units.index(u) for u in units])
            table = selected[layer] = TopK(**{f: getattr(tables[layer], f)[sel] for f in TOPK_FIELDS})
            figs[layer] = render_layer(out, model, dataset, normalize, table, layer, units, overview, methods,
                                       cfg.tap, cfg.seed_mode, cfg.norm, cfg.display, device, cfg.dpi, tracker,
                                       cfg.progress)
            score = float(np.nanmean(table.activation[:, 0]))
            layers[layer] = {"rf": rfs[layer].size, "stride": rfs[layer].stride, "units": len(units),
                             "channels": len(all_units), "overview_units": overview, "mean_top1_activation": score,
                             # units that never fire on this data: their "top k" are ties at zero, broken by index
                             "dead_units": [int(u) for u, a in zip(table.units, table.activation[:, 0]) if not a > 0]}
        summary = {
            "model": cfg.model.name, "checkpoint": cfg.model.get("checkpoint"), "weights": cfg.model.get("weights"),
            "data": str(dataset.files.root), "transform": transform, "methods": methods, "k": int(cfg.k),
            "tap": cfg.tap, "seed_mode": cfg.seed_mode, "norm": cfg.norm, "layers": layers,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "n_images": len(dataset),
            "skipped": sorted(set(dataset.skipped)), "mining_cache": str(cache),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        for layer, table in selected.items():
            _log_run(tracker, out, layer, table, methods, table.units.tolist(), id_paths)
        tracker.summary({f"{l}/mean_top1_activation": v["mean_top1_activation"] for l, v in layers.items()})
        if cfg.gallery:
            from .gallery import build_gallery

            print(f"gallery: {build_gallery(out)}")
        if summary["skipped"]:
            print(f"{len(summary['skipped'])} unreadable images skipped (listed in {out / 'summary.json'})")
        for layer in targets:
            print(f"{layer}: {layers[layer]['units']} units, top {cfg.k} of {len(dataset)} images")
            for m, f in figs[layer].items():
                print(f"  figure ({m}): {f}")
        print(f"written to {out}")
        return score
    finally:
        tracker.finish()


def _log_run(tracker: Tracker, out: Path, layer: str, table, methods, units, paths, max_rows: int = 2000) -> None:
    """W&B: a Table with one row per (unit, rank), and the arrays as an artifact."""
    from . import results as R

    if not tracker.active:
        return
    rows = []
    for i, u in enumerate(units):
        for r in range(table.k):
            g = int(table.image[i, r])
            if g < 0 or len(rows) >= max_rows:
                continue
            rows.append([layer, int(u), r, float(table.activation[i, r]), Path(paths[g]).name,
                         R.patch_path(out, layer, u, r)] + [R.projection_path(out, layer, m, u, r) for m in methods])
    tracker.table(f"{layer}/top{table.k}", ["layer", "unit", "rank", "activation", "image", "patch"] + methods, rows)
    tracker.artifact(f"topk-{layer}", "topk", [R.layer_dir(out, layer) / "topk.npz", R.layer_dir(out, layer) /
                                               "topk.csv", out / "summary.json"]
                     + [R.layer_dir(out, layer) / f"{m}.npy" for m in methods])


def dispatch(cfg: DictConfig):
    """``scripts/run.py``: the main job, or the experiment named by ``cfg.task`` (set by ``experiment=...``)."""
    task = cfg.get("task", "topk")
    fn = run_task if task == "topk" else globals().get(f"{task}_task")
    if fn is None:
        raise ValueError(f"task {task!r} has no {task}_task in zf.tasks")
    return fn(cfg)


# ---------------------------------------------------------------------------------------------------------------
# --- experiments: occlusion, invariance, correspondence ---
# Fig. 7 (occlusion), Fig. 5 (invariance), Table 1 / Fig. 8 (correspondence); configs/experiment/<name>.yaml.


def _exp_setup(cfg: DictConfig, rel_paths):
    """The model (eval, on the device), device, class wnids and ``Normalize`` of an experiment, and its images
    ``rel_paths`` (relative to the val split): uint8 (N, 3, S, S), class indices, and the normalised batch on the
    device.  Fresh weights (``model.checkpoint=null``) get as many classes as the val split has."""
    device = _device(cfg.device)
    d = cfg.data
    val_root = split_root(cfg, d.get("val_split"))
    torch.manual_seed(cfg.seed)
    n_classes = None if cfg.model.get("checkpoint") else len(zdata.list_images(val_root).classes)
    model = model_from_cfg(cfg, num_classes=n_classes).eval().to(device)
    meta = getattr(model, "meta", {}) or {}
    classes = list(meta.get("classes") or zdata.list_images(val_root).classes)
    normalize = model_normalize(cfg, model)[0].to(device)
    raw, labels = _exp_images(val_root, rel_paths, int(d.size), classes)
    return model, device, classes, normalize, raw, labels, normalize(raw.to(device))


def _exp_images(root: Path, rel_paths, size: int, classes: list[str]) -> tuple[torch.Tensor, list[int]]:
    """uint8 (N, 3, size, size) of ``root / rel`` for each relative path, and each image's class index (its
    folder's wnid in ``classes``)."""
    imgs, labels = [], []
    for rel in rel_paths:
        p = Path(root) / str(rel)
        img = zdata.read_image(p, size)
        if img is None:
            raise FileNotFoundError(f"{p}: missing or unreadable (paths are relative to {root})")
        imgs.append(zdata.resize_crop(img, size))
        labels.append(classes.index(p.parent.name) if p.parent.name in classes else -1)
    return torch.stack(imgs), labels


def _exp_grey(grey, normalize) -> float | list[float]:
    """An occluder's fill in normalised units: ``mean`` (the data mean: 0) or a grey level 0..255."""
    if str(grey) == "mean":
        return 0.0
    g = torch.full((1, 3, 1, 1), float(grey))
    return normalize.to("cpu")(g).flatten().tolist()


def occlusion_task(cfg: DictConfig) -> float:
    """Fig. 7 (``experiment=occlusion``): occlusion maps of each image in ``occlusion.images``, the unit's
    projections (here and in its mined top-k of the val split), written as arrays, JSON and a figure.  Returns the
    mean drop of p(true class) from the unoccluded image to the worst occluder position."""
    import numpy as np

    from .deconv import project_windows
    from .experiments.classes import readable
    from .experiments.occlusion import occlusion, occlusion_figure
    from .plotting import image_grid
    from .visualize import display, unit_views

    o, d = cfg.occlusion, cfg.data
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, device, classes, normalize, raw, labels, x = _exp_setup(cfg, o.images)
    size = int(d.size)
    value = _exp_grey(o.grey, normalize)
    tracker = make_tracker(cfg, "occlusion")
    try:
        results = []
        for i, rel in enumerate(o.images):
            print(f"occlusion: {rel}")
            results.append(occlusion(model, x[i], labels[i], layer=o.layer, tap=cfg.tap, size=int(o.size),
                                     stride=int(o.stride), value=value, batch_size=int(o.batch_size),
                                     progress=cfg.progress))
        layer = results[0]["layer"]
        projections, boxes, others = [], [], []
        for i, r in enumerate(results):
            row = torch.tensor([[0, r["unit"], *r["unit_pos"]]], device=device)
            win, corner = project_windows(model, x[i:i + 1], row, layer, method=cfg.method, tap=cfg.tap,
                                          norm=cfg.norm)
            projections.append(display(win[0].cpu(), cfg.display))
            y0, x0 = corner[0].tolist()
            boxes.append((y0, y0 + win.shape[2], x0, x0 + win.shape[3]))
        if o.others:
            # (c): the same maps in other images = their mined top-k on the val split (cached, shared with the main
            # job when mine_layers and tap are its own)
            dataset = zdata.ImageDataset(split_root(cfg, d.get("val_split")), size=size, resize=d.resize,
                                         limit=d.limit, subset_seed=cfg.seed)
            spec = model_normalize(cfg, model)[1]
            tables, _ = mine_cached(model, dataset, list(cfg.mine_layers or []) + [layer], int(cfg.k), cfg.tap,
                                    Path(cfg.paths.cache_dir), spec, int(cfg.batch_size), int(cfg.num_workers),
                                    device, normalize, progress=cfg.progress)
            for r in results:
                _, proj = unit_views(model, dataset, tables[layer], layer, [r["unit"]], method=cfg.method,
                                     tap=cfg.tap, norm=cfg.norm, normalize=normalize, device=device)
                others.append(image_grid(display(proj[0], cfg.display), ncols=3))
        else:
            others = [None] * len(results)
        names = readable(classes)
        # arrays first
        np.save(out / "activation.npy", np.stack([r["activation"] for r in results]))
        np.save(out / "p_true.npy", np.stack([r["p_true"] for r in results]))
        np.save(out / "top_label.npy", np.stack([r["top_label"] for r in results]))
        np.save(out / "probs.npy", np.stack([r["probs"] for r in results]).astype(np.float16))
        np.save(out / "projections.npy", np.stack(projections))
        summary = {"layer": layer, "size": int(o.size), "stride": int(o.stride), "grey": str(o.grey),
                   "fill_normalised": value, "classes": classes, "class_names": names,
                   "ys": results[0]["ys"].tolist(), "xs": results[0]["xs"].tolist(), "images": []}
        for rel, r, b in zip(o.images, results, boxes):
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
        save_figure(fig, out / "figures" / "occlusion.png", tracker, "occlusion/figure", int(cfg.dpi))
        drop = float(np.mean([r["base_p_true"] - r["p_true"].min() for r in results]))
        tracker.summary({"mean_p_true_drop": drop})
        tracker.artifact("occlusion", "occlusion", [out / f for f in ("activation.npy", "p_true.npy",
                                                                      "top_label.npy", "occlusion.json")])
        for s in summary["images"]:
            print(f"  {s['path']}: {s['class']} p={s['base_p_true']:.3f} (min {s['min_p_true']:.3f} at "
                  f"{s['min_p_true_corner']}), {layer} map {s['unit']}; labels seen: {', '.join(s['labels_seen'])}")
        print(f"written to {out}")
        return drop
    finally:
        tracker.finish()


def _exp_amounts(spec) -> "np.ndarray":
    """[start, stop, step] -> start..stop inclusive."""
    import numpy as np

    a, b, s = (float(v) for v in spec)
    return np.linspace(a, b, int(round((b - a) / s)) + 1)


def invariance_task(cfg: DictConfig) -> float:
    """Fig. 5 (``experiment=invariance``): distances at the compared layers and p(true class) under vertical
    translation, scaling and rotation of each image in ``invariance.images``.  Returns the mean p(true) over all
    transforms."""
    import csv

    import numpy as np

    from .experiments.classes import readable
    from .experiments.invariance import KINDS, invariance, invariance_figure

    v = cfg.invariance
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, device, classes, normalize, raw, labels, x = _exp_setup(cfg, v.images)
    layers = [tuple(l) for l in v.layers]
    tracker = make_tracker(cfg, "invariance")
    try:
        results = {}
        for kind in KINDS:
            if v.get(kind) is None:
                continue
            print(f"invariance: {kind}")
            results[kind] = invariance(model, x, labels, kind, _exp_amounts(v[kind]), layers=layers,
                                       batch_size=int(v.batch_size))
        names = [f"{Path(str(p)).stem[-8:]} ({n})" for p, n in zip(v.images, readable([classes[l] for l in labels]))]
        arrays = {f"{k}_{f}": r[f] for k, r in results.items() for f in ("amounts", "p_true")}
        arrays.update({f"{k}_distance_{nm}": d for k, r in results.items() for nm, d in r["distance"].items()})
        np.savez(out / "invariance.npz", **arrays)
        with open(out / "invariance.csv", "w", newline="") as f:
            w = csv.writer(f)
            lnames = next(iter(results.values()))["layers"]
            w.writerow(["transform", "amount", "image", "label"] + [f"distance_{n}" for n in lnames] + ["p_true"])
            for k, r in results.items():
                for i, rel in enumerate(v.images):
                    for j, a in enumerate(r["amounts"]):
                        w.writerow([k, f"{a:g}", str(rel), classes[labels[i]]]
                                   + [f"{r['distance'][n][i, j]:.6g}" for n in lnames] + [f"{r['p_true'][i, j]:.6g}"])
        summary = {"images": [str(p) for p in v.images], "labels": [classes[l] for l in labels], "layers": lnames,
                   "taps": [list(map(str, l)) for l in layers], "fill": "data mean (0 after normalisation)",
                   "transforms": {k: {"amounts": r["amounts"].tolist(), "mean_p_true": float(r["p_true"].mean()),
                                      "p_true_original": r["p_true_original"].tolist(),
                                      "max_distance": {n: float(d.max()) for n, d in r["distance"].items()}}
                                  for k, r in results.items()}}
        (out / "invariance.json").write_text(json.dumps(summary, indent=1))
        fig, _ = invariance_figure(results, names)
        save_figure(fig, out / "figures" / "invariance.png", tracker, "invariance/figure", int(cfg.dpi))
        mean_p = float(np.mean([r["p_true"].mean() for r in results.values()]))
        tracker.summary({f"{k}/mean_p_true": s["mean_p_true"] for k, s in summary["transforms"].items()})
        tracker.artifact("invariance", "invariance", [out / "invariance.npz", out / "invariance.csv",
                                                      out / "invariance.json"])
        for k, s in summary["transforms"].items():
            print(f"  {k}: mean p(true) {s['mean_p_true']:.3f}; max distance "
                  + ", ".join(f"{n} {d:.3g}" for n, d in s["max_distance"].items()))
        print(f"written to {out}")
        return mean_p
    finally:
        tracker.finish()


def correspondence_task(cfg: DictConfig) -> float:
    """Table 1 and Fig. 8 (``experiment=correspondence``): Delta at the compared layers for each hand-marked part
    and for random regions; the table (CSV, JSON, Markdown beside the paper's numbers) and a figure of the
    occluders.  Returns the random control's Delta at the last layer minus the mean of the parts' (> 0: the parts
    correspond better than chance)."""
    import csv

    import numpy as np

    from .experiments.correspondence import correspondence, correspondence_figure, table_markdown, table_rows

    c = cfg.correspondence
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, device, classes, normalize, raw, _, x = _exp_setup(cfg, c.images)
    parts = {p: np.asarray(xy, np.float64) for p, xy in plain(c.parts).items()}
    for p, xy in parts.items():
        if xy.shape != (len(c.images), 2):
            raise ValueError(f"correspondence.parts.{p}: one (x, y) per image ({len(c.images)}), got {xy.shape}")
    tracker = make_tracker(cfg, "correspondence")
    try:
        res = correspondence(model, x, parts, size=int(c.size), layers=[tuple(l) for l in c.layers],
                             n_random=int(c.n_random), jitter=int(c.jitter), seed=int(cfg.seed),
                             value=_exp_grey(c.grey, normalize), batch_size=int(c.batch_size))
        rows = table_rows(res)
        with open(out / "table1.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        md = table_markdown(res)
        (out / "table1.md").write_text(md)
        (out / "table1.json").write_text(json.dumps({
            "layers": res["layers"], "size": int(c.size), "jitter": int(c.jitter), "n_random": int(c.n_random),
            "images": [str(p) for p in c.images], "rows": rows,
            "values": {p: {n: {"values": r[n]["values"].tolist(), "pairs": r[n]["pairs"].tolist()}
                           for n in res["layers"]} for p, r in res["rows"].items()},
            "random_centres": res["random_centres"].tolist()}, indent=1))
        fig, _ = correspondence_figure([im.permute(1, 2, 0).numpy() for im in raw], res["centres"], int(c.size),
                                       res["random_centres"])
        save_figure(fig, out / "figures" / "correspondence.png", tracker, "correspondence/figure", int(cfg.dpi))
        tracker.table("table1", list(rows[0]), [list(r.values()) for r in rows])
        tracker.artifact("correspondence", "table", [out / "table1.csv", out / "table1.json", out / "table1.md"])
        print(md)
        print(f"written to {out}")
        last = res["layers"][-1]
        parts_mean = float(np.mean([res["rows"][p][last]["mean"] for p in parts]))
        return float(res["rows"]["random"][last]["mean"] - parts_mean)
    finally:
        tracker.finish()


# ---------------------------------------------------------------------------------------------------------------
# --- experiments: evolution, filters, ablation, probe, methods ---
# Fig. 4 (evolution), Fig. 6 (filters), Table 3 (ablation_table; the sweep itself is train_task with
# experiment=ablation), a layer-wise linear probe (probe, beyond the paper), deconvnet vs guided backpropagation vs
# gradient (methods).  Library code in zf/experiments/<name>.py; configs in configs/experiment/<name>.yaml.


def _xp_dataset(cfg: DictConfig, split: str, limit: int | None) -> "zdata.ImageDataset":
    """A seeded subset of ``limit`` images (``None``: all) of the data's ``split`` (train | val) at ``data.size``."""
    d = cfg.data
    root = split_root(cfg, d.get(f"{split}_split"))
    return zdata.ImageDataset(root, size=int(d.size), resize=d.resize, limit=limit, subset_seed=cfg.seed)


def _xp_miner(cfg: DictConfig, transform: dict, normalize, device, k: int = 1):
    """``(model, dataset, layer names) -> {name: TopK}`` through the mining cache."""
    def fn(model, dataset, layers):
        tables, _ = mine_cached(model, dataset, layers, k, "relu", Path(cfg.paths.cache_dir), transform,
                                int(cfg.batch_size), int(cfg.num_workers), device, normalize, progress=cfg.progress)
        return tables
    return fn


def _xp_csv(path: Path, rows: list[dict], columns=None) -> None:
    import csv

    columns = list(columns or (rows[0].keys() if rows else []))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def evolution_task(cfg: DictConfig) -> float:
    """Fig. 4 (``experiment=evolution``): the strongest activation of a few units per layer at each feature snapshot
    (``evolution.snapshots``), projected; ``evolution.npz``/``.csv``/``summary.json`` and ``figures/evolution.png``.
    Returns the mean top-1 activation at the last snapshot."""
    import numpy as np

    from .experiments import evolution as ev

    e = cfg.evolution
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    found = ev.find_snapshots(e.snapshots, list(e.epochs) if e.get("epochs") is not None else None)
    snaps = [ev.load_snapshot(p) for _, p in found]
    snaps = [(epoch, m.to(device)) for epoch, m in snaps]
    normalize, transform = model_normalize(cfg)
    dataset = _xp_dataset(cfg, e.split, e.images)
    units = {k: list(v) for k, v in plain(e.units).items()} if e.get("units") else None
    tracker = make_tracker(cfg, "evolution")
    try:
        res = ev.evolution(snaps, dataset, layers=list(e.layers), n_units=int(e.units_per_layer), units=units,
                           seed=int(cfg.seed), method=e.method, normalize=normalize, device=device,
                           mine_fn=_xp_miner(cfg, transform, normalize, device))
        arrays = {"epochs": np.array(res["epochs"])}
        for n in res["layers"]:
            arrays[f"{n}_units"] = np.array(res["units"][n])
            arrays[f"{n}_projections"] = res["projections"][n].astype(np.float16)
            for key in ("patches", "activation", "image", "y", "x"):
                arrays[f"{n}_{key}"] = res[key][n]
        np.savez_compressed(out / "evolution.npz", **arrays)
        rows = ev.rows_table(res, [str(dataset.path(i)) for i in range(len(dataset))])
        _xp_csv(out / "evolution.csv", rows)
        last = float(np.nanmean([np.nanmean(res["activation"][n][:, -1]) for n in res["layers"]]))
        summary = {"epochs": res["epochs"], "snapshots": [str(p) for _, p in found], "layers": res["layers"],
                   "units": res["units"], "images": len(dataset), "split": e.split, "method": e.method,
                   "transform": transform, "mean_last_top1_activation": last}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        fig, _ = ev.evolution_figure(res)
        path = save_figure(fig, out / "figures" / "evolution.png", tracker, "evolution", int(cfg.dpi))
        tracker.summary({"mean_last_top1_activation": last})
        tracker.artifact("evolution", "results", [out / "evolution.npz", out / "evolution.csv", out / "summary.json"])
        print(f"evolution: {len(res['epochs'])} snapshots x {sum(map(len, res['units'].values()))} units; {path}")
        return last
    finally:
        tracker.finish()


#: the command that makes each Fig. 6 checkpoint (named in the error when it is missing)
_FIG6_COMMANDS = {"default": "python scripts/train.py experiment=default_model",
                  "zf_small": "python scripts/train.py experiment=fig6_zf_small",
                  "noclip": "python scripts/train.py experiment=fig6_noclip",
                  "alexnet": "python scripts/train.py experiment=fig6_alexnet_conv1"}


def _fig6_model(key: str, path) -> tuple[torch.nn.Module, dict]:
    """(model, info) for ``filters.<key>``; a clear error naming the command that writes a missing checkpoint."""
    from .models import DEFAULT_CHECKPOINT, load_zfnet

    file = DEFAULT_CHECKPOINT if str(path) == "default" else Path(str(path))
    if not file.is_file():
        raise FileNotFoundError(f"filters.{key}: checkpoint {file} does not exist. Make it with `{_FIG6_COMMANDS[key]}`"
                                f" (or point filters.{key}=... elsewhere, or set filters.{key}=null to skip it).")
    model = load_zfnet(file)
    blob = torch.load(file, map_location="cpu", weights_only=True)
    hist = blob.get("history", []) if isinstance(blob, dict) else []
    info = {"checkpoint": str(file), "epoch": blob.get("epoch") if isinstance(blob, dict) else None,
            "arch": getattr(model, "arch", {}),
            "clipped_filters": int(sum(h.get("clipped_filters", 0) for h in hist)) if hist else None,
            "val_top1": next((h["val_top1"] for h in reversed(hist) if "val_top1" in h), None)}
    return model, info


def filters_task(cfg: DictConfig) -> float:
    """Fig. 6 (``experiment=filters``): layer-1 filters of the shipped model (a), with vs without feature scale
    clipping, AlexNet-style vs ZF first layer with layer-2 top-1 projections; ``filters.csv``/``summary.json`` with
    ``zf.experiments.filters.filter_stats``.  A ``filters.<key>`` set to null skips its panel.  Returns the
    no-clipping model's top filter energy share (nan without it)."""
    from .experiments import filters as fx

    f = cfg.filters
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    models, infos = {}, {}
    for key in ("default", "zf_small", "noclip", "alexnet"):
        if f.get(key) is not None:
            models[key], infos[key] = _fig6_model(key, f[key])
    if not models:
        raise ValueError("filters: every checkpoint (filters.default/zf_small/noclip/alexnet) is null")
    names = {"default": "shipped model (clipping)", "zf_small": "ZF 7x7/2, clipping", "noclip": "ZF 7x7/2, no clipping",
             "alexnet": "AlexNet-style 11x11/4, clipping"}
    tracker = make_tracker(cfg, "filters")
    try:
        rows, figs = [], {}
        for key, m in models.items():
            s = fx.filter_stats(fx.conv1_weight(m))
            infos[key]["stats"] = s
            rows.append({"model": key, "description": names[key], "filters": s["n"],
                         "kernel": int(fx.conv1_weight(m).shape[-1]), "top_energy_share": s["top_energy_share"],
                         "rms_max_over_median": s["rms_max_over_median"], "dead_fraction": s["dead_fraction"],
                         **{f"band_{b}": v for b, v in s["band_energy"].items()},
                         "clipped_filters": infos[key]["clipped_filters"], "val_top1": infos[key]["val_top1"]})
        _xp_csv(out / "filters.csv", rows)
        dpi = int(cfg.dpi)
        if "default" in models:
            fig, _ = fx.filters_figure({names["default"]: fx.conv1_weight(models["default"])},
                                       title="Fig. 6(a)-(c) style: layer-1 filters")
            figs["default"] = save_figure(fig, out / "figures" / "fig6_default_filters.png", tracker, "default", dpi)
        clip = {names[k]: fx.conv1_weight(models[k]) for k in ("noclip", "zf_small") if k in models}
        if clip:
            fig, _ = fx.filters_figure(clip, title="Fig. 6(a): without vs with feature scale clipping")
            figs["clipping"] = save_figure(fig, out / "figures" / "fig6_clipping.png", tracker, "clipping", dpi)
        pair = [k for k in ("alexnet", "zf_small") if k in models]
        if pair:
            normalize, transform = model_normalize(cfg)
            dataset = _xp_dataset(cfg, f.split, f.images)
            miner = _xp_miner(cfg, transform, normalize, device)
            panels = {}
            for k in pair:
                m = models[k].to(device)
                units, _, proj = fx.layer2_views(m, dataset, int(f.layer2_units), int(cfg.seed), normalize, device,
                                                 mine_fn=miner)
                infos[k]["layer2_units"] = units
                panels[names[k]] = (fx.conv1_weight(m), proj)
            fig, _ = fx.comparison_figure(panels, title="Fig. 6(b)-(e): first layer and layer-2 projections")
            figs["alexnet_vs_zf"] = save_figure(fig, out / "figures" / "fig6_alexnet_vs_zf.png", tracker,
                                                "alexnet_vs_zf", dpi)
        (out / "summary.json").write_text(json.dumps({"models": infos, "figures": {k: str(v) for k, v in figs.items()}},
                                                     indent=1, default=str))
        tracker.table("filters", list(rows[0]), [list(r.values()) for r in rows])
        for k, v in figs.items():
            print(f"  figure ({k}): {v}")
        return float(infos["noclip"]["stats"]["top_energy_share"]) if "noclip" in infos else float("nan")
    finally:
        tracker.finish()


def ablation_table_task(cfg: DictConfig) -> float:
    """Table 3 (``experiment=ablation_table``): collect the ablation sweep under ``sweep_dir`` into
    ``ablation_table.csv``/``.md``/``.json`` and ``figures/ablation.png``.  Returns the baseline's val top-1 error."""
    from .experiments import ablation as ab

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = ab.collect(cfg.sweep_dir)
    tracker = make_tracker(cfg, "ablation_table")
    try:
        _xp_csv(out / "ablation_table.csv", rows, ab.COLUMNS)
        md = ab.to_markdown(rows)
        (out / "ablation_table.md").write_text(md)
        (out / "ablation_table.json").write_text(json.dumps(rows, indent=1))
        fig, _ = ab.ablation_figure(rows)
        save_figure(fig, out / "figures" / "ablation.png", tracker, "ablation", int(cfg.dpi))
        tracker.table("table3", list(ab.COLUMNS), [[r.get(c) for c in ab.COLUMNS] for r in rows])
        print(md)
        base = next((r for r in rows if r["name"] == ab.BASELINE), None)
        return float(base["val_top1_err"]) if base and base["val_top1_err"] is not None else float("nan")
    finally:
        tracker.finish()


def probe_task(cfg: DictConfig) -> float:
    """Beyond the paper (``experiment=probe``): a softmax probe per layer of the model, trained on a train subset,
    scored on val; ``probe.csv``/``.json`` and ``figures/probe.png`` beside Table 7's trend.  Returns the best val
    accuracy."""
    from .experiments import probe as px

    p = cfg.probe
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    model = model_from_cfg(cfg).eval().to(device)
    normalize, transform = model_normalize(cfg, model)
    train_ds, val_ds = _xp_dataset(cfg, "train", p.train_images), _xp_dataset(cfg, "val", p.val_images)
    tracker = make_tracker(cfg, "probe")
    try:
        layers = px.probe_layers(model)
        kw = dict(layers=layers, normalize=normalize, batch_size=int(cfg.batch_size), device=device,
                  progress=cfg.progress)
        xtr, ytr = px.extract(model, train_ds, **kw)
        xva, yva = px.extract(model, val_ds, **kw)
        n_classes = len(train_ds.classes) or int(max(ytr.max(), yva.max())) + 1
        rows = px.probe(xtr, ytr, xva, yva, n_classes, l2=float(p.l2), max_iter=int(p.max_iter))
        for r in rows:
            n = px._layer_number(r["layer"])
            r["paper_caltech101"], r["paper_caltech256"] = px.PAPER_TABLE7.get(n, (None, None))
        _xp_csv(out / "probe.csv", rows)
        (out / "probe.json").write_text(json.dumps({"rows": rows, "train_images": len(train_ds),
                                                     "val_images": len(val_ds), "classes": n_classes,
                                                     "l2": float(p.l2), "layers": dict(layers),
                                                     "transform": transform}, indent=1))
        fig, _ = px.probe_figure(rows, chance=1.0 / n_classes)
        save_figure(fig, out / "figures" / "probe.png", tracker, "probe", int(cfg.dpi))
        tracker.table("probe", list(rows[0]), [list(r.values()) for r in rows])
        for r in rows:
            print(f"  {r['layer']:>6}  dim {r['dim']:5d}  train {100 * r['train_acc']:5.1f}%  "
                  f"val {100 * r['val_acc']:5.1f}%")
        return max(r["val_acc"] for r in rows)
    finally:
        tracker.finish()


def methods_task(cfg: DictConfig) -> float:
    """Deconvnet vs guided backpropagation vs gradient (``experiment=methods``): the same top-k rows of ``layer``
    (mined as the main job does, through its cache) projected with each method; ``methods.npz``, ``summary.json``
    (pairwise cosine agreement) and ``figures/methods_<layer>.png``.  Returns the deconvnet~guided agreement."""
    import numpy as np

    from .experiments.evolution import choose_units, select
    from .experiments.methods import method_agreement, method_views, methods_figure
    from .layers import resolve_layer

    m = cfg.methods
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    model = model_from_cfg(cfg).eval().to(device)
    normalize, transform = model_normalize(cfg, model)
    dataset = _xp_dataset(cfg, cfg.split if cfg.data.get(f"{cfg.split}_split") else "val", cfg.data.limit)
    target = resolve_layer(model, cfg.layer, cfg.tap)
    tracker = make_tracker(cfg, "methods")
    try:
        tables, cache = mine_cached(model, dataset, list(cfg.mine_layers or []) + [target.name], int(cfg.k), cfg.tap,
                                    Path(cfg.paths.cache_dir), transform, int(cfg.batch_size), int(cfg.num_workers),
                                    device, normalize, progress=cfg.progress)
        table = tables[target.name]
        units = [int(u) for u in m.units] if m.get("units") else choose_units(table, int(m.n_units), int(cfg.seed))
        sub = select(table, units)
        patches, projs = method_views(model, dataset, sub, target.name, units, methods=list(m.compare),
                                      normalize=normalize, device=device, tap=cfg.tap)
        np.savez_compressed(out / "methods.npz", units=np.array(units), patches=patches,
                            **{k: v.astype(np.float16) for k, v in projs.items()})
        agreement = method_agreement(projs)
        (out / "summary.json").write_text(json.dumps({"layer": target.name, "units": units, "k": int(cfg.k),
                                                       "methods": list(m.compare), "agreement_cosine": agreement,
                                                       "images": len(dataset), "mining_cache": str(cache)},
                                                      indent=1))
        fig, _ = methods_figure(patches, projs, units, target.name, cfg.display)
        path = save_figure(fig, out / "figures" / f"methods_{target.name}.png", tracker, "methods", int(cfg.dpi))
        tracker.summary(agreement)
        print(f"methods: {target.name}, units {units}; agreement {agreement}; {path}")
        return float(agreement.get("deconvnet~guided", float("nan")))
    finally:
        tracker.finish()
