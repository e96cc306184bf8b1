"""Any PyTorch graph: read or override its layers, list them, and project single units back to pixels.

``zf.deconv`` has a fast path for ``features`` stacks of leaf modules (zfnet, AlexNet, VGG).  This module handles
every other network (ResNet, DenseNet, GoogLeNet, MobileNet, ConvNeXt, ...) through hooks and autograd:

- ``capture(model, x, layers)`` runs the model with forward hooks that clone what they read, and stops the forward
  as soon as the last requested module has run (a module called several times, such as the ``relu`` a torchvision
  ``BasicBlock`` reuses, is read at its last call).
- A layer is a module path (``layer3``, ``layer3.1.relu``, ``features.denseblock3``), or one of the names of
  ``zf.layers`` for the sequential nets.  ``list_layers`` lists every module with a 4-D output.
- ``project_graph`` is the deconvnet / guided backpropagation / gradient on any graph: autograd, with the method's
  rule swapped in at every activation, whether it is a module (``nn.ReLU``) or a functional call (``F.relu``,
  ``torch.relu``, ``x.relu_()``), through a ``TorchFunctionMode``.  Max pools route through their switches,
  convolutions through their transposed filters, batch norm (running statistics), additions and concatenations
  as autograd has them.

The rule at an activation ``f`` (``g`` the signal coming down, ``x`` the forward input)::

    gradient   g * f'(x)                 (plain autograd)
    deconvnet  max(g, 0)                 (whatever f is)
    guided     max(g, 0) * f'(x)

For ReLU these are the paper's rules (section 2.1) and Springenberg et al.'s.  The deconvnet reverses every
activation, ReLU6, LeakyReLU, PReLU, ELU, SELU, CELU, SiLU, GELU, Hardswish and Mish included, by a rectification of
the signal that does not look at the forward pass: the paper's deconvnet reverses a rectifier by a rectifier, and
its projection depends on the image only through the max-pool switches.  Keeping that property for every activation
is the one choice that needs no scale (applying ``f`` itself to the signal, the other candidate, would make GELU,
SiLU or ReLU6's clip at 6 depend on the signal's arbitrary units) and it is what the deconvnet is for: the features
the unit responds to, not the gate state of this image.  Guided backpropagation keeps the true local slope ``f'(x)``
(``[0 < x < 6]`` for ReLU6, ``slope`` for LeakyReLU's negative side, GELU's smooth and slightly negative slope) on
the rectified signal.  Gates that multiply a signal (sigmoid / hardsigmoid in squeeze-excitation blocks) are not
activations on the path and keep their gradient.  In-place calls (``F.relu(x, inplace=True)``) run out of place
while projecting; code that uses an in-place activation's side effect without its return value would then differ.

Speed: the forward stops at the target layer; one forward per distinct image, then reverse passes batched over the
image's rows with ``torch.autograd.grad(..., is_grads_batched=True)``, ``chunk`` rows at a time.  Measured on 2 CPU
cores, ResNet-50 ``layer3``, 18 rows of one 224 px image: 0.09 s a row batched, 0.13-0.16 s a row with the
alternative (each row on its own copy of the image, one forward of ``chunk`` copies and one backward), 0.14 s a row
for captum's per-unit loop.  When a unit's receptive field
is much smaller than the image, each row instead runs forward and back on a crop of its receptive field aligned to
the layer's stride, where the padding of every intermediate map is the one of the whole image, so the result is the
same (``crop``; ``zf.receptive`` measures the field).  Rows whose crops coincide (one image, one corner: units at
one position, or positions clamped to the same crop at a border) share the crop's forward pass.
"""
from __future__ import annotations

import difflib
import weakref
from contextlib import contextmanager
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from zf.errors import LayerError

METHODS = ("deconvnet", "guided", "gradient")
SEEDS = ("activation", "one")


# ---------------------------------------------------------------------------------------------------------------
# layer names


