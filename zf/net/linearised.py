"""The linearised copy of any network in which ``zf.net.receptive.graph_receptive_fields`` measures receptive
fields: float64, every weight positive and constant, max pools turned into average pools of the same windows,
activations, norms and dropout the identity (``linearised``), also for functional calls (``LinearCalls``), and
narrowed to one channel per tensor (``one_channel``), so that the support of a unit's input gradient is exactly
its receptive field.  Not a projection method: the rules of ``zf.projection.rules`` are not involved."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from zf.net.activations import ACTIVATION_MODULES, ACTIVATIONS, MAX_POOLS

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LocalResponseNorm, nn.Dropout, nn.Dropout2d)


def linearised(model: nn.Module) -> nn.Module:
    """A float64 copy whose every unit depends on its inputs with positive weight and no cancellation: convolutions
    and linear layers with constant weights 1/fan-in and no bias, max pools replaced by average pools (same
    windows), activations, batch norm, LRN, dropout and channel-wise LayerNorm by the identity."""
    m = copy.deepcopy(model).cpu().double().eval()

    def swap(parent: nn.Module):
        for name, c in parent.named_children():
            new = None
            if isinstance(c, (nn.MaxPool2d, nn.MaxPool1d)) and not isinstance(c, nn.MaxPool3d):
                if _pairs(c.dilation) != (1, 1):
                    raise ValueError(f"receptive field: dilated max pool {name} is not supported")
                new = nn.AvgPool2d(c.kernel_size, c.stride, c.padding, c.ceil_mode, count_include_pad=True)
            elif isinstance(c, nn.AdaptiveMaxPool2d):
                new = nn.AdaptiveAvgPool2d(c.output_size)
            elif isinstance(c, ACTIVATION_MODULES + _NORMS) or (isinstance(c, nn.LayerNorm)
                                                                and len(c.normalized_shape) == 1):
                # a fused norm + activation (timm's BatchNormAct2d: norm, then its ``drop`` and ``act`` children)
                # keeps its children under their paths, run in order; a plain one is the identity
                new = _Chain(c) if next(c.children(), None) is not None else nn.Identity()
            if new is not None:
                setattr(parent, name, new)
            else:
                swap(c)

    swap(m)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                mod.weight.fill_(1.0 / max(1, mod.weight[0].numel()))
                if mod.bias is not None:
                    mod.bias.zero_()
            else:
                for prm in mod.parameters(recurse=False):
                    prm.fill_(1.0)
    return m


def _avg_pool(func, args, kwargs):
    """A functional max pool as the average pool of the same windows (receptive fields: every input counts)."""
    if func is F.adaptive_max_pool2d:
        return F.adaptive_avg_pool2d(args[0], args[1] if len(args) > 1 else kwargs["output_size"])
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    a = dict(zip(names, args), **kwargs)
    if a.get("dilation", 1) not in (1, (1, 1), [1, 1]) or a.get("return_indices"):
        raise ValueError("receptive field: a dilated max pool or one returning indices is not supported")
    stride = a.get("stride") or a["kernel_size"]
    return F.avg_pool2d(a["input"], a["kernel_size"], stride, a.get("padding", 0), bool(a.get("ceil_mode", False)),
                        True)


class LinearCalls(TorchFunctionMode):
    """The functional calls of the linearised copy: within the block every functional activation
    (``zf.net.activations.ACTIVATIONS``, a clamp such as ``F.hardtanh`` included, so that no path is cut) is the
    identity and every functional max pool the average pool of its windows, as ``linearised`` does for modules."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in MAX_POOLS:
            return _avg_pool(func, args, kwargs)
        if func in ACTIVATIONS and args and isinstance(args[0], torch.Tensor):
            return args[0].clone()
        return func(*args, **kwargs)


class _Chain(nn.Module):
    """A fused norm + activation module (timm's ``BatchNormAct2d``, ``LayerNormAct2d``...) in the linearised copy:
    the norm is dropped (the identity, as a plain batch norm is) and the module's children (``drop``, ``act``) run
    in the order they were registered, under their own paths, so that a layer such as ``bn1.act`` can be read."""

    def __init__(self, fused: nn.Module):
        super().__init__()
        for name, c in fused.named_children():
            self.add_module(name, c)

    def forward(self, x):
        for c in self.children():
            x = c(x)
        return x


def one_channel(lin: nn.Module) -> nn.Module:
    """The linearised copy (``linearised``) narrowed to one channel per tensor, in place: every convolution sums its
    input's channels and applies a (1, 1, kh, kw) kernel of ones with its own stride, padding (timm's size-dependent
    ``Conv2dSame`` included: it pads from the kernel's shape), dilation and ``groups=1``; a linear layer sums its
    last axis; group norms take one group.  The support of a unit's input gradient, summed over channels, is the
    same as in the full copy (every weight is positive, so a grouped or dense convolution dilates the union of its
    inputs' supports alike), and it costs a few per cent of the full copy's time (``list_layers`` on ResNet-50:
    seconds instead of minutes).  ``graph_receptive_fields`` falls back to the full copy where a model needs its
    channel counts (a channel shuffle, a reshape by channels)."""
    def sum_channels(dim):
        return lambda _m, args: (args[0].sum(dim, keepdim=True),) + tuple(args[1:])

    with torch.no_grad():
        for mod in lin.modules():
            if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and not isinstance(mod, nn.Conv3d):
                mod.weight = nn.Parameter(torch.ones(1, 1, *mod.weight.shape[2:], dtype=mod.weight.dtype))
                mod.bias, mod.groups = None, 1
                mod.in_channels = mod.out_channels = 1
                mod.register_forward_pre_hook(sum_channels(1))
            elif isinstance(mod, nn.Linear):
                mod.weight = nn.Parameter(torch.ones(1, 1, dtype=mod.weight.dtype))
                mod.bias = None
                mod.in_features = mod.out_features = 1
                mod.register_forward_pre_hook(sum_channels(-1))
            elif isinstance(mod, nn.GroupNorm):
                mod.num_groups, mod.num_channels, mod.weight, mod.bias = 1, 1, None, None
    return lin


def _pairs(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


__all__ = ["linearised", "LinearCalls", "one_channel"]
