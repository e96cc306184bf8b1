"""Model factories: the Zeiler-Fergus network (Fig. 3 of arXiv:1311.2901), torchvision's AlexNet and VGG16, any
torchvision or timm model, your own module (``custom_model``), and ``build_model``, the one entry a config uses.

``zfnet``, ``alexnet`` and ``vgg16`` return a module with a ``features`` ``nn.Sequential`` (the convolutional part
the deconvnet inverts) and a ``classifier`` ``nn.Sequential``; ``zf.net.layers`` gives their layers the names a user
types (``conv4``, ``pool5``, ``fc6``, or the paper's integers 1..5).  Any other model (``torchvision_model``,
``timm_model``, ``custom_model``) is used as it is: its layers are module paths (``zf.net.modules``) and it is
projected by the graph engine unless it too is a ``features`` stack.  Weights come from ``zf.net.checkpoints``.

    >>> from zf.net.models import zfnet
    >>> model = zfnet(num_classes=10, width=0.25)
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torchvision.models
from torch import nn

from zf.errors import CheckpointError, ConfigError
from zf.net.checkpoints import (  # noqa: F401
    DEFAULT_CHECKPOINT,
    EVOLUTION_SNAPSHOTS,
    WEIGHTS_DIR,
    WEIGHTS_HELP,
    first_line,
    load_state_dict,
    load_weights,
    random_weights,
    read_checkpoint,
    require_loaded,
    state_dict_of,
)
from zf.net.external import (TIMM_WEIGHTS_HELP, custom_model, resolve_weights, timm_model,  # noqa: F401
                              torchvision_cache_file, torchvision_model, torchvision_names)

#: Channel counts of conv1..conv5 and the sizes of fc6, fc7 in the paper (Fig. 3).
ZF_CHANNELS = (96, 256, 384, 384, 256)
ZF_FC = (4096, 4096)


class ZFNet(nn.Module):
    """The ZF network.  ``features`` -> ``avgpool`` -> flatten -> ``classifier``.

    ``arch`` holds the factory's keyword arguments, so ``zfnet(**model.arch)`` rebuilds the same network (the
    checkpoint stores it).
    """

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, pool_size: int | None, arch: dict):
        super().__init__()
        self.features = features
        # Adaptive pooling to the 6x6 that a 224 input gives anyway (so it is the identity there, as in
        # torchvision's AlexNet); it lets a network trained on smaller crops run on 224 images and vice versa.
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size) if pool_size else nn.Identity()
        self.classifier = classifier
        self.arch = dict(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) normalised images -> (N, num_classes) logits."""
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _scaled(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


def zfnet(
    num_classes: int = 1000,
    width: float = 1.0,
    channels: Sequence[int] = ZF_CHANNELS,
    fc: Sequence[int] = ZF_FC,
    conv1: Sequence[int] = (7, 2, 1),
    norm: str = "lrn",
    lrn_size: int = 5,
    lrn_alpha: float = 1e-4,
    lrn_beta: float = 0.75,
    lrn_k: float = 2.0,
    dropout: float = 0.5,
    remove: Sequence[str] = (),
    pool_size: int | None = 6,
    init: str = "default",
) -> ZFNet:
    """The network of Fig. 3: conv1 7x7/2 -> ReLU -> max 3x3/2 -> norm; conv2 5x5/2 -> ReLU -> max 3x3/2 -> norm;
    conv3, conv4, conv5 3x3/1 + ReLU; max 3x3/2; fc6, fc7 (ReLU, dropout); fc8.

    Padding (the paper's Fig. 3 gives map sizes, not padding; its sizes fit one convention): conv1 1, pool1 and pool2 1,
    conv2 0, conv3-5 1, pool5 0, which gives maps 110, 55, 26, 13, 13, 13, 13, 6 pixels wide for a 224 input at any
    width.

    Args:
        num_classes: size of fc8.
        width: multiplies every channel count and both fc sizes (0.25 trains on a CPU).
        channels: conv1..conv5 channel counts before ``width`` (Table 3's "conv3/4/5 512/1024/512" changes these).
        fc: fc6, fc7 sizes before ``width``.
        conv1: (kernel, stride, padding) of conv1; ``(11, 4, 2)`` gives AlexNet's first layer (Fig. 6b).
        norm: ``"lrn"`` (contrast normalisation across maps after pool1 and pool2, the paper's order) or ``"none"``.
            The paper gives no parameters; ``lrn_*`` default to Krizhevsky et al.'s (n=5, alpha=1e-4, beta=0.75,
            k=2), in PyTorch's convention where alpha is divided by the window size.
        dropout: dropout probability in fc6 and fc7.
        remove: layers to drop for the Table 3 ablations, any of ``conv3 conv4 fc6 fc7``; the remaining layers keep
            their names, so ``conv5`` is still ``conv5``.
        pool_size: side of the adaptive average pool before fc6 (6 = the paper's 6x6 at 224; ``None`` for none).
        init: ``"default"`` (PyTorch's) or ``"paper"`` (weights N(0, 1e-2), biases 0; section 3).
    """
    unknown = set(remove) - {"conv3", "conv4", "fc6", "fc7"}
    if unknown:
        raise ValueError(f"zfnet(remove=...) can drop conv3, conv4, fc6, fc7; not {sorted(unknown)}")
    if norm not in ("lrn", "none"):
        raise ValueError(f"zfnet(norm={norm!r}): use 'lrn' or 'none'")
    arch = dict(num_classes=num_classes, width=width, channels=list(channels), fc=list(fc), conv1=list(conv1),
                norm=norm, lrn_size=lrn_size, lrn_alpha=lrn_alpha, lrn_beta=lrn_beta, lrn_k=lrn_k, dropout=dropout,
                remove=list(remove), pool_size=pool_size, init=init)
    c = [_scaled(n, width) for n in channels]
    k1, s1, p1 = conv1

    def normalisation():
        return nn.LocalResponseNorm(lrn_size, alpha=lrn_alpha, beta=lrn_beta, k=lrn_k) if norm == "lrn" else None

    layers: list[tuple[str, nn.Module | None]] = [
        ("conv1", nn.Conv2d(3, c[0], k1, s1, p1)), ("relu1", nn.ReLU(inplace=False)),
        ("pool1", nn.MaxPool2d(3, 2, 1)), ("norm1", normalisation()),
        ("conv2", nn.Conv2d(c[0], c[1], 5, 2, 0)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(3, 2, 1)), ("norm2", normalisation()),
    ]
    cin = c[1]
    for i in (3, 4, 5):
        if f"conv{i}" in remove:
            continue
        layers += [(f"conv{i}", nn.Conv2d(cin, c[i - 1], 3, 1, 1)), (f"relu{i}", nn.ReLU())]
        cin = c[i - 1]
    layers.append(("pool5", nn.MaxPool2d(3, 2, 0)))
    features = nn.Sequential(OrderedDict((n, m) for n, m in layers if m is not None))

    fin = cin * (pool_size or 6) ** 2
    head: list[tuple[str, nn.Module]] = []
    for i, n in zip((6, 7), fc):
        if f"fc{i}" in remove:
            continue
        n = _scaled(n, width)
        head += [(f"fc{i}", nn.Linear(fin, n)), (f"relu{i}", nn.ReLU()), (f"drop{i}", nn.Dropout(dropout))]
        fin = n
    head.append(("fc8", nn.Linear(fin, num_classes)))
    model = ZFNet(features, nn.Sequential(OrderedDict(head)), pool_size, arch)
    if init == "paper":
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 1e-2)
                nn.init.zeros_(m.bias)
    elif init != "default":
        raise ValueError(f"zfnet(init={init!r}): use 'default' or 'paper'")
    return model


