"""Any PyTorch network as a tree of modules: module paths, ``capture`` (read the outputs of some modules in one
forward that stops as soon as they have run), ``eval_mode`` and ``minable_layers`` (every module with a 4-D output).

- ``capture(model, x, layers)`` runs the model with forward hooks that clone what they read, and stops the forward
  as soon as the last requested module has run (a module called several times, such as the ``relu`` a torchvision
  ``BasicBlock`` reuses, is read at its last call).
- A layer here is a module path (``layer3``, ``layer3.1.relu``, ``features.denseblock3``); ``zf.net.layers`` adds
  the paper's names for ``features`` stacks and ``zf.net.listing`` lists the layers with their receptive fields.
"""
from __future__ import annotations

import difflib
import weakref
from contextlib import contextmanager
from typing import Sequence

import torch
from torch import nn

from zf.errors import LayerError

# ---------------------------------------------------------------------------------------------------------------
# layer names


def module_paths(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule of ``model`` by its path (``named_modules``), the root excluded."""
    return {p: m for p, m in model.named_modules() if p}


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path``; raises ``LayerError`` naming close matches."""
    mods = module_paths(model)
    if path in mods:
        return mods[path]
    close = difflib.get_close_matches(str(path), list(mods), n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}; " if close else ""
    raise LayerError(f"layer {path!r} does not exist in {type(model).__name__}; {hint}list all layers with "
                     "list_layers=true (zf.net.listing.list_layers)")


# ---------------------------------------------------------------------------------------------------------------
# capture


class _Stop(Exception):
    """Raised by a hook once every requested module has run, to end the forward early."""


_PLANS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def call_counts(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, int], Exception | None]:
    """How often each module runs in one forward (a probe on one input, cached per model, input shape and mode),
    and the error that ended the probe early, if any (an input too small for the layers after some point: the
    modules that ran before it are counted, and only those can be read)."""
    key = (tuple(x.shape[1:]), model.training)
    plans = _PLANS.setdefault(model, {})
    if key not in plans:
        counts: dict[str, int] = {}
        hooks, error = [], None
        for p, m in module_paths(model).items():
            hooks.append(m.register_forward_hook(lambda *_, p=p: counts.__setitem__(p, counts.get(p, 0) + 1)))
        try:
            with torch.no_grad():
                model(x[:1])
        except RuntimeError as e:
            error = e
        finally:
            for h in hooks:
                h.remove()
        plans[key] = (counts, error)
    return plans[key]


def capture(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | str, clone: bool = True,
            stop: bool = True, probe: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Run ``model(x)`` and return ``{path: output}`` of the modules at ``layers`` (paths, see ``find_module``).

    Outputs are cloned (an in-place ReLU after the module cannot change them; the clone keeps the autograd graph).
    A module that runs several times is read at its last call.  With ``stop`` the forward ends as soon as every
    requested module has made all its calls (a probe forward on one input counts them, once per model and input
    shape), so reading ``layer3`` of a ResNet does not pay for ``layer4`` and ``fc``.  Runs in the model's current
    mode (call ``model.eval()`` first for dropout off and batch-norm running statistics).  ``probe``: an input to
    count the calls on instead of ``x`` (a whole image when ``x`` is a crop too small for the layers after the
    target).
    """
    paths = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
    mods = {p: find_module(model, p) for p in paths}
    need, error = call_counts(model, x if probe is None else probe) if stop else ({}, None)
    missing = [p for p in paths if stop and need.get(p, 0) == 0]
    if missing and error is not None:
        raise error
    if missing:
        raise LayerError(f"layer {missing[0]!r} of {type(model).__name__} does not run in its forward; pick a "
                         "module that does (list_layers=true)")
    out: dict[str, torch.Tensor] = {}
    seen = {p: 0 for p in paths}
    left = [len(paths)]

    def hook(p):
        def fn(_m, _inp, o):
            out[p] = o.clone() if clone and isinstance(o, torch.Tensor) else o
            seen[p] += 1
            if stop and seen[p] == need[p]:
                left[0] -= 1
                if left[0] == 0:
                    raise _Stop
        return fn

    hooks = [m.register_forward_hook(hook(p)) for p, m in mods.items()]
    try:
        model(x)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return out


@contextmanager
def eval_mode(model: nn.Module):
    """``model.eval()`` within the block, restoring every module's training flag after it."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in flags:
            m.training = t


def minable_layers(model: nn.Module, input_size: int | tuple[int, int] = 224) -> list[tuple[str, tuple]]:
    """(path, (C, h, w)) of every module with a 4-D output (at its last call), in the order the forward finishes
    them (one forward on zeros of ``input_size``)."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    p0 = next(model.parameters(), None)
    x = torch.zeros(1, 3, h, w, device=p0.device if p0 is not None else None,
                    dtype=p0.dtype if p0 is not None else None)
    with eval_mode(model), torch.no_grad():
        outs = capture(model, x, list(module_paths(model)), clone=False, stop=False)
    return [(p, tuple(o.shape[1:])) for p, o in outs.items() if isinstance(o, torch.Tensor) and o.dim() == 4]


__all__ = ["module_paths", "find_module", "call_counts", "capture", "eval_mode", "minable_layers"]
