"""``list_layers``: every layer of any network a user can pick (a module with a 4-D output), with its type,
output shape and receptive field, as rows or as an aligned text table (``scripts/run.py list_layers=true``)."""
from __future__ import annotations

from typing import NamedTuple, Sequence

from torch import nn

from zf.net.modules import minable_layers, module_paths
from zf.net.receptive import graph_receptive_fields


class LayerRow(NamedTuple):
    path: str
    type: str
    shape: tuple  # (C, h, w) at the input size
    channels: int
    rf_size: tuple  # (rows, columns) in input pixels
    rf_stride: tuple


def list_layers(model: nn.Module, input_size: int | tuple[int, int] = 224) -> list[LayerRow]:
    """One row per minable module (a module with a 4-D output), in the order the forward finishes them, with its
    receptive field (``zf.net.receptive.graph_receptive_fields``) at ``input_size``."""
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    mods = module_paths(model)
    layers = minable_layers(model, hw)
    rfs = graph_receptive_fields(model, hw, [p for p, _ in layers])
    return [LayerRow(p, type(mods[p]).__name__, shape, shape[0], rfs[p].size_hw, rfs[p].stride_hw)
            for p, shape in layers]


def format_layers(rows: Sequence[LayerRow]) -> str:
    """``list_layers`` as an aligned text table."""
    lines = [f"{'path':40s} {'type':24s} {'output (C, h, w)':20s} {'RF size':12s} stride"]
    for r in rows:
        lines.append(f"{r.path:40s} {r.type:24s} {str(r.shape):20s} {'x'.join(map(str, r.rf_size)):12s} "
                     f"{'x'.join(map(str, r.rf_stride))}")
    return "\n".join(lines)


__all__ = ["LayerRow", "list_layers", "format_layers"]
