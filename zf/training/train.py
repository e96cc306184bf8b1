"""Training with the paper's recipe (section 3 of arXiv:1311.2901), resumable and distributed.

    python scripts/train.py                         # the paper's recipe on Imagenette, quarter width
    python scripts/train.py experiment=default_model   # the shipped checkpoint's run
    torchrun --nproc_per_node=8 scripts/train.py data.root=/data/imagenet model.width=1.0

The loop: SGD with momentum (or AdamW), a learning-rate schedule, dropout in fc6/fc7 (in the model), random crops and
flips (``zf.data.BatchAugment``), and feature scale clipping after every update (``clip_feature_scale_``).
After every epoch a checkpoint holds the model, optimiser and scheduler state, the epoch, the metrics and the
resolved config; ``resume=True`` restarts a killed run from it.

Randomness is a function of ``(seed, epoch, step)`` only, so a resumed run redoes the interrupted epoch exactly and
ends with the weights an uninterrupted run would have, whatever ``num_workers``:

- each epoch gets a new ``DataLoader`` whose shuffling (``DistributedSampler``, seeded by ``(seed, epoch)``) and
  worker seeds (its ``generator``, seeded by ``(seed, epoch, rank)``) depend on nothing drawn before;
- the augmentation (``BatchAugment``) and dropout (every ``nn.Dropout`` of the model, while ``fit`` runs) of each step
  draw their numbers from a generator seeded by ``(seed, epoch, step)``, shared by all processes, for the whole
  global batch: process ``r`` keeps the rows of its own samples.  So 2 processes with global batch ``B`` draw for
  every sample what 1 process with batch ``B`` draws; they differ only by floating-point rounding of the summed
  gradients.  (Random transforms inside the data set, run by loader workers, are seeded per process and are not
  covered by that equivalence.)
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from zf.data import BatchAugment, Normalize, Tagged, TensorImages, add_skipped, collate_tagged, record_skipped
from zf.data import preload as decode
from zf.errors import CheckpointError, ConfigError
from zf.faults import pause_point
from zf.tracking import Tracker
from zf.views.plotting import filter_grid, training_curves


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


def clip_feature_scale_(model: nn.Module, radius: float = 0.1, layers: str = "all") -> int:
    """Feature scale clipping (section 3): every conv filter whose RMS exceeds ``radius`` is rescaled to RMS
    ``radius``.  Works in place on ``model``'s ``nn.Conv2d`` weights (each output channel is one filter);
    ``layers="conv1"`` clips only the first conv.  Returns the number of filters rescaled."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if layers == "conv1":
        convs = convs[:1]
    elif layers != "all":
        raise ValueError(f"clip_layers={layers!r}: use all or conv1")
    n = 0
    with torch.no_grad():
        for m in convs:
            w = m.weight
            rms = w.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            over = rms > radius
            n += int(over.sum())
            w.mul_(torch.where(over, radius / rms, torch.ones_like(rms)))
    return n


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on biases (they start at 0 in the paper and have no scale to control)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"optimizer {cfg.optimizer!r}: use sgd or adamw")


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Returns (scheduler, per_batch).  ``plateau`` steps on the validation loss once per epoch."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=cfg.plateau_patience), False
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                   steps_per_epoch=steps_per_epoch, pct_start=cfg.warmup_fraction), True
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch), True
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.step_epochs), gamma=0.1), False
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), False
    raise ValueError(f"schedule {cfg.schedule!r}: use plateau, onecycle, cosine, step or constant")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, normalize: Normalize, device: torch.device | str = "cpu",
             progress: bool = False) -> dict:
    """Mean loss, top-1 and top-5 accuracy of ``model`` over ``loader`` (batches of (uint8 images, labels, idx))."""
    model.eval()
    n = loss = top1 = top5 = 0.0
    tagged = isinstance(loader.dataset, Tagged)  # batches (batch, unreadable indices): record those
    for batch in tqdm(loader, desc="val", leave=False, disable=not progress, mininterval=5):
        if tagged:
            batch, bad = batch
            record_skipped(loader.dataset.dataset, bad)
        if batch is None:
            continue
        x, y = normalize(batch[0].to(device)), batch[1].to(device)
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        k = min(5, out.shape[1])
        pred = out.topk(k, dim=1).indices
        top1 += float((pred[:, 0] == y).sum())
        top5 += float((pred == y[:, None]).any(dim=1).sum())
        n += len(y)
    return {"loss": loss / max(n, 1), "top1": top1 / max(n, 1), "top5": top5 / max(n, 1), "n": int(n)}


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class GlobalBatchRandom:
    """The random numbers of one training step, drawn for the whole global batch from a CPU generator seeded by
    ``seed`` (the same on every process); ``rand(n, *shape)`` returns this process's ``n`` rows.

    ``DistributedSampler`` deals position ``j * world + rank`` of each global batch to process ``rank`` as its
    ``j``-th sample (1 process: every position in order), so the rows kept are ``rank, rank + world, ...``: each
    sample gets the same numbers whatever the number of processes.  Draws must come in the same order and shapes on
    every process, which they do (the same model and augmentation run on each)."""

    def __init__(self, seed: int, rank: int, world: int, local_batch: int, device=None):
        self.gen = torch.Generator().manual_seed(seed)
        self.rank, self.world, self.local_batch, self.device = rank, world, local_batch, device

    def rand(self, n: int, *shape: int) -> torch.Tensor:
        full = torch.rand((self.local_batch * self.world, *shape), generator=self.gen)
        return full[self.rank::self.world][:n].to(self.device)


