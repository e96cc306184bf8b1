"""Projections of single activations down to pixel space (the deconvnet of section 2.1, guided backpropagation
and the gradient), whatever the network: the entry points ``project``, ``project_windows``, ``activations`` and
``check_invertible``.  Each picks the engine: ``zf.projection.stack`` (windows on a ``features`` stack of leaf modules
it can reverse: zfnet, AlexNet, VGG) or ``zf.projection.graph`` (autograd on any network); both apply the rules of
``zf.projection.rules``.

    >>> rows = torch.tensor([[0, 5, 6, 6]])               # image 0, channel 5 of relu4, at (6, 6)
    >>> p = project(model, images, rows, layer=4)           # (1, 3, 224, 224)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zf.errors import ConfigError
from zf.net.layers import Layer, is_stack, resolve_layer
from zf.net.receptive import RF, graph_receptive_fields, receptive_fields
from zf.projection import stack
from zf.projection.graph import graph_activations, graph_windows, project_graph
from zf.projection.reversible import NotInvertibleError, fast_path, stack_obstacle
from zf.projection.rules import CROPS, METHODS, NORMS, ProjectionOptions, check_options
from zf.projection.windows import check_inputs, paste


def graph_layer(model: nn.Module, layer, tap: str) -> Layer:
    """The layer the graph engine projects for ``layer`` of a model ``fast_path`` turned down."""
    lay = resolve_layer(model, layer, tap)
    if is_stack(model) and lay.index is None:
        raise NotInvertibleError(f"{lay.name} is in the classifier of a features stack projected through "
                                 f"zf.projection.graph ({stack_obstacle(model)}); choose a layer of "
                                 "model.features")
    return lay


def check_invertible(model: nn.Module, layer: int | str, tap: str = "relu") -> Layer:
    """The layer ``resolve_layer(model, layer, tap)``, after checking every module between it and the pixels can be
    reversed; raises ``NotInvertibleError`` naming the first module that cannot (``features.3 (AvgPool2d)``).
    Models that are not ``features`` stacks go through the graph engine (autograd), which reverses anything."""
    if not fast_path(model):
        return graph_layer(model, layer, tap)
    return stack.target(model, layer, tap).layer


@dataclass(frozen=True)
class Target:
    """A layer resolved once for mining, projecting and drawing it: ``layer`` (its name, module path and module),
    the ``tap``, the receptive field ``rf`` of its units at the input size (``None`` for a classifier layer, whose
    units see the whole image), the ``engine`` that projects it (``"stack"`` or ``"graph"``) and, for the stack
    engine, its ``plan`` (how far the forward pass runs)."""

    layer: Layer
    tap: str
    rf: RF | None
    engine: str
    plan: stack.Target | None = None

    @property
    def name(self) -> str:
        return self.layer.name


def resolve_target(model: nn.Module, layer: int | str, tap: str = "relu",
                   input_size: int | tuple[int, int] = 224) -> Target:
    """``layer`` of ``model`` at ``tap`` as a ``Target``, after the checks of ``check_invertible``."""
    if fast_path(model):
        plan = stack.target(model, layer, tap)
        lay, engine = plan.layer, "stack"
    else:
        plan, lay, engine = None, graph_layer(model, layer, tap), "graph"
    if lay.index is None and is_stack(model):
        rf = None  # a classifier layer
    elif is_stack(model):
        rf = receptive_fields(model, input_size)[lay.name]
    else:
        rf = graph_receptive_fields(model, input_size, [lay.path])[lay.path]
    return Target(lay, tap, rf, engine, plan)


def target_windows(model: nn.Module, images: torch.Tensor, rows, target: Target, options: ProjectionOptions,
                   batch_size: int | None = None):
    """``project_windows`` for a resolved ``target`` with checked ``options``."""
    rows = check_inputs(images, rows, options.method, options.seed_mode)
    if target.engine == "graph":
        return graph_windows(model, images, rows, target.layer.path, options.method, options.seed_mode, batch_size,
                             options.crop)
    if target.plan.head is not None:
        raise ValueError(f"{target.name} is in the classifier: its receptive field is the whole image; use "
                         "project(..., crop=False)")
    return stack.windows(model, target.plan, images, rows, options.method, options.seed_mode, options.norm,
                         batch_size)


@torch.no_grad()
def activations(model: nn.Module, images: torch.Tensor, layer: int | str, tap: str = "relu") -> torch.Tensor:
    """The activations of ``layer`` at ``tap`` (see ``zf.net.layers``) for images (N, 3, H, W): (N, C, h, w), or
    (N, C, 1, 1) for a classifier layer.  Eval semantics whatever ``model.training`` is.  Any other model: the
    output of the module ``layer`` names (``zf.projection.graph.graph_activations``)."""
    if not fast_path(model):
        return graph_activations(model, images, resolve_layer(model, layer, tap).path)
    return stack.activations(model, stack.target(model, layer, tap), images)


def graph_crop(crop: bool | str) -> bool | None:
    """``project_graph``'s ``crop`` for the ``crop`` of ``project`` / ``project_windows``: ``"auto"`` or ``True``
    gives ``None`` (crops where ``zf.projection.graph.crop_check`` finds them exact), ``"off"`` or ``False`` gives
    ``False`` (whole images); anything else is a ``ConfigError``."""
    if crop is True or (isinstance(crop, str) and crop == "auto"):
        return None
    if crop is False or (isinstance(crop, str) and crop == "off"):
        return False
    raise ConfigError(f"crop={crop!r}: use one of {', '.join(CROPS)}")


def _check_args(images, rows, method, seed_mode, norm):
    check_options(method, seed_mode, norm)
    return check_inputs(images, rows, method, seed_mode)


def project_windows(model: nn.Module, images: torch.Tensor, rows: torch.Tensor, layer: int | str,
                    method: str = "deconvnet", seed_mode: str = "activation", tap: str = "relu", norm: str = "identity",
                    batch_size: int | None = None, crop: str | bool = "auto"):
    """Like ``project(..., crop=True)`` but without pasting: returns (windows, corners) with windows (R, 3, s, t)
    the projections inside each unit's receptive field (s = t = ``zf.net.receptive`` size, zero outside the image; a
    side longer than the image's is cut to the image, with corner 0) and corners (R, 2) the (y0, x0) of each
    window in the image (may be negative).  Mining crops patches from these
    without ever building (R, 3, H, W).  Any other model: ``zf.projection.graph.project_graph`` cut to the same windows
    (``batch_size`` is its ``chunk``, ``crop`` its ``crop``: ``"auto"`` or ``"off"``; the window engine's windows
    are exact on any crop and ignore it)."""
    rows = _check_args(images, rows, method, seed_mode, norm)
    gcrop = graph_crop(crop)
    if not fast_path(model):
        return graph_windows(model, images, rows, graph_layer(model, layer, tap).path, method, seed_mode, batch_size,
                             "auto" if gcrop is None else "off")
    t = stack.target(model, layer, tap)
    if t.head is not None:
        raise ValueError(f"{t.layer.name} is in the classifier: its receptive field is the whole image; use "
                         "project(..., crop=False)")
    return stack.windows(model, t, images, rows, method, seed_mode, norm, batch_size)


def project(model: nn.Module, images: torch.Tensor, rows: torch.Tensor, layer: int | str,
            method: str = "deconvnet", seed_mode: str = "activation", tap: str = "relu", norm: str = "identity",
            crop: bool | str = True, batch_size: int | None = None) -> torch.Tensor:
    """Project single activations down to pixel space (section 2.1).

    Args:
        model: a network with ``features`` (and ``classifier``): zfnet, torchvision AlexNet / VGG16.  Its
            ``training`` flag is ignored: dropout is off and batch norm uses running statistics.
        images: (N, 3, H, W) normalised model inputs.
        rows: (R, 4) long, one projection per row: (image index into ``images``, channel, y, x) of the activation at
            the layer's tap (y = x = 0 for a classifier layer).  Rows may mix images, channels and positions.
        layer: anything ``zf.net.layers.resolve_layer`` takes: 1..5, ``"conv4"``, ``"pool5"``, ``"fc6"``,
            ``"features.9"``.
        method: ``"deconvnet"`` (the paper), ``"guided"`` or ``"gradient"`` (``zf.projection.rules``).
        seed_mode: ``"activation"`` (the signal starts at the activation's value, as in the paper) or ``"one"``
            (1.0: the result is then the gradient-like map of the unit, as captum's Neuron* methods give).
        tap: ``"relu"``, ``"conv"`` or ``"output"`` (see ``zf.net.layers``).
        norm: LRN in the reverse path: ``"identity"`` (skipped) or ``"gradient"`` (its vector-Jacobian product).
        crop: reverse on receptive-field windows (fast; the default, also ``"auto"``).  ``False`` or ``"off"``:
            autograd on whole images (the reference; always used for classifier layers).
        batch_size: rows per reverse batch (default: sized to keep the window tensors near 256 MB with ``crop``,
            8 rows without).

    Any model that is not a ``features`` stack (``zf.net.layers.is_stack``: ResNet, DenseNet, GoogLeNet, ...) goes
    through ``zf.projection.graph.project_graph``: ``layer`` is a module path, ``tap`` and ``norm`` are ignored,
    ``batch_size`` is its ``chunk``; its receptive-field crops are used where checked exact
    (``zf.projection.graph.crop_check``), and ``crop=False`` / ``"off"`` turns them off.

    Returns:
        (R, 3, H, W) projections, zero outside each unit's receptive field (``zf.net.receptive.unit_box``).
    """
    rows = _check_args(images, rows, method, seed_mode, norm)
    gcrop = graph_crop(crop)
    if not fast_path(model):
        return project_graph(model, images, rows, graph_layer(model, layer, tap).path, method, seed_mode,
                             chunk=batch_size, crop=gcrop)
    t = stack.target(model, layer, tap)
    if gcrop is None and t.head is None:
        win, corners = stack.windows(model, t, images, rows, method, seed_mode, norm, batch_size)
        return paste(win, corners, tuple(images.shape[2:]))
    return stack.project_full(model, t, images, rows, method, seed_mode, norm, batch_size or 8)


__all__ = ["project", "project_windows", "activations", "check_invertible", "fast_path", "graph_layer", "graph_crop",
           "Target", "resolve_target", "target_windows", "NotInvertibleError", "METHODS", "NORMS"]
