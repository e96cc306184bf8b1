"""``list_layers`` and a cache-hit main job on timm's ``tf_efficientnet_lite0`` and torchvision's ResNet-50 (random
weights), on this checkout and on an older commit (default: the commit before issue 20's work, where receptive
fields were measured for every module on the full-width copy and the lite0 could not be linearised).

    python benchmarks/bench_archs.py [--base f6ef9df] [--images 8] [--size 224]

Each code version runs in its own subprocess (two versions of ``zf`` cannot share one process), with the other's
outputs and caches apart, on the same images and models; the cache-hit job is ``zf.jobs.topk.topk_job`` on one layer,
one unit, k=2, after a first run of the same job filled the mining cache.  Prints the times and the ratios
old / new (a version that fails prints its error instead of a time).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from zf.data import default_data_root  # noqa: E402

DATA = default_data_root()  # both versions read the same images

CASES = {"tf_efficientnet_lite0": ("timm", "blocks.3"), "resnet50": ("torchvision", "layer2")}

DRIVER = r'''
import json, sys, time, tempfile, traceback, warnings
warnings.simplefilter("ignore")
import torch
from zf.data import ImageDataset, Normalize, default_data_root
try:  # the layout of issue 18 and later
    from zf.jobs.topk import topk_job
    from zf.net.listing import list_layers
except ImportError:  # an older commit: every module directly under zf/
    from zf.graph import list_layers
    from zf.job import topk_job
arch, family, layer, n, size, work = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.manual_seed(0)
if family == "timm":
    import timm
    model = timm.create_model(arch, pretrained=False).eval()
else:
    import torchvision
    model = getattr(torchvision.models, arch)(weights=None).eval()
out = {}
def timed(key, fn):
    t = time.perf_counter()
    try:
        fn()
        out[key] = time.perf_counter() - t
    except Exception as e:
        out[key] = f"{type(e).__name__}: {str(e)[:120]} (after {time.perf_counter() - t:.1f} s)"
timed("list_layers", lambda: list_layers(model, size))
ds = ImageDataset(default_data_root() / "val", size=size, limit=n, subset_seed=0)
norm = Normalize()
def job(tag):
    import pathlib
    pathlib.Path(f"{work}/{tag}").mkdir(parents=True, exist_ok=True)
    try:  # typed request values (issue 18)
        from zf.data import ImageSource
        from zf.jobs.topk import TopkRequest
        from zf.views.render import RenderOptions
    except ImportError:
        topk_job(model, ds, norm, {"size": size}, [layer], f"{work}/{tag}", f"{work}/cache", units=[0], k=2,
                 batch_size=8, num_workers=0, gallery=False, unit_figures=False, progress=False)
        return
    request = TopkRequest([layer], [0], k=2, batch_size=8, num_workers=0, gallery=False,
                          render=RenderOptions(unit_figures=False, progress=False))
    topk_job(model, ImageSource(ds, norm, {"size": size}), request, f"{work}/{tag}", f"{work}/cache")
ok = True
try:
    job("fill")
except Exception as e:
    ok = False
    out["cache_hit_job"] = f"{type(e).__name__}: {str(e)[:120]}"
if ok:
    # a fresh model object with the same weights, as a new run has: no in-memory receptive-field cache
    fresh = timm.create_model(arch, pretrained=False) if family == "timm" else getattr(torchvision.models, arch)()
    fresh.load_state_dict(model.state_dict())
    model = fresh.eval()
    timed("cache_hit_job", lambda: job("hit"))
print("RESULT " + json.dumps(out))
'''


def run(pythonpath: Path, arch: str, images: int, size: int) -> dict:
    family, layer = CASES[arch]
    with tempfile.TemporaryDirectory() as work:
        p = subprocess.run([sys.executable, "-c", DRIVER, arch, family, layer, str(images), str(size), work],
                           env={"PYTHONPATH": str(pythonpath), "MPLBACKEND": "Agg", "WANDB_SILENT": "true",
                                "PATH": "/usr/bin:/bin", "ZF_DATA": str(DATA)},
                           capture_output=True, text=True, cwd=work)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        return {"error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
    return json.loads(line[0][7:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="f6ef9df", help="the older commit to compare with")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--archs", nargs="*", default=list(CASES))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as old:
        subprocess.run(f"git -C {ROOT} archive {args.base} zf | tar -x -C {old}", shell=True, check=True)
        for arch in args.archs:
            res = {}
            for tag, path in (("before", Path(old)), ("after", ROOT)):
                t = time.perf_counter()
                res[tag] = run(path, arch, args.images, args.size)
                print(f"{arch} {tag} ({args.base if tag == 'before' else 'this checkout'}): {res[tag]} "
                      f"[{time.perf_counter() - t:.0f} s in all]", flush=True)
            for key in ("list_layers", "cache_hit_job"):
                b, a = res["before"].get(key), res["after"].get(key)
                if isinstance(b, float) and isinstance(a, float):
                    print(f"  {arch} {key}: {b:.1f} s -> {a:.1f} s, {b / a:.1f}x faster")
                else:
                    print(f"  {arch} {key}: before {b!r}, after {a!r}")


if __name__ == "__main__":
    main()
