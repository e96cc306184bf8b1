"""Which ``features`` stacks the stack engine (``zf.projection.stack``) can reverse: every module between a target
and the pixels must be a Conv2d (dilation 1, zero padding), ReLU, MaxPool2d (dilation 1), LocalResponseNorm,
BatchNorm2d with running statistics, Dropout or Identity, with square geometry for the receptive-field recurrence.
``fast_path`` says whether a model takes the stack engine; any other goes through ``zf.projection.graph``."""
from __future__ import annotations

import warnings
import weakref

from torch import nn

from zf.errors import ConfigError
from zf.net.layers import is_stack
from zf.net.receptive import geometry

_POINTWISE_OK = (nn.ReLU, nn.LocalResponseNorm, nn.Dropout, nn.Dropout2d, nn.Identity)
_SUPPORTED = ("Conv2d (dilation 1, zero padding), ReLU, MaxPool2d (dilation 1), LocalResponseNorm, "
              "BatchNorm2d (running statistics), Dropout, Dropout2d, Identity")


class NotInvertibleError(ConfigError):
    """A module on the way down from the target cannot be reversed by the deconvnet."""


def pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _obstacle(m: nn.Module) -> str | None:
    """Why this module's reverse pass cannot reverse ``m`` (``"dilation (2, 2)"``), or ``None``."""
    why = None
    if isinstance(m, nn.Conv2d):
        if pair(m.dilation) != (1, 1):
            why = f"dilation {m.dilation}"
        elif isinstance(m.padding, str) or m.padding_mode != "zeros":
            why = f"padding {m.padding!r} / padding_mode {m.padding_mode!r}"
    elif isinstance(m, nn.MaxPool2d):
        if pair(m.dilation) != (1, 1):
            why = f"dilation {m.dilation}"
    elif isinstance(m, nn.BatchNorm2d):
        if m.running_var is None:
            why = "no running statistics"
    elif not isinstance(m, _POINTWISE_OK):
        why = "unsupported module"
    return why


def check_module(path: str, m: nn.Module) -> None:
    why = _obstacle(m)
    if why:
        raise NotInvertibleError(f"cannot invert {path} ({type(m).__name__}): {why}. The deconvnet reverses only "
                                 f"{_SUPPORTED} (and Linear/ReLU/Dropout in the classifier).")


def stack_obstacle(model: nn.Module) -> str | None:
    """The first module of ``model.features`` that this module's reverse pass or ``zf.net.receptive``'s recurrence
    cannot handle, as ``"features.3 (Conv2d): dilation (2, 2)"``; ``None`` when there is none."""
    for k, m in model.features.named_children():
        why = _obstacle(m)
        if why is None:
            try:
                geometry(m)
            except ValueError as e:
                why = str(e)
        if why is not None:
            return f"features.{k} ({type(m).__name__}): {why}"
    return None


_WARNED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # models fast_path has warned about


def fast_path(model: nn.Module) -> bool:
    """Whether this module's own reverse pass projects ``model``: a ``features`` stack (``zf.net.layers.is_stack``)
    of modules it can reverse.  Any other model, including a stack with one module it cannot reverse (warned about
    once, naming the module), goes through ``zf.projection.graph`` (autograd with the same rules; LRN is then
    reversed by its gradient, whatever ``norm`` says)."""
    if not is_stack(model):
        return False
    why = stack_obstacle(model)
    if why is not None and model not in _WARNED:
        _WARNED.add(model)
        lrn = any(isinstance(m, nn.LocalResponseNorm) for m in model.features)
        warnings.warn(f"{type(model).__name__}.features: {why}: zf.projection.stack cannot reverse it, so this "
                      "model is projected through zf.projection.graph (autograd with the same rules, slower)"
                      + ("; LRN is reversed by its gradient there (norm is ignored)" if lrn else ""), stacklevel=3)
    return why is None


__all__ = ["NotInvertibleError", "pair", "check_module", "stack_obstacle", "fast_path"]
