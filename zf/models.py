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
from typing import Callable, Sequence

import torch
from torch import nn

from .errors import CheckpointError, ConfigError

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
# Weights: reading a file, fitting a state dict to a model, recording what stayed random
#
# Every model a config builds says where its weights came from: ``model.zf_weights`` is the file it loaded, or
# "random", and ``model.zf_missing`` lists the state-dict keys the file did not have (they keep their random
# initialisation; empty when everything was loaded).  ``require_loaded`` turns a missing part an analysis needs into
# an error.

#: What to tell a user who gave no weights, or weights that cannot be used.
WEIGHTS_HELP = ("pass model.weights=/path/to/weights.pth (a state dict), model.weights=cache (torchvision's file, "
                "if the torch hub cache has it), or model.weights=random for random weights")

#: The shipped checkpoint and its Fig. 4 snapshots, installed with the package (see zf/weights/MODEL_CARD.md).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: The checkpoint shipped with the package, trained on Imagenette (see zf/weights/MODEL_CARD.md).
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "zfnet_imagenette.pt"
#: Its conv weights at epochs 1, 2, 5, 10, 20 and 50 (Fig. 4, ``experiment=evolution``).
EVOLUTION_SNAPSHOTS = WEIGHTS_DIR / "evolution"

_STATE_KEYS = ("model", "state_dict", "model_state_dict", "model_state")


def read_checkpoint(path: str | os.PathLike, what: str = "weights file"):
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line ``CheckpointError``s naming the file when it
    is missing, is not a PyTorch checkpoint (corrupt, truncated, another format), or holds pickled Python objects
    that ``weights_only`` refuses.  A ``.safetensors`` file is read with safetensors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; check the path"
                              + ("" if what != "weights file" else f", or {WEIGHTS_HELP}"))
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path} is a safetensors file: pip install safetensors to read it") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__}: "
                                  f"{_first_line(e)}); check that it was copied whole") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises KeyError, EOFError, RuntimeError, UnpicklingError ... for a bad file
        msg = str(e)
        if "Unsupported global" in msg:
            what_global = msg.split("Unsupported global:", 1)[1].split(" was not", 1)[0].strip()
            raise CheckpointError(
                f"{path} holds pickled Python objects ({what_global}), which zf does not load (weights_only=True); "
                f"save a state dict instead: torch.save(model.state_dict(), '{path.name}')") from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (corrupt, truncated or another format: "
                              f"{type(e).__name__}); save it again with torch.save(model.state_dict(), ...) or copy "
                              f"it again") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def state_dict_of(obj, source: str) -> dict:
    """The tensors of a loaded file: a bare state dict, or the ``model`` / ``state_dict`` entry of a checkpoint."""
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {sorted(map(str, obj))[:6]}"
        raise CheckpointError(f"{source} holds a {kind}, not a state dict of tensors; save one with "
                              f"torch.save(model.state_dict(), ...)")
    return {str(k): v for k, v in obj.items()}


def load_state_dict(path: str | os.PathLike) -> dict:
    """Load a state dict (or a zf checkpoint's ``model`` entry) with ``weights_only=True``."""
    return state_dict_of(read_checkpoint(path), str(path))


def _remap(state: dict, wanted: set[str]) -> dict:
    """``state`` with a common prefix stripped (``module.``, ``model.``, ...) or added (``features.``) where that
    makes more of its keys name the model's; unchanged otherwise."""
    candidates = [state]
    # strip a leading component all keys share, repeatedly (module.model.x -> model.x -> x)
    stripped = state
    while True:
        heads = {k.split(".", 1)[0] for k in stripped}
        if len(heads) != 1 or not all("." in k for k in stripped):
            break
        stripped = {k.split(".", 1)[1]: v for k, v in stripped.items()}
        candidates.append(stripped)
    # add the prefix that puts a key where the model has it (a features-only dict saved from model.features)
    for c in list(candidates):
        for k in c:
            for w in wanted:
                if w.endswith("." + k):
                    p = w[: -len(k)]
                    candidates.append({p + kk: v for kk, v in c.items()})
            break  # the first key proposes the prefixes
    return max(candidates, key=lambda c: (len(wanted & set(c)), c is state))


def _groups(keys: Sequence[str], all_keys: Sequence[str]) -> list[str]:
    """Short names for a set of state-dict keys: ``classifier.*`` when a whole top-level module is in it, else the
    modules (``features.28.*``)."""
    out: list[str] = []
    for top in dict.fromkeys(k.split(".", 1)[0] for k in keys):
        mine = [k for k in keys if k.split(".", 1)[0] == top]
        if len(mine) == len([k for k in all_keys if k.split(".", 1)[0] == top]):
            out.append(f"{top}.*" if "." in mine[0] else top)
        else:
            out += list(dict.fromkeys(k.rsplit(".", 1)[0] + ".*" for k in mine))
    return out


