"""Architecture ablations (paper Table 3), collected from a training sweep.

    python scripts/train.py -m experiment=ablation                       # 9 reduced-budget runs (joblib, 2 at once)
    python scripts/run.py experiment=ablation_table                       # this collector: CSV + Markdown

Each sweep job is one ``configs/ablation/<name>.yaml`` variant of the ZF model; its directory holds Hydra's
``.hydra/config.yaml`` (``ablation.name``, ``model.arch``) and ``history.json`` (or, for an unfinished job,
``checkpoints/last.pt`` with the history so far).  Errors are 100 - accuracy, in %:

- train top-1: the last epoch's running training accuracy (augmented crops, dropout on, averaged over the epoch as
  the weights change).  The paper does not say how its train error was measured; ours overstates the error of the
  final weights on clean training images.
- val top-1 / top-5: the last validated epoch, on the whole Imagenette val split (10 classes, so top-5 is easy).

The paper removes layers from its AlexNet replication and resizes layers of the ZF model; here every change is
applied to the (quarter-width) ZF model, and each row is set beside the paper's row for the same change.
Compare differences to the baseline row, not absolute errors (ten classes, a few epochs).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from zf.net.models import count_parameters, zfnet
from zf.views.results import save_figure, write_csv

#: Table 3 of the paper: change -> (train top-1, val top-1, val top-5) error %.
PAPER_TABLE3 = {
    "AlexNet replication": (35.1, 40.5, 18.1),
    "AlexNet - layers 3,4": (41.8, 45.4, 22.1),
    "AlexNet - layer 7": (27.4, 40.0, 18.4),
    "AlexNet - layers 6,7": (27.4, 44.8, 22.4),
    "AlexNet - layers 3,4,6,7": (71.1, 71.3, 50.1),
    "AlexNet, fc6/fc7 2048": (40.3, 41.7, 18.8),
    "AlexNet, fc6/fc7 8192": (26.8, 40.0, 18.1),
    "ZF model": (33.1, 38.4, 16.5),
    "ZF, fc6/fc7 2048": (38.2, 40.2, 17.6),
    "ZF, fc6/fc7 8192": (22.0, 38.8, 17.0),
    "ZF, conv3/4/5 512/1024/512": (18.8, 37.5, 16.0),
    "ZF, both changes": (10.0, 38.3, 16.9),
}

#: our variants (configs/ablation/<name>.yaml), in table order: name -> (our change, the paper's row, its baseline)
VARIANTS = {
    "zf": ("ZF model", "ZF model", "ZF model"),
    "no_conv34": ("ZF - layers 3,4", "AlexNet - layers 3,4", "AlexNet replication"),
    "no_fc7": ("ZF - layer 7", "AlexNet - layer 7", "AlexNet replication"),
    "no_fc67": ("ZF - layers 6,7", "AlexNet - layers 6,7", "AlexNet replication"),
    "no_conv34_fc67": ("ZF - layers 3,4,6,7", "AlexNet - layers 3,4,6,7", "AlexNet replication"),
    "fc2048": ("ZF, fc6/fc7 2048", "ZF, fc6/fc7 2048", "ZF model"),
    "fc8192": ("ZF, fc6/fc7 8192", "ZF, fc6/fc7 8192", "ZF model"),
    "conv_wide": ("ZF, conv3/4/5 512/1024/512", "ZF, conv3/4/5 512/1024/512", "ZF model"),
    "conv_wide_fc8192": ("ZF, both changes", "ZF, both changes", "ZF model"),
}
BASELINE = "zf"


def _history(job: Path) -> tuple[list[dict], bool]:
    """(history, finished): ``history.json`` if the job ended, else the history in ``checkpoints/last.pt``."""
    h = job / "history.json"
    if h.is_file():
        return json.loads(h.read_text()), True
    last = job / "checkpoints" / "last.pt"
    if last.is_file():
        return list(torch.load(last, map_location="cpu", weights_only=True).get("history", [])), False
    return [], False


def _config(job: Path) -> dict:
    c = job / ".hydra" / "config.yaml"
    if not c.is_file():
        return {}

    return OmegaConf.to_container(OmegaConf.load(c), resolve=False)


def _parameters(arch: dict, num_classes: int) -> int | None:
    keys = {"width", "channels", "fc", "conv1", "norm", "dropout", "remove", "init", "pool_size"}
    try:
        return count_parameters(zfnet(num_classes=num_classes, **{k: v for k, v in arch.items() if k in keys}))
    except (TypeError, ValueError):
        return None


def read_job(job: str | os.PathLike) -> dict | None:
    """One sweep job's row (without the paper's numbers), or ``None`` if the folder holds no run."""
    job = Path(job)
    cfg = _config(job)
    history, finished = _history(job)
    if not cfg and not history:
        return None
    name = (cfg.get("ablation") or {}).get("name") or job.name
    arch = ((cfg.get("model") or {}).get("arch")) or {}
    last = history[-1] if history else {}
    vals = [h for h in history if "val_top1" in h]
    v = vals[-1] if vals else {}

    def err(acc):
        return None if acc is None else round(100.0 * (1.0 - float(acc)), 2)

    epochs_planned = ((cfg.get("train") or {}).get("epochs"))
    return {"name": name, "job": str(job), "epochs": int(last.get("epoch", 0)), "epochs_planned": epochs_planned,
            "finished": finished, "train_top1_err": err(last.get("train_top1")),
            "val_top1_err": err(v.get("val_top1")), "val_top5_err": err(v.get("val_top5")),
            "parameters": _parameters(arch, int(cfg.get("num_classes", 10))) if arch else None,
            "minutes": round(sum(h.get("seconds", 0.0) for h in history) / 60.0, 2)}


def collect(sweep_dir: str | os.PathLike, variants: dict = VARIANTS) -> list[dict]:
    """The Table 3 rows of a sweep: every job folder under ``sweep_dir`` (any depth-1 folder with a history or a
    Hydra config), in ``variants`` order (unknown names last), with the paper's numbers and the change in val top-1
    error from each side's baseline (ours: the ``zf`` job; the paper's: its AlexNet or ZF row)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist; run "
                                "`python scripts/train.py -m experiment=ablation` first")
    jobs = [r for d in sorted(p for p in sweep_dir.iterdir() if p.is_dir()) if (r := read_job(d)) is not None]
    if not jobs:
        raise FileNotFoundError(f"no sweep jobs (history.json, checkpoints/last.pt or .hydra/config.yaml) under "
                                f"{sweep_dir}")
    order = {n: i for i, n in enumerate(variants)}
    jobs.sort(key=lambda r: (order.get(r["name"], len(order)), r["name"]))
    base = next((r for r in jobs if r["name"] == BASELINE), None)
    rows = []
    for r in jobs:
        ours, paper_row, paper_base = variants.get(r["name"], (r["name"], None, None))
        p = PAPER_TABLE3.get(paper_row, (None, None, None))
        pb = PAPER_TABLE3.get(paper_base, (None, None, None))
        d_ours = (None if base is None or r["val_top1_err"] is None or base["val_top1_err"] is None
                  else round(r["val_top1_err"] - base["val_top1_err"], 2))
        d_paper = None if p[1] is None or pb[1] is None else round(p[1] - pb[1], 2)
        rows.append({"change": ours, **r, "paper_row": paper_row, "paper_train_top1_err": p[0],
                     "paper_val_top1_err": p[1], "paper_val_top5_err": p[2], "delta_val_top1": d_ours,
                     "paper_delta_val_top1": d_paper})
    return rows


