"""Checks of a composed config that need no data: every value a task reads, found wrong in one line naming its key
before the run directory, the model or any image is touched (``zf.edge.task`` calls ``check_config`` first), and
for every job of a sweep before the first job runs (``CheckSweep``, a Hydra callback in
``configs/hydra/default.yaml``).

What a check can only know with the model (a layer that does not exist, a unit past the last channel) is checked by
the library before its data pass (``zf.job.check_args``); ``CheckSweep`` builds each job's model for that too.
"""
from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from zf.edge.runtime import device_of, flag, integer, layers_from_cfg, split_folder, units_from_cfg
from zf.errors import ConfigError, ZFError


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
    from .deconv import METHODS, NORMS
    from .graph import SEEDS
    from .job import DISPLAYS
    from .layers import TAPS

    if integer(cfg, "k", None) < 1:
        raise ConfigError(f"k={cfg.k}: the number of top images per unit must be at least 1")
    integer(cfg, "dpi")
    integer(cfg, "batch_size")
    integer(cfg, "num_workers", 0)
    integer(cfg, "overview_units")
    integer(cfg, "seed", None)
    units_from_cfg(cfg)
    layers_from_cfg(cfg)
    if not OmegaConf.is_list(cfg.get("mine_layers")) and cfg.get("mine_layers") is not None:
        raise ConfigError(f"mine_layers={cfg.mine_layers!r}: use a list of layers (mine_layers=[] for none)")
    _one_of(cfg, "method", METHODS)
    _one_of(cfg, "display", DISPLAYS)
    _one_of(cfg, "tap", TAPS)
    _one_of(cfg, "seed_mode", SEEDS)
    _one_of(cfg, "norm", NORMS)
    for key in ("gallery", "unit_figures", "compare_methods", "list_layers", "progress"):
        flag(cfg, key, key in ("gallery", "unit_figures", "progress"))
    device_of(cfg.get("device", "auto"))
    check_data(cfg)
    split_folder(cfg, cfg.get("split"))


def check_train(cfg: DictConfig) -> None:
    """Training's values (``configs/train.yaml``): ``zf.train.check_train_config`` and the data's."""
    from .train import TrainConfig, check_train_config

    check_train_config(TrainConfig(**OmegaConf.to_container(cfg.train, resolve=True)))
    device_of(cfg.get("device", "auto"))
    check_data(cfg)
    integer(cfg, "seed", None)


#: ``{task target: check}``; other tasks get the checks common to all (device, data).
CHECKS = {"zf.tasks.topk": check_run, "zf.tasks.train": check_train}


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


def check_with_model(cfg: DictConfig, models: dict) -> None:
    """``check_config`` and, for the main job, its layers and units against the model (built once per model
    config into ``models``)."""
    check_config(cfg)
    if str(cfg.task.get("_target_")) != "zf.tasks.topk" or cfg.get("list_layers"):
        return
    from .edge import model_from_cfg
    from .job import check_args

    key = OmegaConf.to_yaml(cfg.model) + str(cfg.seed)
    if key not in models:
        models[key] = model_from_cfg(cfg).eval()
    check_args(models[key], layers_from_cfg(cfg), int(cfg.k), [cfg.method], cfg.tap, cfg.display,
               int(cfg.data.size), units_from_cfg(cfg), mine_layers=list(cfg.mine_layers or []))


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override lists of the jobs of a ``-m`` sweep, as Hydra's basic sweeper would run them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


class CheckSweep(Callback):
    """Before the first job of a sweep runs, check every job's config (``check_with_model``): ``-m layer=4,99``
    fails at once, naming job 1 and its overrides, instead of after job 0 has finished."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra import compose

        if config.get("debug") or "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
            return  # another sweeper expands its jobs its own way
        models: dict = {}
        try:
            jobs = sweep_jobs(config)
        except Exception:  # noqa: BLE001 - Hydra reports a sweep it cannot parse itself
            return
        common = set.intersection(*(set(j) for j in jobs)) if jobs else set()
        for i, job in enumerate(jobs):
            try:
                cfg = compose(config.hydra.job.config_name, overrides=job)
                check_with_model(cfg, models)
            except ZFError as e:
                print(f"error: sweep job {i} ({' '.join(o for o in job if o not in common)}): {e}; no job was run",
                      file=sys.stderr)
                sys.exit(2)
            except Exception:  # noqa: BLE001 - not a user error: the job itself will report it
                return
