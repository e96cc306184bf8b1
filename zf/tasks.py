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
    """A resolved config as plain Python containers."""
    return OmegaConf.to_container(cfg, resolve=True)


def make_tracker(cfg: DictConfig, job_type: str, rank: int = 0) -> Tracker:
    lg = cfg.logger
    return Tracker(project=lg.project, dir=cfg.paths.output_dir, config=plain(cfg), mode=lg.mode, group=lg.group,
                   name=lg.name, tags=list(lg.tags or []), enabled=rank == 0, job_type=job_type)


def model_from_cfg(cfg: DictConfig, num_classes: int | None = None) -> torch.nn.Module:
    m = cfg.model
    arch = plain(m.get("arch") or {})
    kwargs = dict(name=m.name, checkpoint=m.get("checkpoint"), weights=m.get("weights"))
    if m.name == "zfnet":
        if not m.get("checkpoint"):
            arch["num_classes"] = num_classes or m.get("num_classes", 1000)
        return build_model(**kwargs, **({} if m.get("checkpoint") else arch))
    return build_model(**kwargs, num_classes=m.get("num_classes", 1000))


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


def run_task(cfg: DictConfig) -> float:
    """The main job (``configs/run.yaml``): mine the top-k images of every unit, project them, write tables,
    figures, per-unit images and the gallery into the run directory, log them to W&B.  Returns the mean top-1
    activation of the layer (a number for sweepers)."""
    import datetime

    import numpy as np
    import torch.distributed as dist
    from PIL import Image

    from . import results as R
    from .layers import resolve_layer
    from .receptive import receptive_fields
    from .visualize import overview_figure, unit_image, unit_views

    out = Path(cfg.paths.output_dir)
    device = _device(cfg.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    model = model_from_cfg(cfg).eval()
    meta = getattr(model, "meta", {}) or {}
    d = cfg.data
    mean, std = meta.get("mean", list(d.mean)), meta.get("std", list(d.std))
    normalize = zdata.Normalize(mean, std)
    root = split_root(cfg, d.get("val_split") if cfg.split == "val" else d.get(f"{cfg.split}_split"))
    dataset = zdata.ImageDataset(root, size=int(d.size), resize=d.resize, limit=d.limit, subset_seed=cfg.seed)
    transform = zdata.transform_spec(int(d.size), d.resize, mean, std)
    target = resolve_layer(model, cfg.layer, cfg.tap)
    mine_layers = list(cfg.mine_layers or []) + [target.name]
    tracker = make_tracker(cfg, "run", rank)
    try:
        tables, cache = mine_cached(model, dataset, mine_layers, int(cfg.k), cfg.tap, Path(cfg.paths.cache_dir),
                                    transform, int(cfg.batch_size), int(cfg.num_workers), device, normalize,
                                    progress=cfg.progress)
        if rank != 0:
            return 0.0
        table = tables[target.name]
        layer = target.name
        methods = ["deconvnet", "guided", "gradient"] if cfg.compare_methods else [cfg.method]
        if cfg.method not in methods:
            methods.insert(0, cfg.method)
        all_units = table.units.tolist()
        if cfg.units is not None:
            units = [int(u) for u in (cfg.units if not isinstance(cfg.units, int) else [cfg.units])]
            bad = [u for u in units if u not in all_units]
            if bad:
                raise ValueError(f"units {bad} do not exist in {layer} (0..{len(all_units) - 1})")
            overview = units
        else:
            units = all_units
            rng = np.random.default_rng(cfg.seed)
            overview = sorted(rng.choice(all_units, size=min(cfg.overview_units, len(all_units)),
                                         replace=False).tolist())
        sel = np.array([all_units.index(u) for u in units])
        from .results import TopK

        sub = TopK(**{f: getattr(table, f)[sel] for f in R.TOPK_FIELDS})
        ldir = R.layer_dir(out, layer)
        ldir.mkdir(parents=True, exist_ok=True)
        sub.save(ldir / "topk.npz")
        paths = [str(p) for p in dataset.files.paths]
        id_paths = [str(dataset.path(i)) for i in range(len(dataset))]
        (out / "images.json").write_text(json.dumps(id_paths))
        _write_csv(ldir / "topk.csv", layer, sub, id_paths)
        # the source images of the table, at model input size, for the gallery's full view
        (out / "sources").mkdir(exist_ok=True)
        for g in np.unique(sub.image[sub.image >= 0]):
            item = dataset[int(g)]
            if item is not None:
                Image.fromarray(item[0].permute(1, 2, 0).numpy()).save(R.source_path(out, int(g)), quality=90)
        figs = {}
        for method in methods:
            patches, proj = unit_views(model, dataset, sub, layer, units, method=method, tap=cfg.tap,
                                       seed=cfg.seed_mode, norm=cfg.norm, normalize=normalize, device=device,
                                       progress=cfg.progress)
            np.save(ldir / f"{method}.npy", proj.astype(np.float16))
            from .visualize import display

            shown = display(proj, cfg.display)
            for i, u in enumerate(units):
                for r in range(sub.k):
                    if sub.image[i, r] < 0:
                        continue
                    pp = R.projection_path(out, layer, method, u, r)
                    pp.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(shown[i, r]).save(pp)
                    if method == methods[0]:
                        qp = R.patch_path(out, layer, u, r)
                        qp.parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(patches[i, r]).save(qp)
                up = R.unit_figure_path(out, layer, u, method)
                up.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(unit_image(patches[i], proj[i], cfg.display)).save(up)
            oi = [units.index(u) for u in overview]
            fig, _ = overview_figure(patches[oi], proj[oi], overview, title=f"{layer}: top {sub.k} ({method})",
                                     mode=cfg.display)
            fpath = out / "figures" / f"{layer}_{method}.png"
            fpath.parent.mkdir(exist_ok=True)
            fig.savefig(fpath, dpi=cfg.dpi)
            figs[method] = fpath
            tracker.image(f"{layer}/{method}", str(fpath))
            import matplotlib.pyplot as plt

            plt.close(fig)
        rfs = receptive_fields(model, input_size=int(d.size))
        summary = {
            "model": cfg.model.name, "checkpoint": str(cfg.model.get("checkpoint")), "data": str(root),
            "transform": transform, "methods": methods, "k": int(cfg.k), "tap": cfg.tap, "seed_mode": cfg.seed_mode,
            "norm": cfg.norm, "layer": layer,
            "layers": {layer: {"rf": rfs[layer].size, "stride": rfs[layer].stride, "units": len(units),
                               "channels": len(all_units)}},
            "overview_units": overview, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "n_images": len(dataset), "skipped": sorted(set(dataset.skipped)), "mining_cache": str(cache),
            "mean_top1_activation": float(np.nanmean(sub.activation[:, 0])),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        if cfg.gallery:
            from .gallery import build_gallery

            index = build_gallery(out)
            print(f"gallery: {index}")
        _log_run(tracker, out, layer, sub, methods, units, id_paths)
        if summary["skipped"]:
            print(f"{len(summary['skipped'])} unreadable images skipped (listed in summary.json)")
        print(f"{layer}: {len(units)} units, top {sub.k} of {len(dataset)} images; written to {out}")
        for m, f in figs.items():
            print(f"  figure ({m}): {f}")
        return summary["mean_top1_activation"]
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
