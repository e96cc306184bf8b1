"""Weights: reading a checkpoint file safely (``weights_only=True``), fitting a state dict to a model, and recording
what stayed random.

Every model a config builds says where its weights came from: ``model.zf_weights`` is the file it loaded, or
"random", and ``model.zf_missing`` lists the state-dict keys the file did not have (they keep their random
initialisation; empty when everything was loaded).  ``require_loaded`` turns a missing part an analysis needs into
an error.  A file that is not a checkpoint, or does not fit, is a ``zf.errors.CheckpointError`` naming it.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from zf.errors import CheckpointError

#: What to tell a user who gave no weights, or weights that cannot be used.
WEIGHTS_HELP = ("pass model.weights=/path/to/weights.pth (a state dict), model.weights=cache (torchvision's file, "
                "if the torch hub cache has it), model.weights=download (torchvision's or timm's pretrained file, "
                "downloaded once into the hub cache), or model.weights=random for random weights")

#: The shipped checkpoint and its Fig. 4 snapshots, installed with the package (see zf/weights/MODEL_CARD.md).
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
#: The checkpoint shipped with the package, trained on Imagenette (see zf/weights/MODEL_CARD.md).
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "zfnet_imagenette.pt"
#: Its conv weights at epochs 1, 2, 5, 10, 20 and 50 (Fig. 4, ``experiment=evolution``).
EVOLUTION_SNAPSHOTS = WEIGHTS_DIR / "evolution"

_STATE_KEYS = ("model", "state_dict", "model_state_dict", "model_state")


def read_checkpoint(path: str | os.PathLike, what: str = "weights file"):
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line ``CheckpointError``s naming the file when it
    is missing, is not a PyTorch checkpoint (corrupt, truncated, another format), or holds pickled Python objects
    that ``weights_only`` refuses.  A ``.safetensors`` file is read with safetensors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; check the path"
                              + ("" if what != "weights file" else f", or {WEIGHTS_HELP}"))
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path} is a safetensors file: pip install safetensors to read it") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__}: "
                                  f"{first_line(e)}); check that it was copied whole") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises KeyError, EOFError, RuntimeError, UnpicklingError ... for a bad file
        msg = str(e)
        if "Unsupported global" in msg:
            what_global = msg.split("Unsupported global:", 1)[1].split(" was not", 1)[0].strip()
            raise CheckpointError(
                f"{path} holds pickled Python objects ({what_global}), which zf does not load (weights_only=True); "
                f"save a state dict instead: torch.save(model.state_dict(), '{path.name}')") from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (corrupt, truncated or another format: "
                              f"{type(e).__name__}); save it again with torch.save(model.state_dict(), ...) or copy "
                              f"it again") from None


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def state_dict_of(obj, source: str) -> dict:
    """The tensors of a loaded file: a bare state dict, or the ``model`` / ``state_dict`` entry of a checkpoint."""
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {sorted(map(str, obj))[:6]}"
        raise CheckpointError(f"{source} holds a {kind}, not a state dict of tensors; save one with "
                              f"torch.save(model.state_dict(), ...)")
    return {str(k): v for k, v in obj.items()}


def load_state_dict(path: str | os.PathLike) -> dict:
    """Load a state dict (or a zf checkpoint's ``model`` entry) with ``weights_only=True``."""
    return state_dict_of(read_checkpoint(path), str(path))


def _remap(state: dict, wanted: set[str]) -> dict:
    """``state`` with a common prefix stripped (``module.``, ``model.``, ...) or added (``features.``) where that
    makes more of its keys name the model's; unchanged otherwise."""
    candidates = [state]
    # strip a leading component all keys share, repeatedly (module.model.x -> model.x -> x)
    stripped = state
    while True:
        heads = {k.split(".", 1)[0] for k in stripped}
        if len(heads) != 1 or not all("." in k for k in stripped):
            break
        stripped = {k.split(".", 1)[1]: v for k, v in stripped.items()}
        candidates.append(stripped)
    # add the prefix that puts a key where the model has it (a features-only dict saved from model.features)
    for c in list(candidates):
        for k in c:
            for w in wanted:
                if w.endswith("." + k):
                    p = w[: -len(k)]
                    candidates.append({p + kk: v for kk, v in c.items()})
            break  # the first key proposes the prefixes
    return max(candidates, key=lambda c: (len(wanted & set(c)), c is state))


def _groups(keys: Sequence[str], all_keys: Sequence[str]) -> list[str]:
    """Short names for a set of state-dict keys: ``classifier.*`` when a whole top-level module is in it, else the
    modules (``features.28.*``)."""
    out: list[str] = []
    for top in dict.fromkeys(k.split(".", 1)[0] for k in keys):
        mine = [k for k in keys if k.split(".", 1)[0] == top]
        if len(mine) == len([k for k in all_keys if k.split(".", 1)[0] == top]):
            out.append(f"{top}.*" if "." in mine[0] else top)
        else:
            out += list(dict.fromkeys(k.rsplit(".", 1)[0] + ".*" for k in mine))
    return out


def load_weights(model: nn.Module, state: dict, source: str, partial: bool = True) -> nn.Module:
    """Copy ``state`` into ``model`` and record it (``model.zf_weights = source``, ``model.zf_missing``).

    A common key prefix is stripped or added where that fits the model (``module.`` of DataParallel, a dict saved
    from ``model.features``).  Keys the model lacks, or tensors of another shape, are a ``CheckpointError`` naming
    ``source``.  Keys of the model that ``state`` lacks keep their random initialisation: with ``partial`` that
    warns once, naming them, and lists them in ``model.zf_missing``; without, it is an error."""
    target = model.state_dict()
    wanted = set(target)
    state = _remap(state, wanted)
    unexpected = [k for k in state if k not in wanted]
    if unexpected:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: it has {len(unexpected)} keys the model lacks "
            f"({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''}); check model.name / arch_name / "
            f"the architecture options (width, num_classes, ...)")
    wrong = [f"{k} {tuple(v.shape)} vs the model's {tuple(target[k].shape)}" for k, v in state.items()
             if not nn.parameter.is_lazy(target[k]) and v.shape != target[k].shape]
    if wrong:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {'; '.join(wrong[:3])}"
                              f"{'; ...' if len(wrong) > 3 else ''}; check the architecture options "
                              f"(width, num_classes, ...)")
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    if len(missing) == len([k for k in target if not k.endswith("num_batches_tracked")]):
        raise CheckpointError(f"{source} has none of {type(model).__name__}'s weights; check model.name / arch_name")
    if missing and not partial:
        raise CheckpointError(f"{source} lacks {', '.join(_groups(missing, list(target)))} of "
                              f"{type(model).__name__}; pass a complete state dict")
    model.load_state_dict(state, strict=False)
    model.zf_weights = source
    model.zf_missing = missing
    if missing:
        warnings.warn(f"{source} holds only part of {type(model).__name__}: "
                      f"{', '.join(_groups(missing, list(target)))} stayed random (model.zf_missing lists the keys)",
                      stacklevel=2)
    return model


def random_weights(model: nn.Module) -> nn.Module:
    """Mark ``model`` as running on its random initialisation (``model.zf_weights = "random"``)."""
    model.zf_weights = "random"
    model.zf_missing = []
    return model


def require_loaded(model: nn.Module, prefix: str, what: str) -> None:
    """Raise ``CheckpointError`` if the weights under ``prefix`` (``"classifier."``) stayed random because the
    loaded file did not have them: ``require_loaded(model, "classifier.", "occlusion")`` before a pass that needs
    the class scores."""
    missing = [k for k in getattr(model, "zf_missing", ()) if k.startswith(prefix)]
    if missing:
        source = getattr(model, "zf_weights", "the weights file")
        part = f"the {prefix.rstrip('.')} ({prefix}*), which" if prefix else "every weight of the model, but some"
        raise CheckpointError(
            f"{what} needs {part} stayed random: {source} has no "
            f"{', '.join(_groups(missing, missing))}; pass model.weights=<a file that has them>")