COLUMNS = ("change", "name", "epochs", "parameters", "train_top1_err", "val_top1_err", "val_top5_err",
           "delta_val_top1", "paper_row", "paper_train_top1_err", "paper_val_top1_err", "paper_val_top5_err",
           "paper_delta_val_top1", "finished", "minutes", "job")


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def to_markdown(rows: Sequence[dict]) -> str:
    """The table as Markdown: ours (train top-1 / val top-1 / val top-5 error %, change in val top-1 from our
    baseline) beside the paper's row for the same change."""
    head = ("| change (ours, ZF 1/4 width) | params | ours, error %: train top-1 | val top-1 | val top-5 | Δ val top-1 | "
            "paper row | paper, error %: train top-1 | val top-1 | val top-5 | Δ val top-1 |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        delta = lambda v: "–" if v is None else f"{v:+.1f}"  # noqa: E731
        params = "–" if r["parameters"] is None else f"{r['parameters'] / 1e6:.2f}M"
        flag = "" if r["finished"] else " (unfinished)"
        lines.append(f"| {r['change']}{flag} | {params} | {_fmt(r['train_top1_err'])} | {_fmt(r['val_top1_err'])} | "
                     f"{_fmt(r['val_top5_err'])} | {delta(r['delta_val_top1'])} | {r['paper_row'] or '–'} | "
                     f"{_fmt(r['paper_train_top1_err'])} | {_fmt(r['paper_val_top1_err'])} | "
                     f"{_fmt(r['paper_val_top5_err'])} | {delta(r['paper_delta_val_top1'])} |")
    return "\n".join(lines) + "\n"


def ablation_figure(rows: Sequence[dict]):
    """Change in val top-1 error from the baseline, ours beside the paper's, per change.  Returns (fig, ax)."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["name"] != BASELINE]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    ours = [np.nan if r["delta_val_top1"] is None else r["delta_val_top1"] for r in rows]
    paper = [np.nan if r["paper_delta_val_top1"] is None else r["paper_delta_val_top1"] for r in rows]
    ax.barh(y - 0.2, ours, 0.4, label="ours (Imagenette, reduced budget)")
    ax.barh(y + 0.2, paper, 0.4, label="paper (ImageNet)")
    ax.set_yticks(y, [r["change"] for r in rows], fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("change in val top-1 error from the baseline (points)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ax


def run(sweep_dir: str | os.PathLike, out, dpi: int = 110, tracker=None) -> float:
    """Table 3 from the ablation sweep under ``sweep_dir``: ``ablation_table.csv/.md/.json`` and
    ``figures/ablation.png`` under ``out``.  Returns the baseline's val top-1 error (NaN when it is missing)."""
    out = Path(out)
    rows = collect(sweep_dir)
    write_csv(out / "ablation_table.csv", rows, COLUMNS)
    md = to_markdown(rows)
    (out / "ablation_table.md").write_text(md)
    (out / "ablation_table.json").write_text(json.dumps(rows, indent=1))
    fig, _ = ablation_figure(rows)
    save_figure(fig, out / "figures" / "ablation.png", tracker, "ablation", dpi)
    if tracker is not None:
        tracker.table("table3", list(COLUMNS), [[r.get(c) for c in COLUMNS] for r in rows])
    print(md)
    base = next((r for r in rows if r["name"] == BASELINE), None)
    return float(base["val_top1_err"]) if base and base["val_top1_err"] is not None else float("nan")
