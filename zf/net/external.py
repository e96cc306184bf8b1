"""Networks by name from torchvision and timm, and your own module (``custom_model``), with their weights: a file,
``"cache"`` (torchvision's file in the torch hub cache), ``"download"`` (torch.hub / timm's pretrained
configuration, through ``zf.download``) or ``"random"``.  They are used as they are: their layers are module paths
(``zf.net.modules``) and the graph engine projects them unless they are ``features`` stacks.
``zf.net.models.build_model`` is the entry a config uses."""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torchvision.models
from torch import nn

from zf.download import timm_download, torchvision_download
from zf.errors import CheckpointError, ConfigError
from zf.net.checkpoints import WEIGHTS_HELP, first_line, load_state_dict, load_weights, random_weights


def _suggest(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def torchvision_names() -> list[str]:
    """The classification models ``torchvision.models.get_model`` builds by name."""
    return torchvision.models.list_models(module=torchvision.models)


def torchvision_cache_file(arch_name: str) -> Path:
    """The file torchvision would download for ``arch_name``'s weights, in the torch hub cache: the DEFAULT weights'
    file if it is there, else any other ImageNet weights of that model that are.  Never downloads."""
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


#: timm's version of WEIGHTS_HELP: timm has no hub-cache lookup here (``weights=cache`` is torchvision's).
TIMM_WEIGHTS_HELP = ("pass model.weights=/path/to/model.safetensors (timm's file) or a .pth state dict, or "
                     "model.weights=random for random weights")


def resolve_weights(weights, name: str, cache: Callable[[], Path] | None = None, help: str = WEIGHTS_HELP):
    """``None`` (no weights given: an error), ``"random"``, or the path to load (``"cache"`` through ``cache``)."""
    if weights is None or str(weights).strip() == "":
        raise CheckpointError(f"model {name}: no weights given; {help}")
    if str(weights) == "random":
        return "random"
    if str(weights) == "download":
        return "download"
    if str(weights) == "cache":
        if cache is None:
            raise CheckpointError(f"model {name}: weights=cache finds torchvision's files only; pass "
                                  f"model.weights=/path/to/the/file")
        return cache()
    return Path(weights).expanduser()


def with_weights(model: nn.Module, weights, name: str, cache: Callable[[], Path] | None = None,
                  partial: bool = True, help: str = WEIGHTS_HELP) -> nn.Module:
    w = resolve_weights(weights, name, cache, help)
    if w == "random":
        return random_weights(model)
    if w == "download":
        raise CheckpointError(f"model {name}: model.weights=download fetches torchvision's and timm's pretrained "
                              "weights only; pass model.weights=/path/to/the/file")
    return load_weights(model, load_state_dict(w), str(w), partial=partial)


def torchvision_model(arch_name: str, num_classes: int = 1000, weights: str | os.PathLike | None = "random",
                      **kwargs) -> nn.Module:
    """Any torchvision classification model by name (``resnet50``, ``vgg16_bn``, ``convnext_tiny``, ...):
    ``torchvision.models.get_model(arch_name, weights=None, num_classes=..., **kwargs)``, then ``weights``: a file,
    ``"cache"`` (the file torchvision would download, from the torch hub cache; never downloaded) or ``"random"``."""
    names = torchvision_names()
    if arch_name not in names:
        raise ConfigError(f"model.arch_name={arch_name!r} is not a torchvision classification model"
                          f"{_suggest(str(arch_name), names)}; torchvision.models.list_models(module=torchvision.models)"
                          f" lists them")
    model = torchvision.models.get_model(arch_name, weights=None, num_classes=num_classes, **kwargs)
    if str(weights) == "download":  # the DEFAULT weights, through torch.hub (hash-checked) into the hub cache
        weights = torchvision_download(arch_name)
    return with_weights(model, weights, arch_name, lambda: torchvision_cache_file(arch_name))


def timm_model(arch_name: str, num_classes: int = 1000, weights: str | os.PathLike | None = "random",
               **kwargs) -> nn.Module:
    """A timm model by name (needs the optional extra: ``pip install 'zf[timm]'``), with ``weights`` a file (a
    ``.pth`` state dict or timm's ``model.safetensors``), ``"download"`` (timm's pretrained weights, fetched by
    timm from where its pretrained configuration says; ``kwargs`` such as ``pretrained_cfg_overlay=dict(url=...)``
    reach ``timm.create_model``) or ``"random"``.  timm downloads only for ``"download"``."""
    try:
        import timm
    except ImportError:
        raise ConfigError("model=timm needs the timm package, an optional extra: pip install 'zf[timm]' "
                          "(or pip install timm)") from None
    if not timm.is_model(arch_name):
        raise ConfigError(f"model.arch_name={arch_name!r} is not a timm model"
                          f"{_suggest(str(arch_name), timm.list_models())}; timm.list_models() lists them")
    if str(weights) == "download":
        model = timm_download(arch_name, num_classes, **kwargs)
        model.zf_weights, model.zf_missing = f"timm:{arch_name}", []
        return model
    model = timm.create_model(arch_name, pretrained=False, num_classes=num_classes, **kwargs)
    return with_weights(model, weights, arch_name, help=TIMM_WEIGHTS_HELP)


def import_target(target: str):
    """The object ``target`` names (``my_pkg.my_module.MyNet``), with a one-line error when it cannot be imported."""
    module_name, _, attr = str(target).rpartition(".")
    if not module_name:
        raise ConfigError(f"model.target={target!r}: give the full dotted path, e.g. my_pkg.my_module.MyNet")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model.target={target}: cannot import {module_name} ({first_line(e)}); put its folder "
                          f"on PYTHONPATH or pip install its package") from None
    if not hasattr(module, attr):
        raise ConfigError(f"model.target={target}: {module_name} has no {attr!r}")
    return getattr(module, attr)


def custom_model(target: str | Callable[..., nn.Module], num_classes: int | None = None,
                 weights: str | os.PathLike | None = "random", **kwargs) -> nn.Module:
    """Your own network: ``target`` (a dotted path such as ``my_pkg.my_module.MyNet``, or the class itself) called
    with ``kwargs`` (and ``num_classes`` when given and its signature takes it), then ``weights`` (a file or
    ``"random"``).  For the deconvnet it should have a ``features`` ``nn.Sequential`` (see ``zf.net.layers``)."""
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
        raise ConfigError(f"model.target={name}: calling it with {sorted(kwargs)} failed ({first_line(e)}); "
                          f"set its arguments under model.arch") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.target={name} returned a {type(model).__name__}, not a torch.nn.Module")
    return with_weights(model, weights, str(name))


__all__ = ["torchvision_model", "timm_model", "custom_model", "import_target", "torchvision_names",
           "torchvision_cache_file", "resolve_weights", "with_weights", "TIMM_WEIGHTS_HELP"]