class _StepDropout:
    """While active, every ``nn.Dropout`` of ``model`` in training mode draws its mask from ``self.random`` (a
    ``GlobalBatchRandom``) instead of the global generator; ``close()`` restores the modules."""

    def __init__(self, model: nn.Module):
        self.random: GlobalBatchRandom | None = None
        self.modules = [m for m in model.modules() if type(m) is nn.Dropout]
        for m in self.modules:
            m.forward = self._forward(m)

    def _forward(self, m: nn.Dropout):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if not m.training or m.p == 0 or self.random is None:
                return F.dropout(x, m.p, m.training, m.inplace)
            if m.p == 1:
                return x * 0
            keep = self.random.rand(x.shape[0], *x.shape[1:]) >= m.p
            return x * keep.to(x.dtype) * (1.0 / (1.0 - m.p))
        return forward

    def close(self) -> None:
        for m in self.modules:
            if "forward" in m.__dict__:
                del m.forward


def distributed_setup() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment; nccl on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


def save_atomic(obj: dict, path: Path) -> None:
    """Write ``obj`` to ``path`` so that a kill mid-write leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint (``torch.load(..., weights_only=True)``).  Raises ``CheckpointError`` naming the file
    when it is missing, truncated or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (or start without resume)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage, or pickled objects other than tensors and plain containers
        why = ("it holds objects other than tensors and plain containers" if "weights_only" in str(e)
               else f"truncated or not a file written by torch.save; torch.load raised {type(e).__name__}")
        raise CheckpointError(f"checkpoint {path} cannot be read ({why}): copy it again, or delete it to start "
                              "over") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def feature_state(model: nn.Module, half: bool = True) -> dict:
    """The conv layers' weights and biases only (``features.*``), optionally in float16: a small snapshot."""
    return {k: (v.half() if half and v.is_floating_point() else v).clone()
            for k, v in model.state_dict().items() if k.startswith("features.")}


