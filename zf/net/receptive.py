"""Receptive fields: arithmetic for the ``features`` of a network (Araujo, Norris and Sim, "Computing Receptive
Fields of Convolutional Neural Networks", Distill 2019, whose published AlexNet and VGG16 fields the tests check).

For a unit at row ``y`` of a layer, its box in the input is ``[y * stride + offset, y * stride + offset + size)``
(half-open, unclipped).  The recurrence, layer by layer (kernel ``k``, stride ``s``, padding ``p``)::

    size_l   = size_{l-1} + (k - 1) * stride_{l-1}
    stride_l = stride_{l-1} * s
    offset_l = offset_{l-1} - p * stride_{l-1}

Pointwise layers (ReLU, LRN, batch norm, dropout, identity) change nothing.  The deconvnet (``zf.projection.stack``)
crops with the same windows, so a projection is zero outside its unit's box.

Any other network (ResNet, DenseNet, GoogLeNet, dilated or rectangular kernels): ``graph_receptive_fields``
measures size, stride and offset per axis as the exact support of one unit's input gradient in a linearised float64
copy of the model (``RF.size_hw`` etc.; boxes may exceed the image), keyed by module path.

    >>> from zf.net.models import zfnet
    >>> receptive_fields(zfnet())["pool5"]
    RF(size=171, stride=32, offset=-59, out_size=6)
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from zf.net.layers import is_stack, layer_table
from zf.net.linearised import LinearCalls, linearised, one_channel
from zf.net.modules import capture, eval_mode, minable_layers

POINTWISE = (nn.ReLU, nn.LocalResponseNorm, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)


@dataclass(frozen=True)
class RF:
    """Receptive field of the units of one layer.

    size: side of a unit's box in input pixels.  stride: input pixels between neighbouring units.
    offset: first pixel of unit (0, 0)'s box (= minus the accumulated padding; the box's centre is
    ``offset + (size - 1) / 2``).  out_size: side of the layer's map for the ``input_size`` it was computed at.
    These four are the rows' (y axis) values; ``size_hw``, ``stride_hw``, ``offset_hw``, ``out_hw`` hold
    (rows, columns), equal pairs for square fields (left out, they copy the row values).
    """

    size: int
    stride: int
    offset: int
    out_size: int
    size_hw: tuple | None = None
    stride_hw: tuple | None = None
    offset_hw: tuple | None = None
    out_hw: tuple | None = None

    def __post_init__(self):
        for f, v in (("size_hw", self.size), ("stride_hw", self.stride), ("offset_hw", self.offset),
                     ("out_hw", self.out_size)):
            if getattr(self, f) is None:
                object.__setattr__(self, f, (v, v))

    @classmethod
    def hw(cls, size, stride, offset, out) -> "RF":
        """An RF from (rows, columns) pairs."""
        pair = lambda v: tuple(int(a) for a in v)  # noqa: E731
        return cls(int(size[0]), int(stride[0]), int(offset[0]), int(out[0]), pair(size), pair(stride),
                   pair(offset), pair(out))

    def start(self, y):
        """First input pixel of unit row (or column) ``y`` (int or array)."""
        return y * self.stride + self.offset

    def center(self, y):
        """Centre of unit ``y``'s box in input pixels (may be a half-integer)."""
        return y * self.stride + self.offset + (self.size - 1) / 2


class GeometryError(ValueError):
    """A kernel the sequential recurrence does not cover (rectangular, dilated) or a non-square input:
    ``graph_receptive_fields`` measures these instead."""


def _square(v: Any, what: str, module: nn.Module) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise GeometryError(f"{type(module).__name__}: non-square {what} {v} is not supported")
        v = v[0]
    if not isinstance(v, int):
        raise ValueError(f"{type(module).__name__}: {what}={v!r} is not supported (use integers)")
    return v


def geometry(module: nn.Module) -> tuple[int, int, int, bool] | None:
    """``(kernel, stride, padding, ceil_mode)`` of a conv or pool, ``None`` for a pointwise module; raises
    ``ValueError`` for anything else (or a dilated kernel)."""
    if isinstance(module, POINTWISE):
        return None
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        dil = getattr(module, "dilation", 1)
        if _square(dil, "dilation", module) != 1:
            raise GeometryError(f"{type(module).__name__}: dilation {dil} is not supported")
        k = _square(module.kernel_size, "kernel_size", module)
        s = _square(module.stride if module.stride is not None else k, "stride", module)
        p = _square(module.padding, "padding", module)
        return k, s, p, bool(getattr(module, "ceil_mode", False))
    raise ValueError(f"no receptive-field rule for {type(module).__name__}")