def alexnet(num_classes: int = 1000, weights: str | os.PathLike | None = None) -> nn.Module:
    """torchvision's AlexNet, with weights from a file, the hub cache (``weights="cache"``), or random (``None`` or
    ``"random"``; recorded in ``model.zf_weights``)."""
    return torchvision_model("alexnet", num_classes=num_classes, weights=weights or "random")


def vgg16(num_classes: int = 1000, weights: str | os.PathLike | None = None) -> nn.Module:
    """torchvision's VGG16 (no batch norm), with weights from a file, the hub cache (``weights="cache"``), or random
    (``None`` or ``"random"``).  A file with only ``features.*`` (a conv trunk) loads with the classifier random.

    Its layers are named by block, as in the VGG paper: ``conv1_1 ... conv5_3``, ``pool1 ... pool5``."""
    model = torchvision_model("vgg16", num_classes=num_classes, weights=weights or "random")
    model.layer_naming = "block"
    return model


# ---------------------------------------------------------------------------------------------------------------
# zf checkpoints


def load_zfnet(path: str | os.PathLike = DEFAULT_CHECKPOINT, arch: dict | None = None) -> ZFNet:
    """Rebuild a ``zfnet`` from a checkpoint written by ``zf.training.train``, or from a bare state dict with ``arch``
    giving the architecture (``num_classes`` is read from fc8 when not given).  A checkpoint's stored architecture wins
    over ``arch``.  The checkpoint's ``meta`` (class names, normalisation, input size) lands in ``model.meta``."""
    path = Path(path).expanduser()
    obj = read_checkpoint(path, "checkpoint")
    if isinstance(obj, dict) and "model" in obj and "arch" in obj:
        arch, state, meta = obj["arch"], state_dict_of(obj, str(path)), obj.get("meta", {})
    else:
        state, meta = state_dict_of(obj, str(path)), {}
        arch = dict(arch or {})
        if "num_classes" not in arch and "classifier.fc8.weight" in state:
            arch["num_classes"] = state["classifier.fc8.weight"].shape[0]
    model = zfnet(**arch)
    load_weights(model, {k: v.float() for k, v in state.items()}, str(path), partial=False)
    model.meta = dict(meta)
    return model.eval()


