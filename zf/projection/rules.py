"""The one rule table of the projections: what the deconvnet, guided backpropagation and the gradient do to the
backward signal at an activation, and the checks of a projection's options (method, seed mode, LRN rule).

At an activation ``f`` (``g`` the signal coming down, ``x`` the forward input) a method can *rectify* the signal
(keep ``max(g, 0)``) and can *gate* it by the forward pass's local slope ``f'(x)``::

    method      rectify  gate    at a ReLU
    gradient    no       yes     g * [x > 0]              (the true vector-Jacobian product; plain autograd)
    deconvnet   yes      no      max(g, 0)                (the paper, section 2.1)
    guided      yes      yes     max(g, 0) * [x > 0]      (Springenberg et al. 2015)

Both engines read ``RULES``: the stack engine (``zf.projection.stack``) applies it to its windows at each
``nn.ReLU`` (``relu_rule``, the gate a boolean mask), the graph engine (``zf.projection.graph``) swaps it in at every
activation of any network, module or functional call, through the ``TorchFunctionMode`` of ``rules(method)``.

On the graph path the deconvnet reverses every activation (ReLU6, LeakyReLU, PReLU, ELU, SELU, CELU, SiLU, GELU,
Hardswish and Mish included) by a rectification of the signal that does not look at the forward pass: the paper's
deconvnet reverses a rectifier by a rectifier, and its projection depends on the image only through the max-pool
switches.  Keeping that property for every activation is the one choice that needs no scale (applying ``f`` itself
to the signal, the other candidate, would make GELU, SiLU or ReLU6's clip at 6 depend on the signal's arbitrary
units) and it is what the deconvnet is for: the features the unit responds to, not the gate state of this image.
Guided backpropagation keeps the true local slope ``f'(x)`` (``[0 < x < 6]`` for ReLU6, ``slope`` for LeakyReLU's
negative side, GELU's smooth and slightly negative slope) on the rectified signal.  ``F.hardtanh`` with a lower
bound other than 0 is a clamp, not a rectifier, and keeps its gradient.  In-place calls (``F.relu(x, inplace=True)``)
run out of place while projecting; code that uses an in-place activation's side effect without its return value
would then differ.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from zf.errors import ConfigError
from zf.net.activations import ACTIVATIONS, OUT_OF_PLACE


@dataclass(frozen=True)
class Rule:
    """What a method does to the backward signal at an activation (see the module docstring)."""

    rectify: bool  # keep max(g, 0)
    gate: bool  # multiply by the forward pass's local slope f'(x)


RULES = {"deconvnet": Rule(rectify=True, gate=False),
         "guided": Rule(rectify=True, gate=True),
         "gradient": Rule(rectify=False, gate=True)}
METHODS = tuple(RULES)
SEED_MODES = ("activation", "one")  # the signal starts at the unit's value (paper) or at 1 (captum's Neuron* methods)
NORMS = ("identity", "gradient")  # LRN in the reverse path of a stack: skipped (paper) or its true gradient
CROPS = ("auto", "off")  # the graph engine on receptive-field crops where checked exact, or on whole images


def rule(method: str) -> Rule:
    """The rule of ``method``; ``ConfigError`` naming the methods for anything else."""
    if method not in RULES:
        raise ConfigError(f"method={method!r}: use one of {METHODS}")
    return RULES[method]


def check_options(method: str, seed_mode: str, norm: str | None = None) -> None:
    """``ConfigError`` for a method, seed mode or LRN rule that does not exist."""
    if norm is not None and norm not in NORMS:
        raise ConfigError(f"norm={norm!r}: use one of {NORMS}")
    rule(method)
    if seed_mode not in SEED_MODES:
        raise ConfigError(f"seed_mode={seed_mode!r}: use one of {SEED_MODES}")


@dataclass(frozen=True)
class ProjectionOptions:
    """How projections run, checked once: ``method`` (a row of ``RULES``), ``seed_mode`` (where the signal starts:
    ``"activation"``, the unit's value as in the paper, or ``"one"``, captum's Neuron* convention) and ``norm`` (LRN
    in the stack engine's reverse path: ``"identity"``, skipped as the paper is silent, or ``"gradient"``) and
    ``crop`` (the graph engine: ``"auto"``, receptive-field crops where ``zf.projection.graph.crop_check`` finds
    them exact, or ``"off"``, whole images; the stack engine's windows are exact and ignore it)."""

    method: str = "deconvnet"
    seed_mode: str = "activation"
    norm: str = "identity"
    crop: str = "auto"

    def __post_init__(self):
        check_options(self.method, self.seed_mode, self.norm)
        if self.crop not in CROPS:
            raise ConfigError(f"crop={self.crop!r}: use one of {', '.join(CROPS)}")

    def with_method(self, method: str) -> "ProjectionOptions":
        return replace(self, method=method)


def relu_rule(sig: torch.Tensor, mask: torch.Tensor | None, method: str) -> torch.Tensor:
    """The signal ``sig`` after a ReLU in the reverse pass; ``mask`` the forward input's ``x > 0`` (unused by
    methods that do not gate)."""
    r = RULES[method]
    if r.rectify:
        sig = sig.clamp_min(0)
    if r.gate:
        sig = torch.where(mask, sig, torch.zeros((), dtype=sig.dtype, device=sig.device))
    return sig


# ---------------------------------------------------------------------------------------------------------------
# the graph engine: the rule swapped in at every activation call


def _deriv(fn, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        return torch.autograd.grad(fn(xx).sum(), xx)[0]


class _Rule(torch.autograd.Function):
    """y = fn(x); backward by the method's rule."""

    @staticmethod
    def forward(ctx, x, fn, kind, method):
        ctx.rule = RULES[method]
        y = fn(x)
        if ctx.rule.gate:
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
        if ctx.rule.rectify:
            g = g.clamp_min(0)
        if ctx.rule.gate:
            g = g * ctx.saved_tensors[0]
        return g, None, None, None


class _RuleMode(TorchFunctionMode):
    """Swap every activation call for ``_Rule`` with ``method``."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        spec = ACTIVATIONS.get(func)
        if spec is None or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        kind, n = spec
        rest = list(args[1:n])
        kwargs.pop("inplace", None)
        if kind == "hardtanh":
            lo = rest[0] if rest else kwargs.get("min_val", -1.0)
            hi = rest[1] if len(rest) > 1 else kwargs.get("max_val", 1.0)
            if lo != 0:  # not a rectifier (a clamp): keep its gradient
                return F.hardtanh(args[0], lo, hi)
            kind = "relu6" if hi == 6 else "act"
        base = OUT_OF_PLACE.get(func, func)
        fn = lambda t: base(t, *rest, **kwargs)  # noqa: E731
        return _Rule.apply(args[0], fn, kind, self.method)


@contextmanager
def rules(method: str):
    """Within the block, every activation (module or functional) backpropagates by ``method``'s rule.  A method
    that does not rectify (the gradient) is plain autograd: nothing is swapped in."""
    if not rule(method).rectify:
        yield
        return
    with _RuleMode(method):
        yield


__all__ = ["Rule", "RULES", "METHODS", "SEED_MODES", "NORMS", "CROPS", "ProjectionOptions", "rule", "check_options",
           "relu_rule", "rules"]