def out_size(n: int, k: int, s: int, p: int, ceil_mode: bool = False) -> int:
    """Output side of a conv/pool over ``n`` input pixels (PyTorch's formula, ``ceil_mode`` included)."""
    if not ceil_mode:
        return (n + 2 * p - k) // s + 1
    o = -(-(n + 2 * p - k) // s) + 1
    if (o - 1) * s >= n + p:  # the last window must start inside the input or the left padding
        o -= 1
    return o


def receptive_fields(model: nn.Module, input_size: int | tuple[int, int] = 224,
                     paths: list[str] | None = None) -> "OrderedDict[str, RF]":
    """RF of every layer.  For a ``features`` stack of leaf modules (``zf.net.layers.is_stack``): every layer of
    ``model.features`` by the names of ``zf.net.layers.layer_table``, in forward order, by the recurrence above
    (measured by ``graph_receptive_fields`` where a dilated or rectangular kernel or a non-square input rules it out).
    For any other model: every module with a 4-D output, by module path, measured (``graph_receptive_fields``), or
    only the module paths ``paths`` (a run measures just the layers it mines or renders)."""
    if not is_stack(model):
        return graph_receptive_fields(model, input_size, paths)
    try:
        return _stack_fields(model, input_size)
    except GeometryError:  # a dilated or rectangular kernel, a non-square input: measure each layer instead
        table = [(name, lay.path) for name, lay in layer_table(model).items() if lay.index is not None]
        measured = graph_receptive_fields(model, input_size, [p for _, p in table])
        return OrderedDict((name, measured[p]) for name, p in table)


def _stack_fields(model: nn.Module, input_size: int | tuple[int, int]) -> "OrderedDict[str, RF]":
    """``receptive_fields`` of a ``features`` stack by the recurrence; ``GeometryError`` where it does not apply,
    ``ValueError`` for a module it has no rule for."""
    if not isinstance(input_size, int):
        if input_size[0] != input_size[1]:
            raise GeometryError(f"input_size {input_size}: the sequential receptive fields take a square input")
        input_size = int(input_size[0])
    size, stride, offset, n = 1, 1, 0, input_size
    out: OrderedDict[str, RF] = OrderedDict()
    for name, layer in layer_table(model).items():
        if layer.index is None:
            continue
        try:
            g = geometry(layer.module)
        except ValueError as e:
            raise type(e)(f"receptive field of {layer.path} ({name}): {e}") from None
        if g is not None:
            k, s, p, ceil = g
            size, offset, stride = size + (k - 1) * stride, offset - p * stride, stride * s
            n = out_size(n, k, s, p, ceil)
        out[name] = RF(size, stride, offset, n)
    return out


@dataclass(frozen=True)
class Box:
    """A unit's box in the input, half-open ``[y0, y1) x [x0, x1)``; ints, or numpy arrays of one shape.

    ``y0 y1 x0 x1``: unclipped (may reach outside the image).  ``cy0 cy1 cx0 cx1``: clipped to the image.
    ``top bottom left right``: rows / columns of the box outside the image on each side (>= 0).
    """

    y0: Any
    y1: Any
    x0: Any
    x1: Any
    cy0: Any
    cy1: Any
    cx0: Any
    cx1: Any
    top: Any
    bottom: Any
    left: Any
    right: Any

    @property
    def outside(self):
        """Number of the box's pixels that fall outside the image."""
        return (self.y1 - self.y0) * (self.x1 - self.x0) - (self.cy1 - self.cy0) * (self.cx1 - self.cx0)


def unit_box(rf: RF, y, x, image_size: int | tuple[int, int]) -> Box:
    """The box of unit ``(y, x)`` (ints, or integer arrays of one shape for many units at once) in an image of
    ``image_size`` (``H`` or ``(H, W)``)."""
    h, w = (image_size, image_size) if np.ndim(image_size) == 0 else image_size
    scalar = np.ndim(y) == 0 and np.ndim(x) == 0
    y, x = np.asarray(y, dtype=np.int64), np.asarray(x, dtype=np.int64)
    y0 = y * rf.stride_hw[0] + rf.offset_hw[0]
    x0 = x * rf.stride_hw[1] + rf.offset_hw[1]
    y1, x1 = y0 + rf.size_hw[0], x0 + rf.size_hw[1]
    cy0, cy1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    cx0, cx1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    vals = [y0, y1, x0, x1, cy0, cy1, cx0, cx1, cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1]
    if scalar:
        vals = [int(v) for v in vals]
    return Box(*vals)


# ---------------------------------------------------------------------------------------------------------------
# any graph: the support of one unit's gradient in a linearised copy

_RF_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _measure(lin: nn.Module, hw: tuple[int, int], paths: list[str], axis: int | None) -> dict[str, dict]:
    """One forward of ones of size hw through the linearised copy (one batch element per seed), then per distinct
    output tensor one reverse pass seeding the rows 0, 1, h-1 (all columns) and the columns 0, 1, w-1 (all rows).
    Returns per path and axis (0 rows, 1 columns; ``axis`` None: both) ``(size, stride, offset)``, left out where the
    image clips the boxes (measure again on a larger input) or the map has one unit."""
    axes = (0, 1) if axis is None else (axis,)
    x = torch.ones(3 * len(axes), 3, *hw, dtype=torch.float64, requires_grad=True)  # one copy per seed
    with torch.enable_grad(), LinearCalls():
        outs = capture(lin, x, paths, clone=False)
    res: dict[str, dict] = {p: {} for p in paths}
    done: dict[int, dict] = {}
    for p in paths:
        o = outs[p]
        key = id(o)  # activations, batch norm... are identities in the copy: their output is the same tensor
        if key not in done:
            h, w = o.shape[2:]
            n_map = (h, w)
            g, which = torch.zeros_like(o), []
            for i, ax in enumerate(axes):
                if n_map[ax] < 2:
                    continue
                for k, u in enumerate((0, 1, n_map[ax] - 1)):
                    if ax == 0:
                        g[3 * i + k, :, u, :] = 1.0
                    else:
                        g[3 * i + k, :, :, u] = 1.0
                which.append((i, ax))
            got = {}
            if which:
                gx = torch.autograd.grad(o, x, g, retain_graph=True)[0]
                for i, ax in which:
                    prof = [gx[3 * i + k].abs().sum(0).sum(1 - ax) for k in range(3)]
                    nz = [torch.nonzero(v > 0).flatten() for v in prof]
                    end0, end1, start_last = int(nz[0][-1]) + 1, int(nz[1][-1]) + 1, int(nz[2][0])
                    if end1 >= hw[ax] or start_last <= 0:
                        continue
                    stride = end1 - end0
                    offset = start_last - (n_map[ax] - 1) * stride
                    got[ax] = (end0 - offset, stride, offset)
            done[key] = got
        res[p] = done[key]
    return res


def _fields(lin: nn.Module, hw: tuple[int, int], todo: list[str]) -> dict[str, RF]:
    """``graph_receptive_fields`` of ``todo`` measured on the linearised copy ``lin``."""
    with torch.no_grad(), LinearCalls():
        o = capture(lin, torch.zeros(1, 3, *hw, dtype=torch.float64), todo, clone=False)
    for p in todo:
        if o[p].dim() != 4:
            raise ValueError(f"receptive field of {p}: its output has shape {tuple(o[p].shape)}, not (N, C, h, w)")
    shapes = {p: tuple(o[p].shape[2:]) for p in todo}
    del o
    found: dict[str, dict] = {p: {} for p in todo}
    for p, got in _measure(lin, hw, todo, None).items():
        found[p].update(got)
    for ax in (0, 1):
        left, f = [p for p in todo if ax not in found[p] and shapes[p][ax] > 1], 2
        while left and f <= 8:
            size = (hw[0] * f, hw[1]) if ax == 0 else (hw[0], hw[1] * f)
            for p, got in _measure(lin, size, left, ax).items():
                found[p].update(got)
            left, f = [p for p in left if ax not in found[p]], f * 2
    out = {}
    for p in todo:
        vals = [found[p].get(ax, (hw[ax], -(-hw[ax] // shapes[p][ax]), 0)) for ax in (0, 1)]
        out[p] = RF.hw(*zip(*vals), shapes[p])
    return out


def graph_receptive_fields(model: nn.Module, input_size: int | tuple[int, int] = 224,
                           paths: list[str] | None = None) -> "OrderedDict[str, RF]":
    """RF of the modules at ``paths`` (module paths with 4-D outputs) of any network, per axis, measured as the
    exact support of the input gradient in a linearised float64 copy (``linearised``): the last row of units'
    support starts at its boxes' first pixel, rows 0 and 1 end at their boxes' last ones, which gives offset, size
    and stride (columns alike).  Branches (residual, inception, dense) take the union by themselves, dilated and
    rectangular kernels need no rule.  Where the image clips a box the axis is measured again on inputs twice as
    long on that axis (up to 8x).  A layer whose units see the whole image at every size (global pooling,
    squeeze-excitation) or whose map has one unit gets ``size`` = the input size, ``offset`` 0 and ``stride`` =
    ceil(input / map) on that axis.  Cached per model and input size.  Measured on a one-channel copy
    (``one_channel``), or on the full copy where the model needs its channel counts."""
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(int(v) for v in input_size)
    if paths is None:
        paths = [p for p, _ in minable_layers(model, hw)]
    cache = _RF_CACHE.setdefault(model, {})
    todo = [p for p in paths if (p, hw) not in cache]
    if todo:
        with eval_mode(model):
            lin = linearised(model)
        threads, got = torch.get_num_threads(), None
        try:
            torch.set_num_threads(1)  # one-channel maps: a second thread only adds its synchronisation (10x slower)
            got = _fields(one_channel(lin), hw, todo)
        except (RuntimeError, ValueError, TypeError, IndexError):  # a model that needs its channel counts
            pass
        finally:
            torch.set_num_threads(threads)
        if got is None:
            with eval_mode(model):
                lin = linearised(model)
            got = _fields(lin, hw, todo)
        for p in todo:
            cache[(p, hw)] = got[p]
    return OrderedDict((p, cache[(p, hw)]) for p in paths)


__all__ = ["RF", "Box", "receptive_fields", "graph_receptive_fields", "unit_box", "geometry", "out_size"]
