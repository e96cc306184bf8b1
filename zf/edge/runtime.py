"""The plumbing of the Hydra edge (with ``zf.edge.tasks`` and ``zf.edge.checks``, the modules that read a config):

- building library objects from a config: ``model_from_cfg``, ``dataset_from_cfg``, ``normalize_from_cfg``, ``miner``,
  ``topk_request_from_cfg`` (the main job's typed request; ``check_with_model`` checks it for every job of a sweep);
- the ``task`` decorator (in the style of lightning-hydra-template's ``task_wrapper``), which gives each task its run
  directory, device, process group and W&B tracker and closes the tracker however the task ends;
- ``dispatch``, which calls the task a config names (``task._target_``), and ``cli``, which turns a user error
  (``zf.errors.ZFError``) into one line on stderr and exit status 2;
- the Hydra callback that checks the run directory can be written before Hydra starts logging into it, and the
  structured configs the YAML files build on.
"""
from __future__ import annotations

import errno
import functools
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from hydra import compose
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict

from zf import data as zdata
from zf.download import resolve_data_root
from zf.edge.checks import (check_config, device_of, flag, integer, layers_from_cfg,  # noqa: F401
                            plain, split_folder, sweep_jobs, units_from_cfg)
from zf.errors import ConfigError, LayerError, OutputError, ZFError
from zf.jobs.topk import TopkRequest
from zf.mining.cache import mine_cached
from zf.net.layers import is_stack, resolve_layer
from zf.net.models import build_model
from zf.projection.rules import METHODS, ProjectionOptions
from zf.tracking import Tracker
from zf.training.config import TrainConfig
from zf.views.render import RenderOptions


def register_configs() -> None:
    """The structured configs (schemas) the YAML files build on: ``train/schema`` =
    ``zf.training.train.TrainConfig``."""
    ConfigStore.instance().store(group="train", name="schema", node=TrainConfig)


register_configs()


def distributed_setup(device: torch.device) -> tuple[int, torch.device]:
    """(rank, device) for every task under ``torchrun`` (``WORLD_SIZE`` > 1): the process group (nccl on GPUs, gloo
    on CPUs) and, on GPUs, ``torch.cuda.set_device(LOCAL_RANK)`` so that each process uses its own GPU.  Without
    torchrun: (``RANK`` or 0, ``device``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    return rank, device


def model_from_cfg(cfg: DictConfig, num_classes: int | None = None) -> torch.nn.Module:
    """The model ``cfg.model`` names; ``num_classes`` (from the data) wins over the config's."""
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
    d = data_root_from_cfg(cfg)
    root = Path(d.root)
    sub = split_folder(cfg, split)
    root = root / sub if sub and (root / sub).is_dir() else root
    data_size = integer(cfg, "data.size")
    if d.get("resize") is not None:
        integer(cfg, "data.resize")
    return zdata.ImageDataset(root, size=int(size or data_size), resize=d.resize if resize == "data" else resize,
                              limit=integer(cfg, "data.limit", 1, none=True) if limit == "data" else limit,
                              subset_seed=cfg.seed)


def data_root_from_cfg(cfg: DictConfig) -> DictConfig:
    """``cfg.data`` with ``root`` resolved (``zf.download.resolve_data_root``): a null ``data.root`` becomes
    ``ZF_DATA``, the copy at ``paths.data_dir`` or the Imagenette release in zf's user cache (downloaded on first
    use); ``data.download=true`` fetches it into a missing ``data.root``.  The resolved folder is written back into
    the config, so it is resolved once and recorded."""
    d = cfg.data
    if d.get("root") is None or d.get("download"):
        root = resolve_data_root(d.get("root"), download=bool(d.get("download", False)), url=d.get("url"),
                                 md5=d.get("md5"), shared=cfg.get("paths", {}).get("data_dir"),
                                 progress=bool(cfg.get("progress", True)))
        with open_dict(d):
            d.root = str(root)
            if "download" in d:
                d.download = False
    return d


def mine_layers_from_cfg(cfg: DictConfig, model: torch.nn.Module) -> list:
    """The layers mined beside the requested ones (``mine_layers``), so that a later ``layer=`` reads the cache.

    ``default`` (or null): the paper's conv1..conv5 (the integers 1..5 that the model has) for a ``features`` stack
    (zfnet, AlexNet, VGG), and none for any other graph, whose run then mines just the requested layers: a ResNet
    has no layer ``1``, and which of its hundreds of modules to mine in advance is the user's choice.  A list is
    checked here, and a layer it names that the model lacks is an error naming ``mine_layers``."""
    value = cfg.get("mine_layers", "default")
    tap = cfg.get("tap", "relu")
    if value is None or (isinstance(value, str) and value == "default"):
        if not is_stack(model):
            return []
        found = []
        for i in range(1, 6):
            try:
                resolve_layer(model, i, tap)
            except (LayerError, KeyError, ValueError):
                continue
            found.append(i)
        return found
    layers = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
    for layer in layers:
        try:
            resolve_layer(model, layer, tap)
        except LayerError as e:
            raise LayerError(f"mine_layers={layers}: {e} (mine_layers=default mines conv1-5 of a features stack "
                             "and nothing extra for other models; mine_layers=[] mines only the requested layers)"
                             ) from None
    return layers


def topk_request_from_cfg(cfg: DictConfig, model: torch.nn.Module) -> TopkRequest:
    """The main job's ``TopkRequest`` (``configs/run.yaml``), its values checked; the layers and units are checked
    against the model by its ``check``.  ``compare_methods=true`` adds the other two methods after ``method``."""
    methods = [cfg.method] + ([m for m in METHODS if m != cfg.method] if flag(cfg, "compare_methods") else [])
    projection = ProjectionOptions(seed_mode=cfg.seed_mode, norm=cfg.norm, crop=str(cfg.get("crop", "auto")))
    render = RenderOptions(methods, projection, cfg.display, int(cfg.dpi), flag(cfg, "unit_figures", True),
                           flag(cfg, "progress", True))
    return TopkRequest(layers_from_cfg(cfg), units_from_cfg(cfg), int(cfg.overview_units), int(cfg.k), cfg.tap,
                       render, mine_layers_from_cfg(cfg, model), int(cfg.seed), int(cfg.batch_size),
                       int(cfg.num_workers), flag(cfg, "gallery", True),
                       float(cfg.get("image_dependence_warn", 0.95)))


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


def check_with_model(cfg: DictConfig, models: dict) -> None:
    """``check_config`` and, for the main job, its layers and units against the model (built once per model
    config into ``models``)."""
    check_config(cfg)
    if str(cfg.task.get("_target_")) != "zf.edge.tasks.topk" or cfg.get("list_layers"):
        return
    key = OmegaConf.to_yaml(cfg.model) + str(cfg.seed)
    if key not in models:
        models[key] = model_from_cfg(cfg).eval()
    topk_request_from_cfg(cfg, models[key]).check(models[key], int(cfg.data.size))


class CheckSweep(Callback):
    """Before the first job of a sweep runs, check every job's config (``check_with_model``): ``-m layer=4,99``
    fails at once, naming job 1 and its overrides, instead of after job 0 has finished."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
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