def module_paths(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule of ``model`` by its path (``named_modules``), the root excluded."""
    return {p: m for p, m in model.named_modules() if p}


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path``; raises ``LayerError`` naming close matches."""
    mods = module_paths(model)
    if path in mods:
        return mods[path]
    close = difflib.get_close_matches(str(path), list(mods), n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}; " if close else ""
    raise LayerError(f"layer {path!r} does not exist in {type(model).__name__}; {hint}list all layers with "
                     "list_layers=true (zf.graph.list_layers)")


# ---------------------------------------------------------------------------------------------------------------
# capture


class _Stop(Exception):
    """Raised by a hook once every requested module has run, to end the forward early."""


_PLANS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _call_counts(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, int], Exception | None]:
    """How often each module runs in one forward (a probe on one input, cached per model, input shape and mode),
    and the error that ended the probe early, if any (an input too small for the layers after some point: the
    modules that ran before it are counted, and only those can be read)."""
    key = (tuple(x.shape[1:]), model.training)
    plans = _PLANS.setdefault(model, {})
    if key not in plans:
        counts: dict[str, int] = {}
        hooks, error = [], None
        for p, m in module_paths(model).items():
            hooks.append(m.register_forward_hook(lambda *_, p=p: counts.__setitem__(p, counts.get(p, 0) + 1)))
        try:
            with torch.no_grad(), rules(None):
                model(x[:1])
        except RuntimeError as e:
            error = e
        finally:
            for h in hooks:
                h.remove()
        plans[key] = (counts, error)
    return plans[key]


