"""Receptive-field arithmetic for the ``features`` of a network (Araujo et al., Distill 2019; PAPER.md "Published
receptive fields").

For a unit at row ``y`` of a layer, its box in the input is ``[y * stride + offset, y * stride + offset + size)``
(half-open, unclipped).  The recurrence, layer by layer (kernel ``k``, stride ``s``, padding ``p``)::

    size_l   = size_{l-1} + (k - 1) * stride_{l-1}
    stride_l = stride_{l-1} * s
    offset_l = offset_{l-1} - p * stride_{l-1}

Pointwise layers (ReLU, LRN, batch norm, dropout, identity) change nothing.  The deconvnet (``zf.deconv``) crops with
the same windows, so a projection is zero outside its unit's box.

    >>> from zf.models import zfnet
    >>> receptive_fields(zfnet())["pool5"]
    RF(size=171, stride=32, offset=-59, out_size=6)
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from zf.layers import layer_table

POINTWISE = (nn.ReLU, nn.LocalResponseNorm, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)


@dataclass(frozen=True)
class RF:
    """Receptive field of the units of one layer (square kernels assumed; rows and columns alike).

    size: side of a unit's box in input pixels.  stride: input pixels between neighbouring units.
    offset: first pixel of unit (0, 0)'s box (= minus the accumulated padding; the box's centre is
    ``offset + (size - 1) / 2``).  out_size: side of the layer's map for the ``input_size`` it was computed at.
    """

    size: int
    stride: int
    offset: int
    out_size: int

    def start(self, y):
        """First input pixel of unit row (or column) ``y`` (int or array)."""
        return y * self.stride + self.offset

    def center(self, y):
        """Centre of unit ``y``'s box in input pixels (may be a half-integer)."""
        return y * self.stride + self.offset + (self.size - 1) / 2


def _square(v: Any, what: str, module: nn.Module) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ValueError(f"{type(module).__name__}: non-square {what} {v} is not supported")
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
            raise ValueError(f"{type(module).__name__}: dilation {dil} is not supported")
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


def receptive_fields(model: nn.Module, input_size: int = 224) -> "OrderedDict[str, RF]":
    """RF of every layer of ``model.features``, by the names of ``zf.layers.layer_table`` in forward order."""
    size, stride, offset, n = 1, 1, 0, input_size
    out: OrderedDict[str, RF] = OrderedDict()
    for name, layer in layer_table(model).items():
        if layer.index is None:
            continue
        try:
            g = geometry(layer.module)
        except ValueError as e:
            raise ValueError(f"receptive field of {layer.path} ({name}): {e}") from None
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
    y0 = y * rf.stride + rf.offset
    x0 = x * rf.stride + rf.offset
    y1, x1 = y0 + rf.size, x0 + rf.size
    cy0, cy1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    cx0, cx1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    vals = [y0, y1, x0, x1, cy0, cy1, cx0, cx1, cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1]
    if scalar:
        vals = [int(v) for v in vals]
    return Box(*vals)


__all__ = ["RF", "Box", "receptive_fields", "unit_box", "geometry", "out_size"]
