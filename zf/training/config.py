"""What a training run computes (``TrainConfig``, the schema of ``configs/train.yaml``'s ``train:`` section) and the
checks made before any data is read: ``check_train_config`` (a value training cannot use) and ``check_resume`` (a
resumed run whose config changes what it computes)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from zf.errors import ConfigError
from zf.training.checkpoints import load_checkpoint


@dataclass
class TrainConfig:
    """Every knob of a training run.  Defaults are the paper's recipe (section 3) where it gives one.

    It is also the schema of ``configs/train.yaml``'s ``train:`` section (registered with Hydra's ConfigStore by
    ``zf.edge.runtime``), so a misspelt or unknown ``train.*`` key is an error when the config is composed."""

    epochs: int = 70
    batch_size: int = 128                 # global batch; split across distributed processes
    optimizer: str = "sgd"                # sgd | adamw
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "plateau"             # plateau (lowered x0.1 when val loss stalls) | onecycle | cosine | step | constant
    plateau_patience: int = 2
    step_epochs: list[int] = field(default_factory=list)  # for schedule=step: epochs at which lr is divided by 10
    warmup_fraction: float = 0.25         # for onecycle
    label_smoothing: float = 0.0
    clip_radius: float | None = 0.1       # feature scale clipping (RMS radius); None to switch off
    clip_layers: str = "all"              # all | conv1: which conv layers are clipped
    sizes: dict | None = None             # {first_epoch: input size}: progressive resizing; None keeps the data's
    val_every: int = 1
    snapshot_epochs: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20])  # feature snapshots (Fig. 4); +last
    seed: int = 0
    num_workers: int = 0
    threads: int | None = None
    progress: bool = True
    augment: str = "random_crop"          # random_crop (paper) | random_resized_crop | none (zf.data.BatchAugment)
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])  # for random_resized_crop
    flip: bool = True                     # random horizontal flips
    preload: bool = True                  # decode the train split into memory once (small data sets)


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("plateau", "onecycle", "cosine", "step", "constant")


def check_train_config(cfg: TrainConfig) -> None:
    """``ConfigError`` naming the ``train.*`` key of a value training cannot use, before any data is read (an
    unknown optimizer or schedule used to be found only after the whole train split was decoded)."""
    def whole(key: str, minimum: int, v=None) -> None:
        v = getattr(cfg, key) if v is None else v
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"train.{key}={v!r}: use a whole number of at least {minimum}")

    whole("epochs", 1)
    whole("batch_size", 1)
    whole("val_every", 1)
    whole("num_workers", 0)
    whole("plateau_patience", 0)
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer={cfg.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule={cfg.schedule!r}: use one of {', '.join(SCHEDULES)}")
    if cfg.augment not in ("random_crop", "random_resized_crop", "none"):
        raise ConfigError(f"train.augment={cfg.augment!r}: use random_crop, random_resized_crop or none")
    if cfg.clip_layers not in ("all", "conv1"):
        raise ConfigError(f"train.clip_layers={cfg.clip_layers!r}: use all or conv1")
    if not cfg.lr > 0:
        raise ConfigError(f"train.lr={cfg.lr}: use a positive learning rate")
    if cfg.threads is not None:
        whole("threads", 1)


#: Config keys (dotted prefixes) that do not change what training computes: a resumed run may change them.
RESUME_FREE = ("train.progress", "train.num_workers", "train.threads", "train.snapshot_epochs", "logger", "paths",
               "hydra", "debug", "resume", "export", "device", "num_workers", "progress", "task_name")


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def check_resume(last: str | os.PathLike, config: dict) -> None:
    """Before a resumed run reads any data: ``ConfigError`` naming every key whose value differs from the one
    ``last.pt`` was trained with, except those that do not change the result (``RESUME_FREE``) and
    ``train.epochs`` under a schedule that does not depend on it (plateau, step, constant: more epochs continue
    the run).  A resume that changed ``train.lr`` used to go on at the old rate while recording the new one."""
    last = Path(last)
    if not last.is_file():
        return
    old = load_checkpoint(last).get("config")
    if not isinstance(old, dict):
        return
    a, b = _flat(old), _flat(config)
    free = RESUME_FREE + (("train.epochs",) if b.get("train.schedule") in ("plateau", "step", "constant") else ())
    changed = sorted(k for k in set(a) | set(b)
                     if a.get(k) != b.get(k) and not any(k == f or k.startswith(f + ".") for f in free))
    if changed:
        shown = ", ".join(f"{k}={b.get(k)!r} (was {a.get(k)!r})" for k in changed[:6])
        raise ConfigError(f"resume from {last}: the config differs in what the run computes: {shown}"
                          f"{' ...' if len(changed) > 6 else ''}; rerun with the old values, or start a new run "
                          "(another hydra.run.dir, or resume=false to overwrite)")


__all__ = ["TrainConfig", "OPTIMIZERS", "SCHEDULES", "RESUME_FREE", "check_train_config", "check_resume"]
