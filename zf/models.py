"""Model factories: the Zeiler-Fergus network (Fig. 3 of arXiv:1311.2901) and torchvision's AlexNet and VGG16.

Every factory returns a module with a ``features`` ``nn.Sequential`` (the convolutional part the deconvnet inverts)
and a ``classifier`` ``nn.Sequential``; ``zf.layers`` gives their layers the names a user types (``conv4``, ``pool5``,
``fc6``, or the paper's integers 1..5).

    >>> from zf.models import zfnet
    >>> model = zfnet(num_classes=10, width=0.25)
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

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

    Padding (PAPER.md: the figure's sizes fit one convention): conv1 1, pool1 and pool2 1, conv2 0, conv3-5 1, pool5 0,
    which gives maps 110, 55, 26, 13, 13, 13, 13, 6 pixels wide for a 224 input at any width.

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


# ---------------------------------------------------------------------------------------------------------------
# torchvision models with local weights


def _torchvision_weights(name: str, weights: str | os.PathLike | None) -> dict | None:
    """The state dict for torchvision's ``name``: from ``weights`` (a file path), or from the torch hub cache when
    ``weights == "cache"`` (the file torchvision would download, if it is already there).  Never downloads."""
    if weights is None:
        return None
    if str(weights) == "cache":
        import torchvision.models as tvm

        enum = {"alexnet": tvm.AlexNet_Weights.IMAGENET1K_V1, "vgg16": tvm.VGG16_Weights.IMAGENET1K_V1}[name]
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        if not path.is_file():
            raise FileNotFoundError(
                f"{name}: no cached torchvision weights at {path}. Copy the file from a machine that has it, or pass "
                f"weights=/path/to/{Path(enum.url).name}.")
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{name}: weights file {path} does not exist")
    return load_state_dict(path)


def load_state_dict(path: str | os.PathLike) -> dict:
    """Load a state dict (or a zf checkpoint's ``model`` entry) with ``weights_only=True``."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    return obj


def _load_into(model: nn.Module, state: dict, source: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(f"the weights in {source} do not fit this model; check the architecture options "
                           f"(width, num_classes, ...).\n{e}") from None


def alexnet(num_classes: int = 1000, weights: str | os.PathLike | None = None) -> nn.Module:
    """torchvision's AlexNet, with weights from a file or the hub cache (``weights="cache"``)."""
    import torchvision

    model = torchvision.models.alexnet(weights=None, num_classes=num_classes)
    state = _torchvision_weights("alexnet", weights)
    if state is not None:
        _load_into(model, state, str(weights))
    return model


def vgg16(num_classes: int = 1000, weights: str | os.PathLike | None = None) -> nn.Module:
    """torchvision's VGG16 (no batch norm), with weights from a file or the hub cache (``weights="cache"``).

    Its layers are named by block, as in the VGG paper: ``conv1_1 ... conv5_3``, ``pool1 ... pool5``."""
    import torchvision

    model = torchvision.models.vgg16(weights=None, num_classes=num_classes)
    model.layer_naming = "block"
    state = _torchvision_weights("vgg16", weights)
    if state is not None:
        _load_into(model, state, str(weights))
    return model


# ---------------------------------------------------------------------------------------------------------------
# zf checkpoints

#: The checkpoint shipped with the package, trained on Imagenette (see checkpoints/MODEL_CARD.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "zfnet_imagenette.pt"


def load_zfnet(path: str | os.PathLike = DEFAULT_CHECKPOINT, arch: dict | None = None) -> ZFNet:
    """Rebuild a ``zfnet`` from a checkpoint written by ``zf.train``, or from a bare state dict with ``arch`` giving
    the architecture (``num_classes`` is read from fc8 when not given).  A checkpoint's stored architecture wins over
    ``arch``.  The checkpoint's ``meta`` (class names, normalisation, input size) lands in ``model.meta``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj and "arch" in obj:
        arch, state, meta = obj["arch"], obj["model"], obj.get("meta", {})
    else:
        state, meta = (obj["model"] if isinstance(obj, dict) and "model" in obj else obj), {}
        arch = dict(arch or {})
        if "num_classes" not in arch and "classifier.fc8.weight" in state:
            arch["num_classes"] = state["classifier.fc8.weight"].shape[0]
    model = zfnet(**arch)
    _load_into(model, {k: v.float() for k, v in state.items()}, str(path))
    model.meta = dict(meta)
    return model.eval()


def build_model(name: str = "zfnet", checkpoint: str | None = None, weights: str | None = None,
                num_classes: int | None = None, **arch) -> nn.Module:
    """One entry point for configs: ``zfnet`` (from ``checkpoint``, or fresh with ``arch``), ``alexnet``, ``vgg16``.

    For ``zfnet``, ``checkpoint="default"`` is the shipped Imagenette model; ``arch`` describes a bare state dict."""
    if name == "zfnet":
        if num_classes is not None:
            arch["num_classes"] = num_classes
        if checkpoint:
            path = DEFAULT_CHECKPOINT if checkpoint == "default" else checkpoint
            return load_zfnet(path, arch)
        return zfnet(**arch).eval()
    if arch:
        warnings.warn(f"{name}: architecture options {sorted(arch)} are ignored (torchvision builds it)")
    factory = {"alexnet": alexnet, "vgg16": vgg16}.get(name)
    if factory is None:
        raise ValueError(f"unknown model {name!r}: use zfnet, alexnet or vgg16")
    return factory(num_classes=num_classes or 1000, weights=weights).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ZFNet", "zfnet", "alexnet", "vgg16", "load_zfnet", "build_model", "load_state_dict", "DEFAULT_CHECKPOINT",
           "count_parameters"]
