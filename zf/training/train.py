"""Training with the paper's recipe (section 3 of arXiv:1311.2901), resumable and distributed.

    python scripts/train.py                         # the paper's recipe on Imagenette, quarter width
    python scripts/train.py experiment=default_model   # the shipped checkpoint's run
    torchrun --nproc_per_node=8 scripts/train.py data.root=/data/imagenet model.width=1.0

The loop: SGD with momentum (or AdamW), a learning-rate schedule, dropout in fc6/fc7 (in the model), random crops and
flips (``zf.data.BatchAugment``), and feature scale clipping after every update (``clip_feature_scale_``).
After every epoch a checkpoint holds the model, optimiser and scheduler state, the epoch, the metrics and the
resolved config; ``resume=True`` restarts a killed run from it.  The knobs and their checks are
``zf.training.config``; checkpoint files ``zf.training.checkpoints``; the seeded draws ``zf.training.randomness``.

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
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from zf.data import BatchAugment, Normalize, Tagged, TensorImages, add_skipped, collate_tagged, record_skipped
from zf.data import preload as decode
from zf.faults import pause_point
from zf.tracking import Tracker
from zf.training.checkpoints import export_checkpoint, feature_state, load_checkpoint, save_atomic
from zf.training.config import TrainConfig
from zf.training.randomness import GlobalBatchRandom, StepDropout, mix_seed, seed_everything
from zf.views.plotting import filter_grid, training_curves


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
    run = _Run(model, train_set, val_set, Path(out_dir), cfg, dict(meta or {}), augment)
    tracker = tracker or Tracker(enabled=False)
    history, start = run.resume(resume)
    bar = tqdm(range(start, cfg.epochs + 1), desc="epochs", initial=start - 1, total=cfg.epochs,
               disable=run.rank != 0 or not cfg.progress)
    step_dropout = StepDropout(model)  # dropout masks from each step's GlobalBatchRandom
    try:
        for epoch in bar:
            seed_everything(cfg.seed * 100003 + epoch * 1009 + run.rank)
            run.sampler.set_epoch(epoch)
            if augment is not None and run.size_at(epoch):
                augment.size = run.size_at(epoch)
            t0 = time.perf_counter()
            tot, clipped = run.train_epoch(epoch, step_dropout)
            rec = run.record(epoch, tot, clipped, time.perf_counter() - t0)
            run.validate(epoch, rec)
            run.step_schedule(rec)
            history.append(rec)
            if run.rank == 0:
                run.save_epoch(epoch, history, config_to_save)
                _log_epoch(bar, tracker, model, rec, epoch)
            if run.world > 1:
                dist.barrier()
    finally:
        step_dropout.close()
    run.share_skipped()
    return history


class _Run:
    """One ``fit``: the processes, loaders, optimiser and schedule of a training run, and its steps."""

    def __init__(self, model, train_set, val_set, out_dir: Path, cfg: TrainConfig, meta: dict, augment):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rank, self.world, self.device = distributed_setup()
        self.model, self.train_set, self.cfg, self.meta, self.augment = model, train_set, cfg, meta, augment
        self.ckpt_dir = out_dir / "checkpoints"
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {self.world} processes")
        self.local_batch = cfg.batch_size // self.world
        model.to(self.device)
        self.normalize = Normalize(meta.get("mean", (0.485, 0.456, 0.406)),
                                   meta.get("std", (0.229, 0.224, 0.225))).to(self.device)
        self.sampler = DistributedSampler(train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=False)
        self.val_loader = (DataLoader(Tagged(val_set), batch_size=max(self.local_batch, 64), shuffle=False,
                                      num_workers=cfg.num_workers, collate_fn=collate_tagged)
                           if val_set is not None else None)
        steps = len(self.sampler) // self.local_batch
        if steps == 0:
            raise ValueError(f"{len(train_set)} training images give no full batch of {self.local_batch} per "
                             "process")
        self.opt = make_optimizer(model, cfg)
        self.sched, self.per_batch = make_scheduler(self.opt, cfg, steps)
        self.ddp = nn.parallel.DistributedDataParallel(model) if self.world > 1 else model
        self.sizes = {int(k): int(v) for k, v in (cfg.sizes or {}).items()}

    def size_at(self, epoch: int) -> int | None:
        """The input size at ``epoch`` (progressive resizing), or ``None``."""
        past = [e for e in self.sizes if e <= epoch]
        return self.sizes[max(past)] if past else None

    def loader(self, epoch: int) -> DataLoader:
        # a new loader every epoch, its worker seeds drawn from a generator seeded by (seed, epoch, rank): nothing
        # depends on what ran before, so a resumed run sees the epoch an uninterrupted one sees (a persistent
        # loader would draw its seed from the global generator when first iterated, in whichever epoch that is).
        # Tagged: the indices of unreadable files come back with the batches, whichever process read them.
        return DataLoader(Tagged(self.train_set), batch_size=self.local_batch, sampler=self.sampler,
                          num_workers=self.cfg.num_workers, collate_fn=collate_tagged, drop_last=True,
                          generator=torch.Generator().manual_seed(mix_seed(self.cfg.seed, epoch, self.rank, 1)))

    def resume(self, resume: bool) -> tuple[list[dict], int]:
        """(history, first epoch): from ``last.pt`` with ``resume``, else a new run (its initial weights saved)."""
        last, history, start = self.ckpt_dir / "last.pt", [], 1
        if resume and last.is_file():
            state = load_checkpoint(last)
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            history, start = list(state["history"]), int(state["epoch"]) + 1
            if self.rank == 0:
                print(f"resuming from {last} after epoch {state['epoch']}")
        if start == 1 and self.rank == 0:
            # the initial weights (float32), so that how far training moved each layer can be measured later
            # (zf.experiments.filters.similarity_to_init); they also follow from the run's seed
            save_atomic({"features": feature_state(self.model, half=False), "arch": getattr(self.model, "arch", {}),
                         "epoch": 0}, self.ckpt_dir / "features_epoch000.pt")
        return history, start

    def train_epoch(self, epoch: int, step_dropout: "StepDropout") -> tuple[torch.Tensor, int]:
        """One pass over the training shard: (loss sum, correct, count) over every process, filters clipped."""
        cfg, model = self.cfg, self.model
        self.ddp.train()
        tot = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        clipped = 0
        for step, (batch, bad) in enumerate(tqdm(self.loader(epoch), desc=f"epoch {epoch}", leave=False,
                                                 disable=self.rank != 0 or not cfg.progress, mininterval=10), 1):
            record_skipped(self.train_set, bad)
            pause_point(f"train:{epoch}:{step}")  # tests' fault injection (zf.faults; 1-based epoch, step)
            if batch is None:
                continue
            x, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device)
            # this step's random numbers: a function of (seed, epoch, step), the same on every process
            rng = GlobalBatchRandom(mix_seed(cfg.seed, epoch, step, 2), self.rank, self.world, self.local_batch,
                                    self.device)
            step_dropout.random = rng
            if isinstance(self.augment, BatchAugment):
                x = self.augment(x, rand=rng.rand)
            elif self.augment is not None:
                x = self.augment(x)
            out = self.ddp(self.normalize(x))
            loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.per_batch:
                self.sched.step()
            if cfg.clip_radius is not None:
                clipped += clip_feature_scale_(model, cfg.clip_radius, cfg.clip_layers)
            tot += torch.tensor([float(loss.detach()) * len(y), float((out.argmax(1) == y).sum()), len(y)],
                                dtype=torch.float64)
        if self.world > 1:
            tot = tot.to(self.device)  # nccl reduces only GPU tensors
            dist.all_reduce(tot)
            tot = tot.cpu()
        return tot, clipped

    def record(self, epoch: int, tot: torch.Tensor, clipped: int, seconds: float) -> dict:
        return {"epoch": epoch, "train_loss": float(tot[0] / tot[2]), "train_top1": float(tot[1] / tot[2]),
                "lr": self.opt.param_groups[0]["lr"], "seconds": seconds, "images_per_s": float(tot[2]) / seconds,
                "clipped_filters": clipped, "train_size": self.size_at(epoch)}

    def validate(self, epoch: int, rec: dict) -> None:
        """Rank 0 validates at ``val_every`` and the last epoch; every process gets its loss (for the plateau)."""
        if self.val_loader is None:
            return
        if (epoch % self.cfg.val_every == 0 or epoch == self.cfg.epochs) and self.rank == 0:
            v = evaluate(self.model, self.val_loader, self.normalize, self.device)
            rec.update(val_loss=v["loss"], val_top1=v["top1"], val_top5=v["top5"])
        if self.world > 1:
            # share rank 0's validation result so every process steps a plateau scheduler the same way
            vl = torch.tensor([rec.get("val_loss", math.nan)], dtype=torch.float64, device=self.device)
            dist.broadcast(vl, 0)
            if not math.isnan(float(vl)):
                rec["val_loss"] = float(vl)

    def step_schedule(self, rec: dict) -> None:
        """The per-epoch schedules (a plateau steps on the validation loss, when there is one)."""
        if self.per_batch:
            return
        if self.cfg.schedule == "plateau":
            if "val_loss" in rec:
                self.sched.step(rec["val_loss"])
        else:
            self.sched.step()

    def save_epoch(self, epoch: int, history: list[dict], config_to_save: dict | None) -> None:
        """``last.pt`` and, at ``snapshot_epochs`` and the end, the epoch's feature snapshot."""
        model, cfg = self.model, self.cfg
        state = {"model": model.state_dict(), "arch": getattr(model, "arch", {}), "meta": self.meta,
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "epoch": epoch,
                 "history": history, "config": config_to_save or asdict(cfg)}
        # the snapshot first: once last.pt says epoch N, a resumed run never comes back to write N's snapshot
        if epoch in set(cfg.snapshot_epochs) or epoch == cfg.epochs:
            save_atomic({"features": feature_state(model), "arch": getattr(model, "arch", {}), "epoch": epoch},
                        self.ckpt_dir / f"features_epoch{epoch:03d}.pt")
        save_atomic(state, self.ckpt_dir / "last.pt")

    def share_skipped(self) -> None:
        if self.world > 1:  # every process lists the unreadable files of every process
            gathered: list = [None] * self.world
            dist.all_gather_object(gathered, list(getattr(self.train_set, "skipped", [])))
            for names in gathered:
                add_skipped(self.train_set, names)


def _log_epoch(bar, tracker: Tracker, model: nn.Module, rec: dict, epoch: int) -> None:
    """The epoch's metrics on the console and in W&B (with the first conv layer's filters)."""
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}
    bar.write(str(shown))
    tracker.log({k: v for k, v in rec.items() if v is not None}, step=epoch)
    conv1 = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv1 is not None and tracker.active:
        tracker.image("conv1_filters", filter_grid(conv1.weight), caption=f"epoch {epoch}", step=epoch)


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
