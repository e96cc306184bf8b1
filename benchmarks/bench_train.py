"""Training throughput: ``zf.training.train.fit`` against a bare PyTorch loop on the same model, data and optimiser.

    nice -n 10 .venv/bin/python benchmarks/bench_train.py [--images 256] [--epochs 2] [--rounds 3] [--device cpu]

Both train ``zfnet(10, width=0.25)`` on 128 px uint8 images held in memory (synthetic), batch 64, SGD with the
same parameter groups (``make_optimizer``), no augmentation.  ``fit`` adds what a real run pays for: the DataLoader
over a Dataset with the skip-unreadable collate, feature scale clipping after every update, metric accumulation, a
checkpoint (model + optimiser) every epoch and W&B offline logging (metrics and a conv1 filter image) through
``zf.tracking.Tracker``.  W&B's start-up (``wandb.init``, once per run) is timed separately, outside the loop.
The two are alternated ``--rounds`` times (order swapped each round) to cancel the drift of a shared machine; the
medians are reported, with the overhead ``t_fit / t_bare - 1``.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from zf.data import Normalize, TensorImages
from zf.net.models import zfnet
from zf.tracking import Tracker
from zf.training.checkpoints import save_atomic
from zf.training.train import TrainConfig, clip_feature_scale_, fit, make_optimizer


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare(images, labels, cfg, device, epochs):
    """The loop with nothing but the training step: sampled batch -> device -> normalise -> SGD step."""
    torch.manual_seed(0)
    model = zfnet(10, width=0.25).to(device).train()
    opt = make_optimizer(model, cfg)
    norm = Normalize().to(device)
    steps = len(images) // cfg.batch_size
    sync(device)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(images))
        for k in range(steps):
            idx = perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]
            x, y = norm(images[idx].to(device)), labels[idx].to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sync(device)
    return time.perf_counter() - t0, epochs * steps * cfg.batch_size


def with_fit(images, labels, cfg, device, epochs, root: Path, r: int):
    torch.manual_seed(0)
    model = zfnet(10, width=0.25)
    t0 = time.perf_counter()
    tracker = Tracker(project="zf-bench", dir=root / f"fit{r}", mode="offline")
    t_init = time.perf_counter() - t0
    active = tracker.active
    try:
        sync(device)
        t0 = time.perf_counter()
        fit(model, TensorImages(images, labels), None, root / f"fit{r}", cfg, tracker=tracker, resume=False)
        sync(device)
        seconds = time.perf_counter() - t0
    finally:
        tracker.finish()
    return seconds, epochs * (len(images) // cfg.batch_size) * cfg.batch_size, t_init, active


def parts(cfg, device, root: Path, repeat: int = 20):
    """Per-step clipping and per-epoch checkpoint costs, measured alone (seconds)."""
    model = zfnet(10, width=0.25).to(device)
    opt = make_optimizer(model, cfg)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        clip_feature_scale_(model, 0.1)
    sync(device)
    clip = (time.perf_counter() - t0) / repeat
    state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    t0 = time.perf_counter()
    for _ in range(3):
        save_atomic(state, root / "ckpt.pt")
    return clip, (time.perf_counter() - t0) / 3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2048, help="images per epoch (small epochs overweight per-epoch costs)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=0.01, schedule="constant", clip_radius=0.1,
                      snapshot_epochs=(), progress=False, threads=args.threads)
    print(f"zfnet(10, width=0.25), {args.images} images of {args.size} px, batch {args.batch}, {args.epochs} epochs "
          f"per measurement, {args.rounds} rounds, device {device}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if device.type == "cuda":  # fit moves the model itself; keep the data on the host for both
            torch.backends.cudnn.benchmark = True
        bare(images, labels, cfg, device, 1)  # warm-up (allocator, kernels)
        import tqdm.auto  # noqa: F401,E401  fit's first-call imports are not per-epoch costs

        import zf.views.plotting  # noqa: F401
        rates = {"bare": [], "fit": []}
        inits, active = [], False
        for r in range(args.rounds):
            order = ("bare", "fit") if r % 2 == 0 else ("fit", "bare")
            for name in order:
                if name == "bare":
                    s, n = bare(images, labels, cfg, device, args.epochs)
                else:
                    s, n, t_init, active = with_fit(images, labels, cfg, device, args.epochs, root, r)
                    inits.append(t_init)
                rates[name].append(n / s)
                print(f"  round {r + 1} {name:4s}: {n / s:8.1f} images/s ({s:.2f} s)", flush=True)
        clip, ckpt = parts(cfg, device, root)
    b, f = statistics.median(rates["bare"]), statistics.median(rates["fit"])
    step = args.batch / b  # seconds per bare step
    print(f"bare loop  {b:8.1f} images/s (median of {args.rounds})")
    print(f"zf fit     {f:8.1f} images/s (median of {args.rounds}; W&B offline {'on' if active else 'FAILED'}, "
          f"wandb.init {statistics.median(inits):.1f} s per run, outside the loop)")
    print(f"overhead   {100 * (b / f - 1):+.1f} %  (goal < 10 %)")
    print(f"parts: clipping {1e3 * clip:.2f} ms per step ({100 * clip / step:.1f} % of a bare step), "
          f"checkpoint {1e3 * ckpt:.0f} ms per epoch ({100 * ckpt / (step * (args.images // args.batch)):.1f} % of a bare epoch)")


if __name__ == "__main__":
    main()
