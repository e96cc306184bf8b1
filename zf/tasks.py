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
