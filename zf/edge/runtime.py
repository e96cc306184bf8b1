"""The plumbing of the Hydra edge, the one other module besides ``zf.edge.tasks`` that reads a config:

- building library objects from a config: ``model_from_cfg``, ``dataset_from_cfg``, ``normalize_from_cfg``, ``miner``;
- the ``task`` decorator (in the style of lightning-hydra-template's ``task_wrapper``), which gives each task its run
  directory, device, process group and W&B tracker and closes the tracker however the task ends;
- ``dispatch``, which calls the task a config names (``task._target_``), and ``cli``, which turns a user error
  (``zf.errors.ZFError``) into one line on stderr and exit status 2;
- the Hydra callback that checks the run directory can be written before Hydra starts logging into it, and the
  structured configs the YAML files build on.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from zf import data as zdata
from zf.errors import ConfigError, OutputError, ZFError
from zf.mining.cache import mine_cached
from zf.net.models import build_model
from zf.tracking import Tracker
from zf.training.train import TrainConfig


def register_configs() -> None:
    """The structured configs (schemas) the YAML files build on: ``train/schema`` =
    ``zf.training.train.TrainConfig``."""
    ConfigStore.instance().store(group="train", name="schema", node=TrainConfig)


register_configs()


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


def distributed_setup(device: torch.device) -> tuple[int, torch.device]:
    """(rank, device) for every task under ``torchrun`` (``WORLD_SIZE`` > 1): the process group (nccl on GPUs, gloo
    on CPUs) and, on GPUs, ``torch.cuda.set_device(LOCAL_RANK)`` so that each process uses its own GPU.  Without
    torchrun: (``RANK`` or 0, ``device``)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    return rank, device


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


def model_from_cfg(cfg: DictConfig, num_classes: int | None = None) -> torch.nn.Module:
    """The model ``cfg.model`` names; ``num_classes`` (from the data) wins over the config's."""
    import warnings

    m = cfg.model
    n = num_classes or m.get("num_classes")
    if m.name == "zfnet" and not m.get("checkpoint") and n is None:
        n = 1000
    torch.manual_seed(cfg.seed)  # weights that stay random are the same on every run and process
    model = build_model(name=m.name, checkpoint=m.get("checkpoint"), weights=m.get("weights"), num_classes=n,
                        arch_name=m.get("arch_name"), target=m.get("target"), **plain(m.get("arch") or {}))
    training = str(cfg.get("task", {}).get("_target_", "")).endswith(".train")
    if getattr(model, "zf_weights", None) == "random" and not training:
        if str(m.get("weights")) == "random":
            print(f"model {m.get('arch_name') or m.name}: random weights (model.weights=random), seed {cfg.seed}")
        else:
            warnings.warn(f"model.checkpoint=null: {m.name} runs on random weights (seed {cfg.seed}); pass "
                          "model.weights=random to mean it, or model.checkpoint=default for the trained model",
                          stacklevel=2)
    return model


def model_info(cfg: DictConfig, model: torch.nn.Module) -> dict:
    """What a run records of its model: the family and architecture names, and where its weights came from
    (``weights_random``: parameter names that stayed random because the weights file did not have them)."""
    return {"model": cfg.model.name, "arch_name": cfg.model.get("arch_name"), "checkpoint": cfg.model.get("checkpoint"),
            "weights": str(getattr(model, "zf_weights", cfg.model.get("weights"))),
            "weights_random": list(getattr(model, "zf_missing", []))}


def dataset_from_cfg(cfg: DictConfig, split: str | None, limit="data", size: int | None = None,
                     resize="data") -> zdata.ImageDataset:
    """The images of ``split`` (``train`` | ``val``: ``data.<split>_split`` under ``data.root``; a root without that
    folder, or ``split=None``, is used whole), a seeded subset of ``limit`` images (default ``data.limit``)."""
    d = cfg.data
    root = Path(d.root)
    sub = split_folder(cfg, split)
    root = root / sub if sub and (root / sub).is_dir() else root
    data_size = integer(cfg, "data.size")
    if d.get("resize") is not None:
        integer(cfg, "data.resize")
    return zdata.ImageDataset(root, size=int(size or data_size), resize=d.resize if resize == "data" else resize,
                              limit=integer(cfg, "data.limit", 1, none=True) if limit == "data" else limit,
                              subset_seed=cfg.seed)


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
    root = Path(d.root)
    if sub and root.is_dir() and not (root / sub).is_dir():
        others = [k for k, v in named.items() if k != split and (root / str(v)).is_dir()]
        if others:
            have = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise ConfigError(f"data.{split}_split={sub}: {root} has no folder {sub} (it has {', '.join(have)}); "
                              f"set data.{split}_split to one of them")
    return sub


