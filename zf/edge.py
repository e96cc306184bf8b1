"""The plumbing of the Hydra edge, in the style of lightning-hydra-template's ``task_wrapper``: the ``task``
decorator that gives each task (``zf.tasks``) its run directory, device and W&B tracker and closes them however it
ends; ``dispatch``, which calls the task a config names (``task._target_``); ``cli``, which turns a user error
(``zf.errors.ZFError``) into one line on stderr and exit status 2; and the Hydra callback that checks the run
directory can be written before Hydra starts logging into it.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, OutputError, ZFError
from .tracking import Tracker


def register_configs() -> None:
    """The structured configs (schemas) the YAML files build on: ``train/schema`` = ``zf.train.TrainConfig``."""
    from hydra.core.config_store import ConfigStore

    from .train import TrainConfig

    ConfigStore.instance().store(group="train", name="schema", node=TrainConfig)


register_configs()


def plain(cfg):
    """A resolved config as plain Python containers (plain values pass through)."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Context:
    """What the task wrapper hands a task: its run directory, device, tracker and distributed rank."""

    out: Path
    device: torch.device
    tracker: Tracker
    rank: int = 0


def task(job_type: str):
    """Wrap ``fn(cfg, ctx)``: make the run directory, pick the device, join torchrun's process group, open the W&B
    run (rank 0 only), and finish it however the task ends."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapped(cfg: DictConfig):
            import torch.distributed as dist

            out = Path(cfg.paths.output_dir)
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"cannot write the run directory {out}: {e.strerror}; pass a writable "
                                  "hydra.run.dir=...") from e
            device = device_of(cfg.get("device", "auto"))
            if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized() and job_type != "train":
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
            lg = cfg.logger
            tracker = Tracker(project=lg.project, dir=out, config=plain(cfg), mode=lg.mode, group=lg.group,
                              name=lg.name, tags=list(lg.tags or []), enabled=rank == 0, job_type=job_type)
            try:
                return fn(cfg, Context(out, device, tracker, rank))
            finally:
                tracker.finish()
        return wrapped
    return deco


def dispatch(cfg: DictConfig):
    """Call the task ``cfg.task._target_`` names with the whole config."""
    from hydra.utils import get_method

    target = cfg.task.get("_target_") if OmegaConf.is_dict(cfg.get("task")) else None
    if not target:
        raise ConfigError("the config names no task: set task._target_ (e.g. zf.tasks.topk)")
    return get_method(target)(cfg)


def cli(fn, cfg: DictConfig):
    """``fn(cfg)`` for a script: a user error ends the program with its one-line message and exit status 2
    (``debug=true`` or ``HYDRA_FULL_ERROR=1`` show the traceback)."""
    try:
        return fn(cfg)
    except ZFError as e:
        if cfg.get("debug") or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


class CheckOutputDir(Callback):
    """A Hydra callback (``configs/hydra/default.yaml``): a run or sweep directory that cannot be created or written
    ends the program with one line naming it and exit status 2, before Hydra's own logging fails on it."""

    def _check(self, path) -> None:
        path = Path(str(path))
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".zf-write-test"
            probe.touch()
            probe.unlink()
        except OSError as e:
            print(f"error: cannot write the run directory {path}: {e.strerror}; pass a writable hydra.run.dir=... "
                  "(or hydra.sweep.dir=... with -m)", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir)