def load_weights(model: nn.Module, state: dict, source: str, partial: bool = True) -> nn.Module:
    """Copy ``state`` into ``model`` and record it (``model.zf_weights = source``, ``model.zf_missing``).

    A common key prefix is stripped or added where that fits the model (``module.`` of DataParallel, a dict saved
    from ``model.features``).  Keys the model lacks, or tensors of another shape, are a ``CheckpointError`` naming
    ``source``.  Keys of the model that ``state`` lacks keep their random initialisation: with ``partial`` that
    warns once, naming them, and lists them in ``model.zf_missing``; without, it is an error."""
    target = model.state_dict()
    wanted = set(target)
    state = _remap(state, wanted)
    unexpected = [k for k in state if k not in wanted]
    if unexpected:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: it has {len(unexpected)} keys the model lacks "
            f"({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''}); check model.name / arch_name / "
            f"the architecture options (width, num_classes, ...)")
    wrong = [f"{k} {tuple(v.shape)} vs the model's {tuple(target[k].shape)}" for k, v in state.items()
             if not nn.parameter.is_lazy(target[k]) and v.shape != target[k].shape]
    if wrong:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {'; '.join(wrong[:3])}"
                              f"{'; ...' if len(wrong) > 3 else ''}; check the architecture options "
                              f"(width, num_classes, ...)")
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    if len(missing) == len([k for k in target if not k.endswith("num_batches_tracked")]):
        raise CheckpointError(f"{source} has none of {type(model).__name__}'s weights; check model.name / arch_name")
    if missing and not partial:
        raise CheckpointError(f"{source} lacks {', '.join(_groups(missing, list(target)))} of "
                              f"{type(model).__name__}; pass a complete state dict")
    model.load_state_dict(state, strict=False)
    model.zf_weights = source
    model.zf_missing = missing
    if missing:
        warnings.warn(f"{source} holds only part of {type(model).__name__}: "
                      f"{', '.join(_groups(missing, list(target)))} stayed random (model.zf_missing lists the keys)",
                      stacklevel=2)
    return model


def random_weights(model: nn.Module) -> nn.Module:
    """Mark ``model`` as running on its random initialisation (``model.zf_weights = "random"``)."""
    model.zf_weights = "random"
    model.zf_missing = []
    return model


def require_loaded(model: nn.Module, prefix: str, what: str) -> None:
    """Raise ``CheckpointError`` if the weights under ``prefix`` (``"classifier."``) stayed random because the
    loaded file did not have them: ``require_loaded(model, "classifier.", "occlusion")`` before a pass that needs
    the class scores."""
    missing = [k for k in getattr(model, "zf_missing", ()) if k.startswith(prefix)]
    if missing:
        source = getattr(model, "zf_weights", "the weights file")
        part = f"the {prefix.rstrip('.')} ({prefix}*)" if prefix else "every weight of the model"
        raise CheckpointError(
            f"{what} needs {part}, but some stayed random: {source} has no "
            f"{', '.join(_groups(missing, missing))}; pass model.weights=<a file that has them>")


# ---------------------------------------------------------------------------------------------------------------
# torchvision, timm and your own modules


