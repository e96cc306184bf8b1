"""Layer names a user can type, for any network with a ``features`` sequence (zfnet, AlexNet, VGG16, ...).

Names follow the papers: ``conv1 ... conv5`` with ``relu``, ``pool``, ``norm`` and ``drop`` of the same number after
each conv (ZF, AlexNet), or ``conv1_1 ... conv5_3`` and ``pool1 ... pool5`` by block (VGG: any model whose class
is named ``VGG``, as torchvision's and timm's are, or that sets ``layer_naming = "block"``; ``"sequential"`` turns it
off), so that one architecture has one set of names whichever family built it; linear layers of ``classifier`` are
``fc6, fc7, fc8``.  The integers 1..5 (or "1".."5") name the paper's convolutional layers.

The *tap* of a layer is where its activations are read:

- ``"relu"`` (default): after the layer's ReLU, the rectified maps the deconvnet starts from (paper section 2.1).
- ``"conv"``: the convolution's raw output, before the ReLU.
- ``"output"``: the end of the layer's block, after its pool and normalisation if it has them (the input of the
  next layer).
"""
from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from zf.errors import ConfigError, LayerError
from zf.net.modules import find_module, module_paths

TAPS = ("relu", "conv", "output")


@dataclass(frozen=True)
class Layer:
    """A named module: ``name`` as a user types it, ``path`` as in ``model.named_modules()``, ``index`` in
    ``model.features`` (or ``None`` in the classifier)."""

    name: str
    path: str
    module: nn.Module
    index: int | None


def block_named(model: nn.Module) -> bool:
    """Whether ``model``'s layers are named by block (``conv4_3``): ``layer_naming`` when the model sets it, else
    whether it is a VGG (torchvision's and timm's classes are both ``VGG``)."""
    naming = getattr(model, "layer_naming", None)
    return naming == "block" if naming is not None else type(model).__name__ == "VGG"


def layer_table(model: nn.Module) -> "OrderedDict[str, Layer]":
    """Every nameable layer of ``model``, in forward order."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise TypeError(f"{type(model).__name__} has no `features` nn.Sequential; zf names and inverts layers of "
                        "models built as features -> classifier (zfnet, torchvision AlexNet/VGG, or your own)")
    block = block_named(model)
    table: OrderedDict[str, Layer] = OrderedDict()
    conv, blk, in_blk, seen = 0, 1, 0, {}
    for i, (key, m) in enumerate(features.named_children()):
        if isinstance(m, nn.Conv2d):
            conv += 1
            in_blk += 1
        tag = f"{blk}_{in_blk}" if block else str(conv)
        if isinstance(m, nn.Conv2d):
            kind = "conv"
        elif isinstance(m, nn.ReLU):
            kind = "relu"
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            kind, tag = "pool", (str(blk) if block else str(conv))
        elif isinstance(m, nn.LocalResponseNorm):
            kind = "norm"
        elif isinstance(m, (nn.BatchNorm2d,)):
            kind = "bn"
        elif isinstance(m, (nn.Dropout, nn.Dropout2d)):
            kind = "drop"
        else:
            kind = type(m).__name__.lower()
        name = key if not key.isdigit() else f"{kind}{tag}"
        # a second module of the same kind after one conv (rare): suffix it
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 0
        table[name] = Layer(name, f"features.{key}", m, i)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            blk, in_blk = blk + 1, 0
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential):
        fc = 5
        for key, m in classifier.named_children():
            if isinstance(m, nn.Linear):
                fc += 1
            kind = {nn.Linear: "fc", nn.ReLU: "relu", nn.Dropout: "drop"}.get(type(m), type(m).__name__.lower())
            name = key if not key.isdigit() else f"{kind}{fc}"
            if name in table:
                name = f"{name}_fc"
            table[name] = Layer(name, f"classifier.{key}", m, None)
    return table


def layer_names(model: nn.Module, kind: str | None = "conv") -> list[str]:
    """Names of ``model``'s layers of one kind (``conv``, ``relu``, ``pool``, ``fc``...; ``None`` for all)."""
    table = layer_table(model)
    if kind is None:
        return list(table)
    types = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": (nn.MaxPool2d, nn.AvgPool2d), "fc": nn.Linear,
             "norm": nn.LocalResponseNorm}[kind]
    return [n for n, l in table.items() if isinstance(l.module, types)]