#: ``build_model(name=...)`` families besides zfnet.
FAMILIES = ("zfnet", "alexnet", "vgg16", "torchvision", "timm", "custom")


def build_model(name: str = "zfnet", checkpoint: str | None = None, weights: str | None = None,
                num_classes: int | None = None, *, arch_name: str | None = None,
                target: str | None = None, **arch) -> nn.Module:
    """One entry point for configs (``model.name`` is the family):

    - ``zfnet``: from ``checkpoint`` (``"default"``: the shipped Imagenette model; or a file), or fresh weights
      built from ``arch`` (training) when ``checkpoint`` is null; ``arch`` also describes a bare state dict.
    - ``alexnet``, ``vgg16``: torchvision's.
    - ``torchvision``: any torchvision classification model, ``arch_name="resnet50"``.
    - ``timm``: any timm model, ``arch_name="resnet50"`` (``pip install 'zf[timm]'``).
    - ``custom``: your own, ``target="my_pkg.my_module.MyNet"`` (or ``arch={"_target_": ...}`` as in Hydra), called
      with the rest of ``arch``.

    For every family but zfnet ``weights`` is required: a file, ``"cache"`` (torchvision's file in the torch hub
    cache), or ``"random"``; none is a ``CheckpointError`` (it used to run on random weights without a word).
    ``arch`` is passed to torchvision's / timm's builder or to ``target``."""
    if name == "zfnet":
        if num_classes is not None:
            arch["num_classes"] = num_classes
        if str(weights) == "random":  # random wins over the config's default checkpoint
            if checkpoint and checkpoint != "default":
                raise ConfigError(f"model zfnet: model.weights=random and model.checkpoint={checkpoint}: give one "
                                  "(model.checkpoint=null model.weights=random for random weights)")
            return random_weights(zfnet(**arch)).eval()
        if weights:  # a weights file: the checkpoint the family reads
            if checkpoint and checkpoint != "default" and str(checkpoint) != str(weights):
                raise ConfigError(f"model zfnet: give model.weights or model.checkpoint, not both")
            checkpoint = weights
        if checkpoint:
            path = DEFAULT_CHECKPOINT if checkpoint == "default" else checkpoint
            return load_zfnet(path, arch)
        return random_weights(zfnet(**arch)).eval()
    if name not in FAMILIES:
        raise ConfigError(f"model.name={name!r} is not a model family: use one of {', '.join(FAMILIES)} "
                          f"(model=torchvision model.arch_name={name} for a torchvision model)")
    if checkpoint:
        if weights:
            raise ConfigError(f"model {name}: give model.weights or model.checkpoint, not both")
        weights = checkpoint
    if weights != "cache":
        weights = resolve_weights(weights, arch_name or target or name,
                                  help=TIMM_WEIGHTS_HELP if name == "timm" else WEIGHTS_HELP)
    n = num_classes or 1000
    if name in ("alexnet", "vgg16"):
        if arch:
            warnings.warn(f"{name}: architecture options {sorted(arch)} are ignored (torchvision builds it)")
        return {"alexnet": alexnet, "vgg16": vgg16}[name](num_classes=n, weights=weights).eval()
    if name in ("torchvision", "timm"):
        if not arch_name:
            raise ConfigError(f"model={name} needs model.arch_name, e.g. model.arch_name=resnet50")
        factory = torchvision_model if name == "torchvision" else timm_model
        return factory(arch_name, num_classes=n, weights=weights, **arch).eval()
    target = target or arch.pop("_target_", None)
    if not target:
        raise ConfigError("model=custom needs model.target=my_pkg.my_module.MyNet (the class or function that "
                          "builds your network)")
    return custom_model(target, num_classes=num_classes, weights=weights, **arch).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ZFNet", "zfnet", "alexnet", "vgg16", "torchvision_model", "timm_model", "custom_model", "load_zfnet",
           "build_model", "load_state_dict", "load_weights", "read_checkpoint", "require_loaded", "random_weights",
           "DEFAULT_CHECKPOINT", "EVOLUTION_SNAPSHOTS", "WEIGHTS_DIR", "count_parameters"]
