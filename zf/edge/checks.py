"""Checks of a composed config that need no data: every value a task reads, found wrong in one line naming its key
before the run directory, the model or any image is touched (``zf.edge.task`` calls ``check_config`` first), and
for every job of a sweep before the first job runs (``zf.edge.runtime.CheckSweep``, a Hydra callback in
``configs/hydra/default.yaml``).

What a check can only know with the model (a layer that does not exist, a unit past the last channel) is checked by
the library before its data pass (``zf.jobs.topk.TopkRequest.check``); ``CheckSweep`` builds each job's model for
that too.
"""
from __future__ import annotations

from pathlib import Path

import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from zf.errors import ConfigError
from zf.net.layers import TAPS
from zf.projection.rules import CROPS, METHODS, NORMS, SEED_MODES
from zf.training.config import TrainConfig, check_train_config
from zf.views.visualize import DISPLAYS


def plain(cfg):
    """A resolved config as plain Python containers (plain values pass through)."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def flag(cfg: DictConfig, key: str, default: bool = False) -> bool:
    """A true/false option of the config; anything else (``unit_figures=maybe``) is a ``ConfigError``, not truthy."""
    v = cfg.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{key}={v!r}: use true or false")
    return v


def integer(cfg: DictConfig, key: str, minimum: int | None = 1, none: bool = False):
    """The whole number at ``key`` (dotted, ``data.limit``); ``ConfigError`` naming it for anything else (``k=1.5``,
    ``data.limit=abc``, ``true``) or below ``minimum``.  ``none``: null is allowed (and returned)."""
    v = OmegaConf.select(cfg, key)
    if v is None and none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) and not (isinstance(v, float) and v.is_integer()):
        raise ConfigError(f"{key}={v!r}: use a whole number" + (f" of at least {minimum}" if minimum is not None
                                                                  else "") + (" or null" if none else ""))
    if minimum is not None and v < minimum:
        raise ConfigError(f"{key}={v}: use a whole number of at least {minimum}" + (" or null" if none else ""))
    return int(v)


def device_of(name) -> torch.device:
    """``auto`` (the GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N``; ``ConfigError`` for a device this
    machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except RuntimeError:
        raise ConfigError(f"device={name!r}: use auto, cpu or cuda (cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: this machine has no CUDA GPU (torch.cuda.is_available() is False); use "
                          "device=cpu or device=auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r}: use auto, cpu or cuda (cuda:N)")
    return device


def units_from_cfg(cfg: DictConfig):
    """``units``: null (every unit), ``overview``, or a non-empty list of unit numbers (one number is a list of one);
    ``ConfigError`` naming the key for anything else (``units=[]``, ``units=foo``, ``units=[a,b]``)."""
    u = cfg.get("units")
    if u is None or u == "overview":
        return u
    items = list(u) if OmegaConf.is_list(u) else [u]
    if not items or any(isinstance(x, bool) or not isinstance(x, int) for x in items):
        raise ConfigError(f"units={plain(u) if OmegaConf.is_config(u) else u!r}: use null (every unit), overview, "
                          "or a non-empty list of unit numbers, e.g. units=[0,5,7]")
    return [int(x) for x in items]


def layers_from_cfg(cfg: DictConfig) -> list:
    """``layer``: one layer or a non-empty list of them."""
    layers = list(cfg.layer) if OmegaConf.is_list(cfg.layer) else [cfg.layer]
    if not layers or any(l is None or OmegaConf.is_config(l) for l in layers):
        raise ConfigError(f"layer={plain(cfg.layer)!r}: give a layer (layer=4, layer=conv5_3, layer=layer3.1) or a "
                          "non-empty list of them")
    return layers


# --- from a config to library objects -----------------------------------------------------------------------


def split_folder(cfg: DictConfig, split: str | None) -> str | None:
    """The folder under ``data.root`` of ``split``, or ``None`` (the root is used whole).  ``ConfigError`` for a
    split the data config does not name (``split=foo``: it used to read the whole tree, train and val together) and
    for a ``data.<split>_split`` folder that is missing from a root holding another split's folder (a misspelt
    ``data.val_split``)."""
    d = cfg.data
    if not split:
        return None
    named = {k[:-len("_split")]: v for k, v in d.items() if k.endswith("_split") and v}
    if split not in named and f"{split}_split" not in d:
        if named:
            raise ConfigError(f"split={split!r}: the data config names the splits "
                              f"{', '.join(sorted(named))} (data.<split>_split); use one of them, or split=null for "
                              "the whole data.root")
        return None
    sub = named.get(split)
    if d.get("root") is None:  # resolved (or downloaded) later by zf.edge.runtime.data_root_from_cfg
        return sub
    root = Path(d.root)
    if sub and root.is_dir() and not (root / sub).is_dir():
        others = [k for k, v in named.items() if k != split and (root / str(v)).is_dir()]
        if others:
            have = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise ConfigError(f"data.{split}_split={sub}: {root} has no folder {sub} (it has {', '.join(have)}); "
                              f"set data.{split}_split to one of them")
    return sub


def _one_of(cfg: DictConfig, key: str, allowed) -> None:
    v = OmegaConf.select(cfg, key)
    if v not in allowed:
        raise ConfigError(f"{key}={v!r}: use one of {', '.join(map(str, allowed))}")


def check_data(cfg: DictConfig) -> None:
    integer(cfg, "data.size")
    integer(cfg, "data.limit", 1, none=True)
    integer(cfg, "data.resize", 1, none=True)


def check_run(cfg: DictConfig) -> None:
    """The main job's values (``configs/run.yaml``)."""
    if integer(cfg, "k", None) < 1:
        raise ConfigError(f"k={cfg.k}: the number of top images per unit must be at least 1")
    integer(cfg, "dpi")
    integer(cfg, "batch_size")
    integer(cfg, "num_workers", 0)
    integer(cfg, "overview_units")
    integer(cfg, "seed", None)
    units_from_cfg(cfg)
    layers_from_cfg(cfg)
    if not OmegaConf.is_list(cfg.get("mine_layers")) and cfg.get("mine_layers") not in (None, "default"):
        raise ConfigError(f"mine_layers={cfg.mine_layers!r}: use a list of layers (mine_layers=[] for none) or "
                          "default (conv1-5 of a features stack, nothing extra for other models)")
    _one_of(cfg, "method", METHODS)
    _one_of(cfg, "display", DISPLAYS)
    _one_of(cfg, "tap", TAPS)
    _one_of(cfg, "seed_mode", SEED_MODES)
    _one_of(cfg, "norm", NORMS)
    if "crop" in cfg:
        _one_of(cfg, "crop", CROPS)
    warn = cfg.get("image_dependence_warn", 0.95)
    if isinstance(warn, bool) or not isinstance(warn, (int, float)):
        raise ConfigError(f"image_dependence_warn={warn!r}: use a number (a correlation, at most 1; 0.95 by "
                          "default), above which the run warns that projections do not depend on the image")
    for key in ("gallery", "unit_figures", "compare_methods", "list_layers", "progress"):
        flag(cfg, key, key in ("gallery", "unit_figures", "progress"))
    device_of(cfg.get("device", "auto"))
    check_data(cfg)
    split_folder(cfg, cfg.get("split"))


def check_train(cfg: DictConfig) -> None:
    """Training's values (``configs/train.yaml``): ``zf.training.train.check_train_config`` and the data's."""
    check_train_config(TrainConfig(**OmegaConf.to_container(cfg.train, resolve=True)))
    device_of(cfg.get("device", "auto"))
    check_data(cfg)
    integer(cfg, "seed", None)


#: ``{task target: check}``; other tasks get the checks common to all (device, data).
CHECKS = {"zf.edge.tasks.topk": check_run, "zf.edge.tasks.train": check_train}


def check_config(cfg: DictConfig) -> None:
    """The checks of the task ``cfg.task._target_`` names (raises ``zf.errors.ConfigError``)."""
    target = str(cfg.get("task", {}).get("_target_", ""))
    check = CHECKS.get(target)
    if check is not None:
        check(cfg)
    else:
        device_of(cfg.get("device", "auto"))
        if "data" in cfg:
            check_data(cfg)


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override lists of the jobs of a ``-m`` sweep, as Hydra's basic sweeper would run them."""
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