def normalize_from_cfg(cfg: DictConfig, model: torch.nn.Module | None = None):
    """(Normalize, transform spec): the checkpoint's statistics if it has them, else the config's."""
    meta = getattr(model, "meta", {}) or {}
    mean, std = meta.get("mean", list(cfg.data.mean)), meta.get("std", list(cfg.data.std))
    return zdata.Normalize(mean, std), zdata.transform_spec(int(cfg.data.size), cfg.data.resize, mean, std)


def miner(cfg: DictConfig, ctx: "Context", transform: dict, normalize, k: int, tap: str = "relu"):
    """``(model, dataset, layers) -> {name: TopK}`` through the mining cache, with the config's batching."""
    def fn(model, dataset, layers):
        return mine_cached(model, dataset, layers, k, cfg.paths.cache_dir, transform, normalize, tap=tap,
                           batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers), device=ctx.device,
                           progress=cfg.progress)[0]
    return fn


# --- the task wrapper --------------------------------------------------------------------------------------------


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
            out = Path(cfg.paths.output_dir)
            from .checks import check_config

            check_config(cfg)  # the config's own values, before the run directory, a model or any data
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"cannot write the run directory {out}: {e.strerror}; pass a writable "
                                  "hydra.run.dir=...") from e
            rank, device = distributed_setup(device_of(cfg.get("device", "auto")))
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
    target = cfg.task.get("_target_") if OmegaConf.is_dict(cfg.get("task")) else None
    if not target:
        raise ConfigError("the config names no task: set task._target_ (e.g. zf.edge.tasks.topk)")
    return get_method(target)(cfg)


#: Set once a script's own function has started: a Hydra error before that (a misspelt key, a missing config
#: group) is the user's, and ``hydra_main`` gives it zf's exit status 2 instead of Hydra's 1.
STARTED = False


def cli(fn, cfg: DictConfig):
    """``fn(cfg)`` for a script: a user error ends the program with its one-line message and exit status 2
    (``debug=true`` or ``HYDRA_FULL_ERROR=1`` show the traceback); so does a full disk (naming the file) and Ctrl-C
    (saying what was saved, exit status 130)."""
    import errno

    global STARTED
    STARTED = True
    debug = cfg.get("debug") or os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        return fn(cfg)
    except ZFError as e:
        if debug:
            raise
        _drop_refused_run(cfg)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if debug or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = Path(e.filename).parent if e.filename else cfg.paths.get("output_dir", "the run directory")
        print(f"error: no space left on the device writing {e.filename or where}: free some space in {where} "
              "(or write elsewhere: hydra.run.dir=..., paths.cache_dir=...) and rerun", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"interrupted: {_saved(cfg)}", file=sys.stderr)
        sys.exit(130)


def _drop_refused_run(cfg: DictConfig) -> None:
    """Remove the run directory of a refused run if it holds nothing but what Hydra wrote before the task started
    (``.hydra/``, ``*.log``), so that a mistake leaves no run behind; a directory with anything else is kept."""
    import shutil

    try:
        out = Path(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - no run directory (composed without Hydra's runtime)
        return
    if not out.is_dir():
        return
    files = [p for p in out.rglob("*") if p.is_file()]
    if all(p.suffix == ".log" or ".hydra" in p.relative_to(out).parts for p in files):
        shutil.rmtree(out, ignore_errors=True)


def _saved(cfg: DictConfig) -> str:
    """What an interrupted task left to resume from, in words."""
    target = str(cfg.get("task", {}).get("_target_", ""))
    out = cfg.paths.get("output_dir")
    if target.endswith(".train"):
        return (f"the last finished epoch is saved in {out}/checkpoints/last.pt; rerun with hydra.run.dir={out} "
                "to resume from it")
    return (f"the mining pass's progress is saved in the mining cache (paths.cache_dir={cfg.paths.cache_dir}); "
            "rerun the same command to resume it")


def hydra_main(main) -> None:
    """Call a ``@hydra.main`` function: Hydra's own errors before the task starts (``lyer=4``: no such key,
    ``model=foo``: no such config) exit with status 2, as zf's user errors do, instead of Hydra's 1."""
    global STARTED
    STARTED = False
    try:
        main()
    except SystemExit as e:
        if e.code == 1 and not STARTED:
            sys.exit(2)
        raise


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