def capture(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | str, clone: bool = True,
            stop: bool = True, probe: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Run ``model(x)`` and return ``{path: output}`` of the modules at ``layers`` (paths, see ``find_module``).

    Outputs are cloned (an in-place ReLU after the module cannot change them; the clone keeps the autograd graph).
    A module that runs several times is read at its last call.  With ``stop`` the forward ends as soon as every
    requested module has made all its calls (a probe forward on one input counts them, once per model and input
    shape), so reading ``layer3`` of a ResNet does not pay for ``layer4`` and ``fc``.  Runs in the model's current
    mode (call ``model.eval()`` first for dropout off and batch-norm running statistics).  ``probe``: an input to
    count the calls on instead of ``x`` (a whole image when ``x`` is a crop too small for the layers after the
    target).
    """
    paths = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
    mods = {p: find_module(model, p) for p in paths}
    need, error = _call_counts(model, x if probe is None else probe) if stop else ({}, None)
    missing = [p for p in paths if stop and need.get(p, 0) == 0]
    if missing and error is not None:
        raise error
    if missing:
        raise LayerError(f"layer {missing[0]!r} of {type(model).__name__} does not run in its forward; pick a "
                         "module that does (list_layers=true)")
    out: dict[str, torch.Tensor] = {}
    seen = {p: 0 for p in paths}
    left = [len(paths)]

    def hook(p):
        def fn(_m, _inp, o):
            out[p] = o.clone() if clone and isinstance(o, torch.Tensor) else o
            seen[p] += 1
            if stop and seen[p] == need[p]:
                left[0] -= 1
                if left[0] == 0:
                    raise _Stop
        return fn

    hooks = [m.register_forward_hook(hook(p)) for p, m in mods.items()]
    try:
        model(x)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return out


# ---------------------------------------------------------------------------------------------------------------
# activation rules


def _deriv(fn, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        return torch.autograd.grad(fn(xx).sum(), xx)[0]


class _Rule(torch.autograd.Function):
    """y = fn(x); backward by the method's rule (deconvnet / guided) or the identity (receptive fields)."""

    @staticmethod
    def forward(ctx, x, fn, kind, method):
        ctx.method = method
        if method == "identity":
            return x.clone()
        y = fn(x)
        if method == "guided":
            if kind == "relu":
                d = (x > 0).to(x.dtype)
            elif kind == "relu6":
                d = ((x > 0) & (x < 6)).to(x.dtype)
            else:
                d = _deriv(fn, x)
            ctx.save_for_backward(d)
        return y

    @staticmethod
    def backward(ctx, g):
        if ctx.method == "identity":
            return g, None, None, None
        g = g.clamp_min(0)
        if ctx.method == "guided":
            g = g * ctx.saved_tensors[0]
        return g, None, None, None


def _table():
    """func -> (kind, number of positional args before ``inplace``)."""
    t = {F.relu: ("relu", 1), torch.relu: ("relu", 1), torch.relu_: ("relu", 1), torch.Tensor.relu: ("relu", 1),
         torch.Tensor.relu_: ("relu", 1), F.relu_: ("relu", 1), F.relu6: ("relu6", 1),
         F.hardtanh: ("hardtanh", 3), F.leaky_relu: ("act", 2), F.prelu: ("act", 2), F.elu: ("act", 2),
         F.selu: ("act", 1), F.celu: ("act", 2), F.gelu: ("act", 1), F.silu: ("act", 1),
         F.hardswish: ("act", 1), F.mish: ("act", 1)}
    return t


_ACTS = _table()
_PLAIN = {torch.relu_: torch.relu, torch.Tensor.relu_: torch.relu, F.relu_: torch.relu, torch.Tensor.relu: torch.relu}


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


class _RuleMode(TorchFunctionMode):
    """Swap every activation call for ``_Rule`` with ``method`` (``None``: count nothing, run as is)."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if self.method == "identity" and func in (F.max_pool2d, torch.max_pool2d, F.adaptive_max_pool2d):
            return _avg_pool(func, args, kwargs)
        spec = _ACTS.get(func) if self.method else None
        if spec is None or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        kind, n = spec
        rest = list(args[1:n])
        kwargs.pop("inplace", None)
        if kind == "hardtanh" and self.method == "identity":  # receptive fields: a clamp must not cut a path
            return _Rule.apply(args[0], None, "act", "identity")
        if kind == "hardtanh":
            lo = rest[0] if rest else kwargs.get("min_val", -1.0)
            hi = rest[1] if len(rest) > 1 else kwargs.get("max_val", 1.0)
            if lo != 0:  # not a rectifier (a clamp): keep its gradient
                return F.hardtanh(args[0], lo, hi)
            kind = "relu6" if hi == 6 else "act"
        base = _PLAIN.get(func, func)
        fn = lambda t: base(t, *rest, **kwargs)  # noqa: E731
        return _Rule.apply(args[0], fn, kind, self.method)


@contextmanager
def rules(method: str | None):
    """Within the block, every activation (module or functional) backpropagates by ``method``'s rule:
    ``"deconvnet"``, ``"guided"``, ``"identity"`` (the activation is skipped in the reverse pass and in the forward,
    for receptive fields), or ``None`` / ``"gradient"`` (nothing changes)."""
    if method in (None, "gradient"):
        yield
        return
    with _RuleMode(method):
        yield


@contextmanager
def eval_mode(model: nn.Module):
    """``model.eval()`` within the block, restoring every module's training flag after it."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in flags:
            m.training = t


# ---------------------------------------------------------------------------------------------------------------
# list_layers


class LayerRow(NamedTuple):
    path: str
    type: str
    shape: tuple  # (C, h, w) at the input size
    channels: int
    rf_size: tuple  # (rows, columns) in input pixels
    rf_stride: tuple


def minable_layers(model: nn.Module, input_size: int | tuple[int, int] = 224) -> list[tuple[str, tuple]]:
    """(path, (C, h, w)) of every module with a 4-D output (at its last call), in the order the forward finishes
    them (one forward on zeros of ``input_size``)."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    p0 = next(model.parameters(), None)
    x = torch.zeros(1, 3, h, w, device=p0.device if p0 is not None else None,
                    dtype=p0.dtype if p0 is not None else None)
    with eval_mode(model), torch.no_grad():
        outs = capture(model, x, list(module_paths(model)), clone=False, stop=False)
    return [(p, tuple(o.shape[1:])) for p, o in outs.items() if isinstance(o, torch.Tensor) and o.dim() == 4]


def list_layers(model: nn.Module, input_size: int | tuple[int, int] = 224) -> list[LayerRow]:
    """One row per minable module (a module with a 4-D output), in the order the forward finishes them, with its
    receptive field (``zf.receptive.graph_receptive_fields``) at ``input_size``."""
    from zf.receptive import graph_receptive_fields

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


def __getattr__(name):  # project_graph and graph_activations live in zf.graph_project, which imports this module
    if name in ("project_graph", "graph_activations"):
        from zf import graph_project

        return getattr(graph_project, name)
    raise AttributeError(f"module 'zf.graph' has no attribute {name!r}")

__all__ = ["capture", "minable_layers", "find_module", "module_paths", "list_layers", "format_layers", "LayerRow", "project_graph",
           "graph_activations", "rules", "eval_mode", "METHODS"]