def is_stack(model: nn.Module) -> bool:
    """Whether ``model.features`` is an ``nn.Sequential`` of leaf modules (zfnet, AlexNet, VGG): the nets named by
    ``layer_table`` and projected by ``zf.projection.stack``'s window path.  Any other model goes through
    ``zf.projection.graph``."""
    features = getattr(model, "features", None)
    return isinstance(features, nn.Sequential) and all(next(m.children(), None) is None for m in features)


def _resolve_graph(model: nn.Module, layer: int | str) -> Layer:
    key = str(layer)
    if key not in module_paths(model) and isinstance(getattr(model, "features", None), nn.Sequential):
        table = layer_table(model)  # names of the features' children (denseblock3, ...), as for stacks
        if key in table:
            key = table[key].path
    return Layer(key, key, find_module(model, key), None)


def resolve_layer(model: nn.Module, layer: int | str, tap: str = "relu") -> Layer:
    """The module whose output is the activation of ``layer`` at ``tap`` (see the module docstring).

    ``layer`` is an integer 1..5 (the paper's convolutional layers: the i-th conv, or the last conv of block i for
    block-named models), a layer name (``conv4``, ``pool5``, ``fc6``, ``conv5_3``) or a module path
    (``features.9``).  Raises ``zf.errors.LayerError`` (a ``KeyError``) naming close matches.

    Any other model (``is_stack`` false: ResNet, DenseNet, GoogLeNet...): ``layer`` is a module path (``layer3``,
    ``layer3.1.relu``), or the name of a child of its ``features`` (``denseblock3``); the Layer's ``name`` and
    ``path`` are the module path, its ``index`` is ``None``, and the module's output (at its last call) is read
    whatever ``tap`` is.
    """
    if tap not in TAPS:
        raise ConfigError(f"tap={tap!r}: use one of {TAPS}")
    if not is_stack(model):
        return _resolve_graph(model, layer)
    table = layer_table(model)
    key = str(layer)
    convs = layer_names(model, "conv")
    if key.isdigit():
        i = int(key)
        if block_named(model):
            cands = [n for n in convs if n.startswith(f"conv{i}_")]
            key = cands[-1] if cands else key
        elif 1 <= i <= len(convs):
            key = convs[i - 1]
    by_path = {l.path: l for l in table.values()}
    if key in by_path:
        key = by_path[key].name
    if key not in table:
        close = difflib.get_close_matches(key, list(table) + list(by_path), n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}; " if close else ""
        if block_named(model):  # the integers name blocks: their last conv
            blocks = sorted({int(n[4:].split("_")[0]) for n in convs})
            numbers = f"1..{len(blocks)} for the last conv of each block" if blocks else "no numbers"
        else:
            numbers = f"1..{len(convs)} for the conv layers"
        raise LayerError(f"layer {layer!r} does not exist in {type(model).__name__}; {hint}layers: "
                         f"{', '.join(table)} (or {numbers}; list_layers=true lists them)")
    names = list(table)
    at = table[key]
    if tap == "conv" or not isinstance(at.module, (nn.Conv2d, nn.Linear)):
        return at
    # walk forward from the conv/fc to its ReLU ("relu") or to the end of its block ("output")
    j = names.index(key)
    out = at
    for n in names[j + 1:]:
        m = table[n].module
        if isinstance(m, (nn.Conv2d, nn.Linear)) or (table[n].index is None) != (at.index is None):
            break
        if tap == "relu":
            if isinstance(m, nn.ReLU):
                return table[n]
            continue
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            continue
        out = table[n]
    return out