def fit(model: nn.Module, train_set: Dataset, val_set: Dataset | None, out_dir: str | os.PathLike,
        cfg: TrainConfig, meta: dict | None = None, tracker: Tracker | None = None, resume: bool = True,
        config_to_save: dict | None = None, augment: nn.Module | None = None) -> list[dict]:
    """Train ``model`` on ``train_set`` (items ``(uint8 image, label, index)``), validating on ``val_set``.

    Writes ``out_dir/checkpoints/last.pt`` after every epoch and ``features_epochNNN.pt`` at ``snapshot_epochs`` and
    at the end.  With ``resume`` and an existing ``last.pt``, training continues after its epoch.
    ``meta`` (class names, normalisation, input size) is stored in every checkpoint.  ``augment`` (a
    ``zf.data.BatchAugment``) maps each uint8 batch to float pixels; its ``size`` is set at the epochs listed in
    ``cfg.sizes`` (progressive resizing).  Returns the metric history, one dict per epoch.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = distributed_setup()
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    meta = dict(meta or {})
    tracker = tracker or Tracker(enabled=False)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
    local_batch = cfg.batch_size // world

    model.to(device)
    normalize = Normalize(meta.get("mean", (0.485, 0.456, 0.406)), meta.get("std", (0.229, 0.224, 0.225))).to(device)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=False)

    def epoch_loader(epoch: int) -> DataLoader:
        # a new loader every epoch, its worker seeds drawn from a generator seeded by (seed, epoch, rank): nothing
        # depends on what ran before, so a resumed run sees the epoch an uninterrupted one sees (a persistent
        # loader would draw its seed from the global generator when first iterated, in whichever epoch that is).
        # Tagged: the indices of unreadable files come back with the batches, whichever process read them.
        return DataLoader(Tagged(train_set), batch_size=local_batch, sampler=sampler, num_workers=cfg.num_workers,
                          collate_fn=collate_tagged, drop_last=True,
                          generator=torch.Generator().manual_seed(_seed(cfg.seed, epoch, rank, 1)))

    val_loader = (DataLoader(Tagged(val_set), batch_size=max(local_batch, 64), shuffle=False,
                             num_workers=cfg.num_workers, collate_fn=collate_tagged)
                  if val_set is not None else None)
    steps = len(sampler) // local_batch
    if steps == 0:
        raise ValueError(f"{len(train_set)} training images give no full batch of {local_batch} per process")
    opt = make_optimizer(model, cfg)
    sched, per_batch = make_scheduler(opt, cfg, steps)
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    history: list[dict] = []
    start = 1
    if resume and last.is_file():
        state = load_checkpoint(last)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = list(state["history"])
        start = int(state["epoch"]) + 1
        if rank == 0:
            print(f"resuming from {last} after epoch {state['epoch']}")
    if start == 1 and rank == 0:
        # the initial weights (float32), so that how far training moved each layer can be measured later
        # (zf.experiments.filters.similarity_to_init); they also follow from the run's seed
        save_atomic({"features": feature_state(model, half=False), "arch": getattr(model, "arch", {}), "epoch": 0},
                    ckpt_dir / "features_epoch000.pt")
    sizes = {int(k): int(v) for k, v in (cfg.sizes or {}).items()}

    def size_at(epoch: int) -> int | None:
        past = [e for e in sizes if e <= epoch]
        return sizes[max(past)] if past else None

    epochs_bar = tqdm(range(start, cfg.epochs + 1), desc="epochs", initial=start - 1, total=cfg.epochs,
                      disable=rank != 0 or not cfg.progress)
    step_dropout = _StepDropout(model)  # dropout masks from each step's GlobalBatchRandom
    try:
        for epoch in epochs_bar:
            seed_everything(cfg.seed * 100003 + epoch * 1009 + rank)
            sampler.set_epoch(epoch)
            if augment is not None and size_at(epoch):
                augment.size = size_at(epoch)
            ddp.train()
            t0 = time.perf_counter()
            tot = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
            clipped = 0
            for step, (batch, bad) in enumerate(tqdm(epoch_loader(epoch), desc=f"epoch {epoch}", leave=False,
                                                     disable=rank != 0 or not cfg.progress, mininterval=10), 1):
                record_skipped(train_set, bad)
                pause_point(f"train:{epoch}:{step}")  # tests' fault injection (zf.faults; 1-based epoch, step)
                if batch is None:
                    continue
                x, y = batch[0].to(device, non_blocking=True), batch[1].to(device)
                # this step's random numbers: a function of (seed, epoch, step), the same on every process
                rng = GlobalBatchRandom(_seed(cfg.seed, epoch, step, 2), rank, world, local_batch, device)
                step_dropout.random = rng
                if isinstance(augment, BatchAugment):
                    x = augment(x, rand=rng.rand)
                elif augment is not None:
                    x = augment(x)
                x = normalize(x)
                out = ddp(x)
                loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if per_batch:
                    sched.step()
                if cfg.clip_radius is not None:
                    clipped += clip_feature_scale_(model, cfg.clip_radius, cfg.clip_layers)
                tot += torch.tensor([float(loss.detach()) * len(y), float((out.argmax(1) == y).sum()), len(y)],
                                    dtype=torch.float64)
            if world > 1:
                tot = tot.to(device)  # nccl reduces only GPU tensors
                dist.all_reduce(tot)
                tot = tot.cpu()
            seconds = time.perf_counter() - t0
            rec = {"epoch": epoch, "train_loss": float(tot[0] / tot[2]), "train_top1": float(tot[1] / tot[2]),
                   "lr": opt.param_groups[0]["lr"], "seconds": seconds, "images_per_s": float(tot[2]) / seconds,
                   "clipped_filters": clipped, "train_size": size_at(epoch)}
            if val_loader is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
                if rank == 0:
                    v = evaluate(model, val_loader, normalize, device)
                    rec.update(val_loss=v["loss"], val_top1=v["top1"], val_top5=v["top5"])
            if world > 1 and val_loader is not None:
                # share rank 0's validation result so every process steps a plateau scheduler the same way
                vl = torch.tensor([rec.get("val_loss", math.nan)], dtype=torch.float64, device=device)
                dist.broadcast(vl, 0)
                if not math.isnan(float(vl)):
                    rec["val_loss"] = float(vl)
            if not per_batch:
                if cfg.schedule == "plateau":
                    if "val_loss" in rec:
                        sched.step(rec["val_loss"])
                else:
                    sched.step()
            history.append(rec)
            if rank == 0:
                state = {"model": model.state_dict(), "arch": getattr(model, "arch", {}), "meta": meta,
                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
                         "history": history, "config": config_to_save or asdict(cfg)}
                # the snapshot first: once last.pt says epoch N, a resumed run never comes back to write N's snapshot
                if epoch in set(cfg.snapshot_epochs) or epoch == cfg.epochs:
                    save_atomic({"features": feature_state(model), "arch": getattr(model, "arch", {}), "epoch": epoch},
                                ckpt_dir / f"features_epoch{epoch:03d}.pt")
                save_atomic(state, last)
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}
                epochs_bar.write(str(shown))
                tracker.log({k: v for k, v in rec.items() if v is not None}, step=epoch)
                conv1 = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
                if conv1 is not None and tracker.active:
                    tracker.image("conv1_filters", filter_grid(conv1.weight), caption=f"epoch {epoch}", step=epoch)
            if world > 1:
                dist.barrier()
    finally:
        step_dropout.close()
    if world > 1:  # every process lists the unreadable files of every process
        gathered: list = [None] * world
        dist.all_gather_object(gathered, list(getattr(train_set, "skipped", [])))
        for names in gathered:
            add_skipped(train_set, names)
    return history


def export_checkpoint(last: str | os.PathLike, path: str | os.PathLike, half: bool = True) -> Path:
    """The shippable part of a training checkpoint: model weights (float16 by default), architecture, meta, epoch,
    history and config, without optimiser state."""
    state = load_checkpoint(last)
    out = {"model": {k: (v.half() if half and v.is_floating_point() else v) for k, v in state["model"].items()},
           "arch": state["arch"], "meta": state["meta"], "epoch": state["epoch"], "history": state["history"],
           "config": state["config"]}
    path = Path(path)
    save_atomic(out, path)
    return path



def fit_task(model: nn.Module, train_set, val_set, out_dir: str | os.PathLike, cfg: TrainConfig, size: int,
             meta: dict | None = None, tracker: Tracker | None = None, resume: bool = True, config: dict | None = None,
             export: str | os.PathLike | None = None, rank: int = 0) -> float:
    """A whole training run as ``scripts/train.py`` does it: decode the sets into memory (``cfg.preload``), augment
    batches to ``size`` (``zf.data.BatchAugment`` with ``cfg.augment``, ``crop_scale``, ``flip``), ``fit``, then
    write ``history.json``, ``curves.png``, the exported weights (``export``) and ``skipped.txt`` (unreadable
    images).  Returns the best val top-1 accuracy."""
    out_dir = Path(out_dir)
    bases = [d for d in (train_set, val_set) if d is not None]  # where unreadable files are listed
    if cfg.preload:
        train_set = TensorImages(*decode(train_set, progress=rank == 0 and cfg.progress))
        if val_set is not None:
            val_set = TensorImages(*decode(val_set, progress=rank == 0 and cfg.progress))
    history = fit(model, train_set, val_set, out_dir, cfg, meta=meta, tracker=tracker, resume=resume,
                  config_to_save=config, augment=BatchAugment(size, cfg.augment, cfg.crop_scale, cfg.flip))
    best = max((h.get("val_top1", 0.0) for h in history), default=0.0)
    if rank != 0:
        return best
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))

    fig, _ = training_curves(history)
    fig.savefig(out_dir / "curves.png", dpi=100)
    if tracker is not None:
        tracker.image("curves", fig)
    if export:
        print(f"exported {export_checkpoint(out_dir / 'checkpoints' / 'last.pt', export)}")
    skipped = [p for d in bases for p in getattr(d, "skipped", [])]
    if skipped:
        (out_dir / "skipped.txt").write_text("\n".join(skipped) + "\n")
        print(f"{len(skipped)} unreadable images skipped, listed in {out_dir / 'skipped.txt'}")
    print(f"best val top-1 {best:.4f}; run directory {out_dir}")
    return best