def _suggest(name: str, names: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def torchvision_names() -> list[str]:
    """The classification models ``torchvision.models.get_model`` builds by name."""
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def torchvision_cache_file(arch_name: str) -> Path:
    """The file torchvision would download for ``arch_name``'s weights, in the torch hub cache: the DEFAULT weights'
    file if it is there, else any other ImageNet weights of that model that are.  Never downloads."""
    import torchvision.models

    enum = torchvision.models.get_model_weights(arch_name)
    members = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for w in members:
        path = folder / Path(w.url).name
        if path.is_file():
            return path
    raise CheckpointError(
        f"{arch_name}: no cached torchvision weights in {folder} (looked for {Path(enum.DEFAULT.url).name}); copy the "
        f"file there from a machine that has it, or pass model.weights=/path/to/{Path(enum.DEFAULT.url).name}")


def _resolve_weights(weights, name: str, cache: Callable[[], Path] | None = None):
    """``None`` (no weights given: an error), ``"random"``, or the path to load (``"cache"`` through ``cache``)."""
    if weights is None or str(weights).strip() == "":
        raise CheckpointError(f"model {name}: no weights given; {WEIGHTS_HELP}")
    if str(weights) == "random":
        return "random"
    if str(weights) == "cache":
        if cache is None:
            raise CheckpointError(f"model {name}: weights=cache finds torchvision's files only; pass "
                                  f"model.weights=/path/to/the/file")
        return cache()
    return Path(weights).expanduser()


def _with_weights(model: nn.Module, weights, name: str, cache: Callable[[], Path] | None = None,
                  partial: bool = True) -> nn.Module:
    w = _resolve_weights(weights, name, cache)
    if w == "random":
        return random_weights(model)
    return load_weights(model, load_state_dict(w), str(w), partial=partial)


def torchvision_model(arch_name: str, num_classes: int = 1000, weights: str | os.PathLike | None = "random",
                      **kwargs) -> nn.Module:
    """Any torchvision classification model by name (``resnet50``, ``vgg16_bn``, ``convnext_tiny``, ...):
    ``torchvision.models.get_model(arch_name, weights=None, num_classes=..., **kwargs)``, then ``weights``: a file,
    ``"cache"`` (the file torchvision would download, from the torch hub cache; never downloaded) or ``"random"``."""
    import torchvision.models

    names = torchvision_names()
    if arch_name not in names:
        raise ConfigError(f"model.arch_name={arch_name!r} is not a torchvision classification model"
                          f"{_suggest(str(arch_name), names)}; torchvision.models.list_models(module=torchvision.models)"
                          f" lists them")
    model = torchvision.models.get_model(arch_name, weights=None, num_classes=num_classes, **kwargs)
    return _with_weights(model, weights, arch_name, lambda: torchvision_cache_file(arch_name))


def timm_model(arch_name: str, num_classes: int = 1000, weights: str | os.PathLike | None = "random",
               **kwargs) -> nn.Module:
    """A timm model by name (needs the optional extra: ``pip install 'zf[timm]'``), with ``weights`` a file (a
    ``.pth`` state dict or timm's ``model.safetensors``) or ``"random"``.  timm's own downloads are never made."""
    try:
        import timm
    except ImportError:
        raise ConfigError("model=timm needs the timm package, an optional extra: pip install 'zf[timm]' "
                          "(or pip install timm)") from None
    if not timm.is_model(arch_name):
        raise ConfigError(f"model.arch_name={arch_name!r} is not a timm model"
                          f"{_suggest(str(arch_name), timm.list_models())}; timm.list_models() lists them")
    model = timm.create_model(arch_name, pretrained=False, num_classes=num_classes, **kwargs)
    return _with_weights(model, weights, arch_name)


def import_target(target: str):
    """The object ``target`` names (``my_pkg.my_module.MyNet``), with a one-line error when it cannot be imported."""
    import importlib

    module_name, _, attr = str(target).rpartition(".")
    if not module_name:
        raise ConfigError(f"model.target={target!r}: give the full dotted path, e.g. my_pkg.my_module.MyNet")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model.target={target}: cannot import {module_name} ({_first_line(e)}); put its folder "
                          f"on PYTHONPATH or pip install its package") from None
    if not hasattr(module, attr):
        raise ConfigError(f"model.target={target}: {module_name} has no {attr!r}")
    return getattr(module, attr)


def custom_model(target: str | Callable[..., nn.Module], num_classes: int | None = None,
                 weights: str | os.PathLike | None = "random", **kwargs) -> nn.Module:
    """Your own network: ``target`` (a dotted path such as ``my_pkg.my_module.MyNet``, or the class itself) called
    with ``kwargs`` (and ``num_classes`` when given and its signature takes it), then ``weights`` (a file or
    ``"random"``).  For the deconvnet it should have a ``features`` ``nn.Sequential`` (see ``zf.layers``)."""
    import inspect

    factory = import_target(target) if isinstance(target, str) else target
    name = target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))
    if num_classes is not None:
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        if "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs = {"num_classes": num_classes, **kwargs}
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model.target={name}: calling it with {sorted(kwargs)} failed ({_first_line(e)}); "
                          f"set its arguments under model.arch") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.target={name} returned a {type(model).__name__}, not a torch.nn.Module")
    return _with_weights(model, weights, str(name))


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
    """Rebuild a ``zfnet`` from a checkpoint written by ``zf.train``, or from a bare state dict with ``arch`` giving
    the architecture (``num_classes`` is read from fc8 when not given).  A checkpoint's stored architecture wins over
    ``arch``.  The checkpoint's ``meta`` (class names, normalisation, input size) lands in ``model.meta``."""
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
    weights = _resolve_weights(weights, arch_name or target or name) if weights != "cache" else weights
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
