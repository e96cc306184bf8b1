"""Mining and main-job cost against a plain inference pass, in one process on the same data and model.

    python benchmarks/bench_mining.py [--images N] [--repeats 2]

Prints images/s of (a) a plain pass (decode, normalise, forward to relu5, nothing kept), (b) mining all five layers
(zf.mining.mine), and the time of (c) the whole ``layer=4`` job (mining, projections of every unit's top 9, patches,
PNGs and figures), each as a ratio to (a).  Then the peak memory of mining N and 4N images, each in a fresh
subprocess, to show that memory does not grow with the data.  The runs alternate so machine noise hits both alike.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zf.data import ImageDataset, Normalize, collate_skip, default_data_root  # noqa: E402
from zf.mining.mine import mine  # noqa: E402
from zf.net.layers import resolve_layer  # noqa: E402
from zf.net.models import DEFAULT_CHECKPOINT, load_zfnet, zfnet  # noqa: E402


def get_model(checkpoint: str | None):
    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    if path.is_file():
        return load_zfnet(path), str(path)
    torch.manual_seed(0)
    return zfnet(num_classes=10, width=0.25).eval(), "random zfnet(width=0.25)"


@torch.no_grad()
def plain_pass(model, dataset, batch_size: int, workers: int) -> float:
    normalize = Normalize()
    last = resolve_layer(model, 5, "relu").index  # a bare forward through model.features up to relu5: no hooks
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_skip)
    t = time.perf_counter()
    for x, _, _ in loader:
        y = normalize(x)
        for m in model.features[:last + 1]:
            y = m(y)
    return time.perf_counter() - t


def mining_pass(model, dataset, batch_size: int, workers: int) -> float:
    t = time.perf_counter()
    mine(model, dataset, layers=[1, 2, 3, 4, 5], k=9, batch_size=batch_size, num_workers=workers, progress=False)
    return time.perf_counter() - t


def whole_job(model, dataset, batch_size: int, workers: int) -> float:
    from zf.data import ImageSource
    from zf.projection.api import resolve_target
    from zf.views.render import RenderOptions, render_layer

    t = time.perf_counter()
    tables = mine(model, dataset, layers=[1, 2, 3, 4, 5], k=9, batch_size=batch_size, num_workers=workers,
                  progress=False)
    table = tables["relu4"]
    units = table.units.tolist()
    with tempfile.TemporaryDirectory() as d:
        target = resolve_target(model, "relu4", "relu", dataset.size)
        render_layer(Path(d), model, ImageSource(dataset, Normalize()), table, target, units[:16],
                     RenderOptions(progress=False))
    return time.perf_counter() - t


def memory_child(n: int, batch_size: int, checkpoint: str | None) -> None:
    model, _ = get_model(checkpoint)
    ds = ImageDataset(default_data_root() / "val", limit=n)
    mine(model, ds, layers=[1, 2, 3, 4, 5], k=9, batch_size=batch_size, num_workers=0, progress=False)
    print(json.dumps({"n": n, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=0, help="images of the val split (0: all 3,925, the main job's data)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--checkpoint", default=None, help="zf checkpoint (default: the shipped one, else random)")
    ap.add_argument("--memory-images", type=int, default=400, help="N for the N vs 4N memory check (0: skip)")
    ap.add_argument("--_memory_child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory_child:
        return memory_child(args._memory_child, args.batch_size, args.checkpoint)

    model, name = get_model(args.checkpoint)
    ds = ImageDataset(default_data_root() / "val", limit=args.images or None)
    print(f"model: {name}; {len(ds)} images of {ds.files.root}; batch {args.batch_size}, {args.workers} workers, "
          f"{torch.get_num_threads()} threads")
    plain_pass(model, ds, args.batch_size, args.workers)  # warm up (page cache, allocator)
    times = {"plain": [], "mining": [], "job": []}
    for _ in range(args.repeats):
        times["plain"].append(plain_pass(model, ds, args.batch_size, args.workers))
        times["mining"].append(mining_pass(model, ds, args.batch_size, args.workers))
        times["job"].append(whole_job(model, ds, args.batch_size, args.workers))
    best = {k: min(v) for k, v in times.items()}
    n = len(ds)
    print(f"plain pass to relu5:      {best['plain']:7.2f} s  {n / best['plain']:6.1f} img/s")
    print(f"mining relu1-relu5:       {best['mining']:7.2f} s  {n / best['mining']:6.1f} img/s  "
          f"throughput ratio {best['plain'] / best['mining']:.3f} (goal >= 0.9)")
    print(f"whole layer=4 job:        {best['job']:7.2f} s  time ratio {best['job'] / best['plain']:.3f} (goal <= 1.5)")
    if args.memory_images:
        rss = []
        for m in (args.memory_images, 4 * args.memory_images):
            out = subprocess.run([sys.executable, __file__, "--_memory_child", str(m), "--batch-size",
                                  str(args.batch_size)] + (["--checkpoint", args.checkpoint] if args.checkpoint
                                                           else []), capture_output=True, text=True, check=True)
            rss.append(json.loads(out.stdout.strip().splitlines()[-1]))
        a, b = rss
        print(f"peak memory mining {a['n']} images: {a['max_rss_mb']:.0f} MB; {b['n']} images: "
              f"{b['max_rss_mb']:.0f} MB; ratio {b['max_rss_mb'] / a['max_rss_mb']:.3f} (goal within 1.10)")


if __name__ == "__main__":
    main()
