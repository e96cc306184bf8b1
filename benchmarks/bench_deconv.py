"""Time zf.projection.api.project against captum's NeuronDeconvolution on the same rows.

Rows: for every channel of the layer, the 9 first validation images (sorted listing) at one position, the argmax of
the channel's mean map over the 9 images; 9 x C rows.  captum is called once per channel (9 rows per call).

    .venv/bin/python benchmarks/bench_deconv.py --layer 4 --width 0.25 --threads 2
    .venv/bin/python benchmarks/bench_deconv.py --graph resnet18 --layer layer2             # 9 x 128 rows
    .venv/bin/python benchmarks/bench_deconv.py --graph resnet50 --layer layer3 --units 64  # 9 x 64 rows

``--graph`` runs a torchvision network with random (seeded) weights through zf.projection.graph (autograd with the
deconvnet rule, receptive-field crops where they pay); the results are checked equal to captum's.
Images: ``--images``, default ``<data root>/val`` (env ``ZF_DATA``, see ``zf.data.default_data_root``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zf.data import default_data_root
from zf.net.layers import resolve_layer
from zf.net.models import load_zfnet, zfnet
from zf.projection.api import activations, project, project_windows

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_images(root: Path, n: int = 9, size: int = 224) -> torch.Tensor:
    """The first n images of a sorted listing of root, centre-cropped to size: (n, 3, size, size), normalised."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:n]
    out = []
    for f in files:
        im = Image.open(f).convert("RGB")
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        w, h = im.size
        im = im.crop(((w - size) // 2, (h - size) // 2, (w - size) // 2 + size, (h - size) // 2 + size))
        a = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((a - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="4")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--checkpoint", default=None, help="zf checkpoint (default: random zfnet(num_classes=10))")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--images", default=None, help="folder of images (default: <data root>/val)")
    ap.add_argument("--graph", default=None, choices=["resnet18", "resnet50"],
                    help="a torchvision network (random weights) through zf.projection.graph instead of zfnet")
    ap.add_argument("--units", type=int, default=None, help="first N channels only (default: all)")
    ap.add_argument("--chunk", type=int, default=None, help="rows per reverse batch (zf.projection.graph)")
    ap.add_argument("--method", default="deconvnet", choices=["deconvnet", "guided"])
    ap.add_argument("--norm", default="gradient", choices=["gradient", "identity"],
                    help="LRN in the reverse path; captum back-propagates through it, so 'gradient' gives equal "
                         "results (zf's default, 'identity', skips it)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.graph:
        import torchvision

        model = getattr(torchvision.models, args.graph)()
        for m in model.modules():
            if hasattr(m, "inplace"):
                m.inplace = False  # captum's ReLU hooks want out-of-place ReLUs (zf does not care)
    else:
        model = load_zfnet(args.checkpoint) if args.checkpoint else zfnet(num_classes=10, width=args.width)
    model.eval()
    layer = int(args.layer) if args.layer.isdigit() else args.layer
    root = Path(args.images) if args.images else default_data_root() / "val"
    if not root.is_dir():
        raise SystemExit(f"{root}: no such folder of images; pass --images or set ZF_DATA")
    images = load_images(root)
    n = len(images)
    acts = activations(model, images, layer)
    if args.units:
        acts = acts[:, :args.units]
    c, h, w = acts.shape[1:]
    pos = acts.mean(0).flatten(1).argmax(1)  # (C,)
    ys, xs = pos // w, pos % w
    rows = torch.stack([torch.arange(n).repeat(c), torch.arange(c).repeat_interleave(n),
                        ys.repeat_interleave(n), xs.repeat_interleave(n)], 1)  # (n*C, 4), channel-major
    what = args.graph or f"zfnet width {args.width}"
    print(f"{what}, layer {args.layer} ({resolve_layer(model, layer).name}): {c} channels x {n} "
          f"images = {len(rows)} rows, {torch.get_num_threads()} threads, method {args.method}, norm {args.norm}")
    if args.graph:
        return bench_graph(model, images, rows, layer, args, n, c, ys, xs)

    project(model, images, rows[:n], layer, method=args.method, seed_mode="one", norm=args.norm)  # warm up
    t0 = time.perf_counter()
    project_windows(model, images, rows, layer, method=args.method, seed_mode="one", norm=args.norm)
    t_win = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = project(model, images, rows, layer, method=args.method, seed_mode="one", norm=args.norm)
    t_ours = time.perf_counter() - t0

    ref = torch.empty_like(ours)
    t_ref = _captum_loop(model, resolve_layer(model, layer).module, images, args.method, n, c, ys, xs, ref)

    diff = (ours - ref).abs().max().item() / ref.abs().max().item()
    print(f"captum loop: {t_ref:.2f} s\n"
          f"zf.projection.api.project (full (R, 3, H, W) canvases): {t_ours:.2f} s   speed-up {t_ref / t_ours:.1f}x\n"
          f"zf.projection.api.project_windows (receptive-field windows, what the main job uses): {t_win:.2f} s   "
          f"speed-up {t_ref / t_win:.1f}x\n"
          f"max |diff| / max |ref| = {diff:.2e}")


def _captum_loop(model, module, images, method, n, c, ys, xs, out):
    from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop

    attr = (NeuronDeconvolution if method == "deconvnet" else NeuronGuidedBackprop)(model, module)
    x = images.clone().requires_grad_(True)
    attr.attribute(x, neuron_selector=(0, int(ys[0]), int(xs[0])))  # warm up
    t0 = time.perf_counter()
    for ch in range(c):
        out[ch * n:(ch + 1) * n] = attr.attribute(x, neuron_selector=(ch, int(ys[ch]), int(xs[ch]))).detach()
    return time.perf_counter() - t0


def bench_graph(model, images, rows, layer, args, n, c, ys, xs) -> None:
    """zf.projection.api.project (dispatching to zf.projection.graph) against captum's per-unit loop, in one process."""
    from zf.net.receptive import graph_receptive_fields

    path = resolve_layer(model, layer).path
    rf = graph_receptive_fields(model, tuple(images.shape[2:]), [path])[path]  # measured once per model, cached
    from zf.projection.graph import _crops

    (ay, _), (ax, _) = _crops(rf, rows, *images.shape[2:])
    crops = len(torch.unique(torch.stack([rows[:, 0], ay, ax], 1), dim=0))
    print(f"receptive field of {path}: {rf.size_hw} px, stride {rf.stride_hw}; {len(rows)} rows on {crops} distinct "
          "crops (used where the field is under half the image)")
    kw = dict(method=args.method, seed_mode="one", batch_size=args.chunk)
    project(model, images, rows[:2], layer, **kw)  # warm up
    t0 = time.perf_counter()
    ours = project(model, images, rows, layer, **kw)
    t_ours = time.perf_counter() - t0
    ref = torch.empty_like(ours)
    t_ref = _captum_loop(model, resolve_layer(model, layer).module, images, args.method, n, c, ys, xs, ref)
    diff = (ours - ref).abs().max().item() / ref.abs().max().item()
    print(f"captum loop ({c} calls of {n} rows): {t_ref:.2f} s\n"
          f"zf.projection.api.project -> zf.projection.graph: {t_ours:.2f} s   speed-up {t_ref / t_ours:.1f}x\n"
          f"max |diff| / max |ref| = {diff:.2e}")


if __name__ == "__main__":
    main()
