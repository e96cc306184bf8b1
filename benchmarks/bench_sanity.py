"""The cost of the sanity experiment (``zf.experiments.sanity.run``: trained, cascade and independent
randomisation, three methods, similarities, CSVs and figures) against one plain projection pass of the same rows
(``zf.views.visualize.unit_views``, deconvnet, as the main job projects them), both in this process.

    .venv/bin/python benchmarks/bench_sanity.py                         # shipped ZF net relu4, VGG-16 trunk conv5_3
    .venv/bin/python benchmarks/bench_sanity.py --model zfnet --layer 4
    .venv/bin/python benchmarks/bench_sanity.py --model vgg16 --layer conv5_3 --images 300 --modes cascade

Rows: ``--units`` units (seeded choice among those that fire) x their top ``--k`` over the first ``--images`` val
images (a seeded subset, as ``data.limit``), mined through the main job's cache (``outputs/cache``, layers 1-5 together
for the ZF net as the main job mines them; the mining is timed apart and not counted).  The VGG-16 trunk is ``<shared>/models/vgg16_imagenet_features.pth`` (``--vgg``).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from zf.mining.cache import mine_cached
from zf.data import ImageDataset, ImageSource, Normalize, default_data_root, transform_spec
from zf.experiments import sanity
from zf.net.layers import resolve_layer
from zf.net.models import load_zfnet, vgg16
from zf.views.visualize import unit_views

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def bench(name: str, model, layer: str, images: int, n_units: int, k: int, modes, methods, cache: Path,
          mine_layers=()) -> None:
    data = ImageDataset(default_data_root() / "val", size=224, limit=images, subset_seed=0)
    meta = getattr(model, "meta", {}) or {}
    mean, std = meta.get("mean", MEAN), meta.get("std", STD)
    norm = Normalize(mean, std)
    lay = resolve_layer(model, layer, "relu").name
    t0 = time.perf_counter()
    layers = [resolve_layer(model, m, "relu").name for m in mine_layers] + [lay]
    table = mine_cached(model, data, layers, k, cache, transform_spec(224, None, mean, std), norm,
                        progress=False)[0][lay]
    t_mine = time.perf_counter() - t0
    units = table.choose_units(n_units, 0)
    t0 = time.perf_counter()
    unit_views(model, ImageSource(data, norm), table, lay, units)  # the paper's deconvnet
    t_plain = time.perf_counter() - t0
    n_layers = len(sanity.weighted_layers(model, sanity.target_layer(model, lay, "conv").path, "conv"))
    passes = (1 + n_layers * len(modes)) * len(methods)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        sanity.run(model, data, table, lay, out, units=units, methods=methods, modes=modes, normalize=norm)
        t_sanity = time.perf_counter() - t0
    print(f"{name} {lay}: {len(units)} units x k={k} over {len(data)} images (mining {t_mine:.1f} s, not counted); "
          f"{n_layers} weighted layers, modes {list(modes)}, methods {list(methods)}: {passes} projection passes")
    print(f"  plain projection pass (deconvnet, unit_views): {t_plain:.2f} s")
    print(f"  sanity experiment: {t_sanity:.1f} s = {t_sanity / t_plain:.1f}x the plain pass "
          f"({t_sanity / t_plain / passes:.2f}x per projection pass)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["zfnet", "vgg16", "both"], default="both")
    ap.add_argument("--layer", default=None, help="default: relu4 for zfnet, conv5_3 for vgg16")
    ap.add_argument("--images", type=int, default=None, help="val images mined (default: all for zfnet, 300 vgg16)")
    ap.add_argument("--units", type=int, default=16)
    ap.add_argument("--k", type=int, default=9)
    ap.add_argument("--modes", nargs="+", default=list(sanity.MODES))
    ap.add_argument("--methods", nargs="+", default=list(sanity.METHODS))
    ap.add_argument("--vgg", default=str(default_data_root().parent.parent / "models" / "vgg16_imagenet_features.pth"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = ROOT / "outputs" / "cache"
    if args.model in ("zfnet", "both"):
        # layers 1-5 mined together, as the main job mines them: its cache serves this run
        bench("zfnet (shipped)", load_zfnet().eval(), args.layer or "4", args.images, args.units, args.k,
              args.modes, args.methods, cache, mine_layers=[1, 2, 3, 4, 5])
    if args.model in ("vgg16", "both"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the trunk file has no classifier: it stays random, unused here
            model = vgg16(weights=args.vgg).eval()
        bench("VGG-16 trunk", model, args.layer or "conv5_3", args.images or 300, args.units, args.k, args.modes,
              args.methods, cache)


if __name__ == "__main__":
    main()
