"""The model card's filter numbers for one or more training runs, as a markdown table (one row per run):

    python scripts/model_card_stats.py outputs/train/<run> [outputs/train/<run2> ...]
    python scripts/model_card_stats.py zf/weights/zfnet_imagenette.pt --init features_epoch000.pt

Each argument is a run directory (its ``checkpoints/last.pt``, or the newest ``features_epochNNN.pt`` when
``last.pt`` is gone) or a checkpoint file (a training checkpoint, an exported one, a state dict or a feature
snapshot).  Columns: the epoch and val top-1 the checkpoint records, conv1's high-frequency share
(``zf.experiments.filters.high_frequency_share``: energy above 1/4 cycle per pixel, 0.76 for a fresh default init,
0.19 for smooth Gabor filters) and each conv layer's mean cosine similarity to its initial weights
(``similarity_to_init``).  The initial weights are ``--init`` (a path, or a file name looked up beside the
checkpoint; default ``features_epoch000.pt``, which training writes before the first epoch); without them the
similarity columns say ``n/a``.

``--figure PATH`` also draws the conv1 filters of every argument side by side, as in the paper's Fig. 6 (each
filter contrast-stretched on its own), titled with the argument and its high-frequency share:

    git show 9a83b18:zf/weights/zfnet_imagenette.pt > first_model.pt      # the first shipped model
    python scripts/model_card_stats.py zf/weights/zfnet_imagenette_init.pt first_model.pt \
        zf/weights/zfnet_imagenette.pt --init zf/weights/zfnet_imagenette_init.pt --figure conv1.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib
import torch

from zf.net.checkpoints import read_checkpoint
from zf.errors import CheckpointError, ZFError
from zf.experiments.filters import filters_figure, high_frequency_share, similarity_to_init
from zf.views.results import save_figure


def conv_state(blob, source: str) -> dict:
    """The tensors of a loaded checkpoint: a snapshot's ``features``, a checkpoint's ``model``, or a state dict."""
    if isinstance(blob, dict):
        for key in ("features", "model", "state_dict"):
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict) or not any(isinstance(v, torch.Tensor) and v.dim() == 4 for v in blob.values()):
        raise CheckpointError(f"{source} holds no conv weights (4-D tensors); give a training run directory, a "
                              "checkpoint or a features_epochNNN.pt snapshot")
    return {k: v for k, v in blob.items() if isinstance(v, torch.Tensor)}


def resolve(arg: str) -> Path:
    p = Path(arg).expanduser()
    if p.is_dir():
        ck = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        if (ck / "last.pt").is_file():
            return ck / "last.pt"
        snaps = sorted(ck.glob("features_epoch*.pt"))
        if snaps and snaps[-1].name != "features_epoch000.pt":
            return snaps[-1]
        raise CheckpointError(f"{p} holds neither checkpoints/last.pt nor a features_epochNNN.pt snapshot after "
                              "epoch 0; give a training run directory or a checkpoint file")
    if not p.is_file():
        raise CheckpointError(f"{p} does not exist; give a training run directory or a checkpoint file")
    return p


def row(arg: str, init: str) -> dict:
    path = resolve(arg)
    blob = read_checkpoint(path, "checkpoint")
    state = conv_state(blob, str(path))
    ip = Path(init).expanduser()
    if not ip.is_file() and len(ip.parts) == 1:
        ip = path.parent / ip.name
    sims = similarity_to_init(state, conv_state(read_checkpoint(ip, "initial weights"), str(ip))) if ip.is_file() \
        else {}
    convs = [k[:-len(".weight")] for k, v in state.items() if k.endswith(".weight") and v.dim() == 4]
    hist = blob.get("history") if isinstance(blob, dict) else None
    val = next((h["val_top1"] for h in reversed(hist or []) if h.get("val_top1") is not None), None)
    return {"run": arg, "epoch": blob.get("epoch") if isinstance(blob, dict) else None, "val_top1": val,
            "conv1_hf_share": high_frequency_share(state[convs[0] + ".weight"]), "convs": convs, "sims": sims,
            "init": str(ip) if ip.is_file() else None, "conv1": state[convs[0] + ".weight"]}


def table(rows: list[dict]) -> str:
    names = list(dict.fromkeys(c for r in rows for c in r["convs"]))
    short = [n.rsplit(".", 1)[-1] for n in names]
    head = ["run", "epoch", "val top-1", "conv1 HF share"] + [f"{s} cos to init" for s in short]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['run']}`", "" if r["epoch"] is None else str(r["epoch"]),
                 "" if r["val_top1"] is None else f"{100 * r['val_top1']:.1f}%", f"{r['conv1_hf_share']:.3f}"]
        cells += [f"{r['sims'][n]:.3f}" if n in r["sims"] else "n/a" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_CHECKPOINT")
    ap.add_argument("--init", default="features_epoch000.pt",
                    help="the initial weights: a path, or a file name looked up beside each checkpoint")
    ap.add_argument("--figure", metavar="PATH", help="also draw every argument's conv1 filters side by side (PNG)")
    args = ap.parse_args(argv)
    try:
        rows = [row(a, args.init) for a in args.runs]
    except ZFError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(rows))
    if args.figure:
        matplotlib.use("Agg")
        panels = {f"{Path(r['run']).name} (HF {r['conv1_hf_share']:.2f})": r["conv1"].float() for r in rows}
        fig, _ = filters_figure(panels)
        print(f"figure: {save_figure(fig, args.figure)}")
    missing = [r["run"] for r in rows if r["init"] is None]
    if missing:
        print(f"\nno initial weights ({args.init}) for: {', '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
