"""Training checkpoints: written atomically, read safely (``weights_only=True``, a ``CheckpointError`` naming a bad
file), feature snapshots (Fig. 4) and the shippable export of a run."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from zf.errors import CheckpointError


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


__all__ = ["save_atomic", "load_checkpoint", "feature_state", "export_checkpoint"]
