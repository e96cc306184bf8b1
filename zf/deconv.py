"""The deconvnet of Zeiler & Fergus (section 2.1), guided backpropagation and the plain gradient, for the ``features``
of zfnet, AlexNet or VGG16 (and fc targets).

To see one activation, every other activation of its layer is set to zero and the signal goes back down to pixels,
repeating (i) unpool with the switches of this image's forward pass, (ii) rectify, (iii) filter with the transposed
filters (no bias).  The three methods differ only at the ReLUs (``g`` the signal coming down, ``x`` the ReLU's
forward input):

    gradient   g * [x > 0]              (the true vector-Jacobian product)
    deconvnet  max(g, 0)                (the paper)
    guided     max(g, 0) * [x > 0]      (Springenberg et al. 2015)

Unpooling is the max-pool gradient: with overlapping pools (3x3, stride 2) two windows can pick the same input
location, and their signals add up there.  Contrast normalisation (LRN) is skipped in the reverse path by default
(``norm="identity"``; the paper is silent), or reversed by its true vector-Jacobian product (``norm="gradient"``).
Dropout is the identity, batch norm (running statistics) its per-channel scale.  Biases are never used.

A ``features`` stack with a module this reverse pass does not cover (a dilated or rectangular kernel, an average
pool, ...) is projected through ``zf.graph`` instead (autograd with the same rules; slower), with a warning that
names the module (``fast_path``).

Speed (``crop=True``): a unit's projection only needs the pixels of its receptive field.  The forward pass runs once
on the distinct images and records the switches (and ReLU masks, LRN inputs when needed).  The reverse pass then runs
on small windows: 1x1 at the target, growing through each conv/pool (an output window ``[a, b]`` needs the input
window ``[a*s - p, b*s - p + k - 1]``) up to the unit's receptive field in pixels (``zf.receptive``).  All rows share
the window sizes, so thousands of projections run as one batch of small tensors.  ``crop=False`` runs autograd on
whole images with the ReLU rule swapped in; it is the reference, and the path for fc targets.

    >>> rows = torch.tensor([[0, 5, 6, 6]])               # image 0, channel 5 of relu4, at (6, 6)
    >>> p = project(model, images, rows, layer=4)           # (1, 3, 224, 224)
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zf.errors import ConfigError
from zf.graph import METHODS
from zf.layers import Layer, is_stack, resolve_layer

NORMS = ("identity", "gradient")

_POINTWISE_OK = (nn.ReLU, nn.LocalResponseNorm, nn.Dropout, nn.Dropout2d, nn.Identity)
_SUPPORTED = ("Conv2d (dilation 1, zero padding), ReLU, MaxPool2d (dilation 1), LocalResponseNorm, "
              "BatchNorm2d (running statistics), Dropout, Dropout2d, Identity")


class NotInvertibleError(ConfigError):
    """A module on the way down from the target cannot be reversed by the deconvnet."""


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _obstacle(m: nn.Module) -> str | None:
    """Why this module's reverse pass cannot reverse ``m`` (``"dilation (2, 2)"``), or ``None``."""
    why = None
    if isinstance(m, nn.Conv2d):
        if _pair(m.dilation) != (1, 1):
            why = f"dilation {m.dilation}"
        elif isinstance(m.padding, str) or m.padding_mode != "zeros":
            why = f"padding {m.padding!r} / padding_mode {m.padding_mode!r}"
    elif isinstance(m, nn.MaxPool2d):
        if _pair(m.dilation) != (1, 1):
            why = f"dilation {m.dilation}"
    elif isinstance(m, nn.BatchNorm2d):
        if m.running_var is None:
            why = "no running statistics"
    elif not isinstance(m, _POINTWISE_OK):
        why = "unsupported module"
    return why


def _check_module(path: str, m: nn.Module) -> None:
    why = _obstacle(m)
    if why:
        raise NotInvertibleError(f"cannot invert {path} ({type(m).__name__}): {why}. The deconvnet reverses only "
                                 f"{_SUPPORTED} (and Linear/ReLU/Dropout in the classifier).")


def _stack_obstacle(model: nn.Module) -> str | None:
    """The first module of ``model.features`` that this module's reverse pass or ``zf.receptive``'s recurrence
    cannot handle, as ``"features.3 (Conv2d): dilation (2, 2)"``; ``None`` when there is none."""
    from zf.receptive import geometry

    for k, m in model.features.named_children():
        why = _obstacle(m)
        if why is None:
            try:
                geometry(m)
            except ValueError as e:
                why = str(e)
        if why is not None:
            return f"features.{k} ({type(m).__name__}): {why}"
    return None


_WARNED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # models fast_path has warned about


def fast_path(model: nn.Module) -> bool:
    """Whether this module's own reverse pass projects ``model``: a ``features`` stack (``zf.layers.is_stack``) of
    modules it can reverse.  Any other model, including a stack with one module it cannot reverse (warned about
    once, naming the module), goes through ``zf.graph`` (autograd with the same rules; LRN is then reversed by its
    gradient, whatever ``norm`` says)."""
    if not is_stack(model):
        return False
    why = _stack_obstacle(model)
    if why is not None and model not in _WARNED:
        import warnings

        _WARNED.add(model)
        lrn = any(isinstance(m, nn.LocalResponseNorm) for m in model.features)
        warnings.warn(f"{type(model).__name__}.features: {why}: zf.deconv's stack path cannot reverse it, so this "
                      "model is projected through zf.graph (autograd with the same rules, slower)"
                      + ("; LRN is reversed by its gradient there (norm is ignored)" if lrn else ""), stacklevel=3)
    return why is None


def _graph_layer(model: nn.Module, layer, tap: str) -> Layer:
    """The layer ``zf.graph`` projects for ``layer`` of a model ``fast_path`` turned down."""
    lay = resolve_layer(model, layer, tap)
    if is_stack(model) and lay.index is None:
        raise NotInvertibleError(f"{lay.name} is in the classifier of a features stack projected through zf.graph "
                                 f"({_stack_obstacle(model)}); choose a layer of model.features")
    return lay


@dataclass(frozen=True)
class _Target:
    layer: Layer
    stop: int  # last index of model.features that runs
    head: int | None  # last index of model.classifier that runs (None: the target is in features)


def check_invertible(model: nn.Module, layer: int | str, tap: str = "relu") -> Layer:
    """The layer ``resolve_layer(model, layer, tap)``, after checking every module between it and the pixels can be
    reversed; raises ``NotInvertibleError`` naming the first module that cannot (``features.3 (AvgPool2d)``).
    Models that are not ``features`` stacks go through ``zf.graph`` (autograd), which reverses anything."""
    if not fast_path(model):
        return _graph_layer(model, layer, tap)
    return _target(model, layer, tap).layer


def _target(model: nn.Module, layer: int | str, tap: str) -> _Target:
    lay = resolve_layer(model, layer, tap)
    feats = list(model.features.named_children())
    if lay.index is not None:
        stop, head = lay.index, None
    else:
        stop = len(feats) - 1
        keys = [k for k, _ in model.classifier.named_children()]
        head = keys.index(lay.path.split(".", 1)[1])
        for k, m in list(model.classifier.named_children())[:head + 1]:
            if not isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout, nn.Identity, nn.Flatten)):
                raise NotInvertibleError(f"cannot invert classifier.{k} ({type(m).__name__}): the classifier path "
                                         "reverses Linear, ReLU, Dropout, Identity")
    for k, m in feats[:stop + 1]:
        _check_module(f"features.{k}", m)
    return _Target(lay, stop, head)


def _batch_norm(m: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


# --- forward pass on whole images, recording what the reverse pass needs ---


@dataclass
class _Record:
    shape: tuple  # the module's input shape (N, C, H, W)
    switches: torch.Tensor | None = None  # max pool: (N, C, h, w) flat argmax into the input's H*W
    mask: torch.Tensor | None = None  # ReLU: (N, C, H, W) bool, input > 0
    saved: torch.Tensor | None = None  # LRN: (N, C, H, W) input


def _forward_features(features: nn.Sequential, x: torch.Tensor, stop: int, masks: bool = False,
                      lrn_inputs: bool = False) -> tuple[torch.Tensor, list[_Record]]:
    """Run ``features[:stop + 1]`` on x (N, 3, H, W) in eval semantics (dropout off, batch norm with running
    statistics); returns the output and one record per module."""
    recs = []
    for i in range(stop + 1):
        m = features[i]
        rec = _Record(tuple(x.shape))
        if isinstance(m, nn.MaxPool2d):
            x, rec.switches = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                                           return_indices=True)
        elif isinstance(m, nn.ReLU):
            if masks:
                rec.mask = x > 0
            x = F.relu(x)
        elif isinstance(m, nn.LocalResponseNorm):
            if lrn_inputs:
                rec.saved = x
            x = m(x)
        elif isinstance(m, nn.BatchNorm2d):
            x = _batch_norm(m, x)
        elif isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            pass
        else:
            x = m(x)
        recs.append(rec)
    return x, recs


def _forward_head(model: nn.Module, x: torch.Tensor, head: int, relu=F.relu) -> torch.Tensor:
    """From the features' output x (N, C, H, W) through avgpool, flatten and ``classifier[:head + 1]``."""
    pool = getattr(model, "avgpool", None)
    if pool is not None:
        x = pool(x)
    x = torch.flatten(x, 1)
    for m in list(model.classifier)[:head + 1]:
        if isinstance(m, nn.ReLU):
            x = relu(x)
        elif not isinstance(m, (nn.Dropout, nn.Identity)):
            x = m(x)
    return x


@torch.no_grad()
def activations(model: nn.Module, images: torch.Tensor, layer: int | str, tap: str = "relu") -> torch.Tensor:
    """The activations of ``layer`` at ``tap`` (see ``zf.layers``) for images (N, 3, H, W): (N, C, h, w), or
    (N, C, 1, 1) for a classifier layer.  Eval semantics whatever ``model.training`` is.  Any other model: the
    output of the module ``layer`` names (``zf.graph.graph_activations``)."""
    if not fast_path(model):
        from zf.graph import graph_activations

        return graph_activations(model, images, resolve_layer(model, layer, tap).path)
    t = _target(model, layer, tap)
    x, _ = _forward_features(model.features, images, t.stop)
    if t.head is not None:
        x = _forward_head(model, x, t.head)[:, :, None, None]
    return x


# --- reverse pass on windows ---


def _window_index(o: torch.Tensor, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions o[:, None] + arange(size) clamped into [0, size_of_map n), and whether each was inside: (R, size)."""
    pos = o[:, None] + torch.arange(size, device=o.device)
    return pos.clamp(0, n - 1), (pos >= 0) & (pos < n)


def _gather(t: torch.Tensor, img: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, h: int, w: int):
    """Windows of t (N, C, H, W): for each row r, t[img[r], :, oy[r]:oy[r]+h, ox[r]:ox[r]+w] -> (R, C, h, w), with
    clamped values outside the map, and the (R, 1, h, w) bool mask of positions inside it."""
    _, c, hh, ww = t.shape
    ys, vy = _window_index(oy, hh, h)
    xs, vx = _window_index(ox, ww, w)
    ch = torch.arange(c, device=t.device)
    out = t[img[:, None, None, None], ch[None, :, None, None], ys[:, None, :, None], xs[:, None, None, :]]
    return out, vy[:, None, :, None] & vx[:, None, None, :]


def _inside(oy, ox, h, w, hh, ww) -> torch.Tensor:
    _, vy = _window_index(oy, hh, h)
    _, vx = _window_index(ox, ww, w)
    return vy[:, None, :, None] & vx[:, None, None, :]


def _relu_rule(sig: torch.Tensor, mask: torch.Tensor | None, method: str) -> torch.Tensor:
    if method == "deconvnet":
        return sig.clamp_min(0)
    if method == "guided":
        sig = sig.clamp_min(0)
    return torch.where(mask, sig, torch.zeros((), dtype=sig.dtype, device=sig.device))


def _channel_window_sum(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Sum over channels c - before .. c + after (zero outside) of t (..., C), channels last."""
    return F.pad(t, (before, after)).unfold(-1, before + after + 1, 1).sum(-1)


def _lrn_vjp(m: nn.LocalResponseNorm, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Vector-Jacobian product of PyTorch's LocalResponseNorm y = x / d**beta, d = k + alpha/n * sum x**2 over
    channels c - n//2 .. c + (n-1)//2, at x (R, C, h, w) for the signal g (R, C, h, w), in closed form:
    g_i / d_i**beta - (2 alpha beta / n) x_i sum_{c: i in window(c)} g_c x_c / d_c**(beta + 1)."""
    n, a, b = m.size, m.alpha, m.beta
    x, g = x.permute(0, 2, 3, 1), g.permute(0, 2, 3, 1)
    d = _channel_window_sum(x * x, n // 2, (n - 1) // 2).mul_(a / n).add_(m.k)
    dpow = d.pow(-b)
    t = g * x * dpow / d
    out = g * dpow - (2 * a * b / n) * x * _channel_window_sum(t, (n - 1) // 2, n // 2)
    return out.permute(0, 3, 1, 2).contiguous()


def _reverse_windows(features: nn.Sequential, recs: list[_Record], stop: int, sig: torch.Tensor, img: torch.Tensor,
                     oy: torch.Tensor, ox: torch.Tensor, method: str, norm: str):
    """Take sig (R, C, h, w), the windows at the output of ``features[stop]`` whose top-left corners are (oy, ox)
    (R,) in the maps of images img (R,), down to pixels: returns (R, 3, h0, w0) and the new corners (oy, ox)."""
    for i in range(stop, -1, -1):
        m, rec = features[i], recs[i]
        _, _, hh, ww = rec.shape  # this module's input map
        r, c, h, w = sig.shape
        if isinstance(m, nn.Conv2d):
            (sy, sx), (py, px) = _pair(m.stride), _pair(m.padding)
            sig = F.conv_transpose2d(sig, m.weight, stride=(sy, sx), groups=m.groups)
            oy, ox = oy * sy - py, ox * sx - px
            sig = sig * _inside(oy, ox, sig.shape[2], sig.shape[3], hh, ww)  # padding is not part of the map
        elif isinstance(m, nn.MaxPool2d):
            (ky, kx), (sy, sx), (py, px) = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
            idx, ok = _gather(rec.switches, img, oy, ox, h, w)
            oy, ox = oy * sy - py, ox * sx - px
            h2, w2 = (h - 1) * sy + ky, (w - 1) * sx + kx
            ry = torch.div(idx, ww, rounding_mode="floor") - oy[:, None, None, None]
            rx = idx % ww - ox[:, None, None, None]
            flat = torch.where(ok, ry * w2 + rx, 0).view(r, c, h * w)
            # scatter_add: windows that share an input location add up there (the max-pool gradient)
            sig = sig.new_zeros(r, c, h2 * w2).scatter_add_(2, flat, sig.reshape(r, c, h * w)).view(r, c, h2, w2)
        elif isinstance(m, nn.ReLU):
            mask = None if method == "deconvnet" else _gather(rec.mask, img, oy, ox, h, w)[0]
            sig = _relu_rule(sig, mask, method)
        elif isinstance(m, nn.LocalResponseNorm):
            if norm == "gradient":  # LRN mixes channels at one pixel only, so the window's inputs suffice
                sig = _lrn_vjp(m, _gather(rec.saved, img, oy, ox, h, w)[0], sig)
        elif isinstance(m, nn.BatchNorm2d):
            scale = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                scale = m.weight * scale
            sig = sig * scale[None, :, None, None]
        # Dropout, Identity: nothing
        sig, oy, ox = _fit(sig, oy, ox, hh, ww)
    return sig, oy, ox


def _fit(sig: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, hh: int, ww: int):
    """Windows larger than the (hh, ww) map (small images, deep layers) are cut to the map itself: every row's
    window becomes the whole map, origin (0, 0).  Nothing is lost: the signal is zero outside the map."""
    r, c, h, w = sig.shape
    if h <= hh and w <= ww:
        return sig, oy, ox
    ny, nx = min(h, hh), min(w, ww)
    # new window origin: 0 on an axis that is cut, unchanged otherwise; read sig at (new - old) origin offsets
    zy = torch.zeros_like(oy) if h > hh else oy
    zx = torch.zeros_like(ox) if w > ww else ox
    part, ok = _gather(sig, torch.arange(r, device=sig.device), zy - oy, zx - ox, ny, nx)
    return torch.where(ok, part, 0), zy, zx


# --- full-image reference: autograd with the ReLU rule swapped in ---


class _ReLURule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, method):
        ctx.method = method
        ctx.save_for_backward(x > 0)
        return F.relu(x)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return _relu_rule(g, mask, ctx.method), None


class _SkipBackward(torch.autograd.Function):
    """Forward through a module, identity backward (LRN with ``norm="identity"``)."""

    @staticmethod
    def forward(ctx, x, module):
        return module(x)

    @staticmethod
    def backward(ctx, g):
        return g, None


def _forward_rule(model: nn.Module, t: _Target, x: torch.Tensor, method: str, norm: str) -> torch.Tensor:
    """Forward x (N, 3, H, W) to the target with autograd, with the method's ReLU rule and the norm rule as
    backward; returns (N, C, h, w) (or (N, C, 1, 1) for a classifier target)."""
    relu = lambda v: _ReLURule.apply(v, method)  # noqa: E731
    for i in range(t.stop + 1):
        m = model.features[i]
        if isinstance(m, nn.ReLU):
            x = relu(x)
        elif isinstance(m, nn.LocalResponseNorm):
            x = _SkipBackward.apply(x, m) if norm == "identity" else m(x)
        elif isinstance(m, nn.BatchNorm2d):
            x = _batch_norm(m, x)
        elif isinstance(m, nn.MaxPool2d):
            x = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        elif not isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            x = m(x)
    if t.head is not None:
        x = _forward_head(model, x, t.head, relu)[:, :, None, None]
    return x


def _project_full(model, t, images, rows, method, seed, norm):
    x = images[rows[:, 0]].detach().requires_grad_(True)
    with torch.enable_grad():
        acts = _forward_rule(model, t, x, method, norm)
        _check_rows(rows, acts.shape, t.layer)
        ar = torch.arange(len(rows), device=rows.device)
        value = acts[ar, rows[:, 1], rows[:, 2], rows[:, 3]].detach()
        g = torch.zeros_like(acts)
        g[ar, rows[:, 1], rows[:, 2], rows[:, 3]] = value if seed == "activation" else 1.0
        return torch.autograd.grad(acts, x, g)[0]


# --- public API ---


def _check_rows(rows: torch.Tensor, shape, layer: Layer) -> None:
    _, c, h, w = shape
    for j, (name, n) in enumerate((("channel", c), ("y", h), ("x", w)), start=1):
        col = rows[:, j]
        if len(col) and (int(col.min()) < 0 or int(col.max()) >= n):
            raise IndexError(f"rows: {name} out of range for {layer.name} ({layer.path}) with maps {tuple(shape[1:])}")


def _check_args(images, rows, method, seed, norm):
    from zf.graph_project import check_inputs

    if norm not in NORMS:
        raise ConfigError(f"norm={norm!r}: use one of {NORMS}")
    return check_inputs(images, rows, method, seed)


def _row_chunk(features: nn.Sequential, stop: int, channels: int, budget: float = 2 ** 28) -> int:
    """Rows per reverse batch so that the largest window tensors stay near ``budget`` bytes."""
    h = w = 1
    worst = channels
    for i in range(stop, -1, -1):
        m = features[i]
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            (ky, kx), (sy, sx) = _pair(m.kernel_size), _pair(m.stride or m.kernel_size)
            h, w = (h - 1) * sy + ky, (w - 1) * sx + kx
            channels = getattr(m, "in_channels", channels)
        worst = max(worst, channels * h * w)
    per_row = 40 * worst  # float signal, int64 switches and scatter indices, temporaries
    return int(max(1, min(4096, budget // per_row)))


def project_windows(model: nn.Module, images: torch.Tensor, rows: torch.Tensor, layer: int | str,
                    method: str = "deconvnet", seed: str = "activation", tap: str = "relu", norm: str = "identity",
                    batch_size: int | None = None, images_per_chunk: int = 32, crop: str | bool = "auto"):
    """Like ``project(..., crop=True)`` but without pasting: returns (windows, corners) with windows (R, 3, s, t)
    the projections inside each unit's receptive field (s = t = ``zf.receptive`` size, zero outside the image; a
    side longer than the image's is cut to the image, with corner 0) and corners (R, 2) the (y0, x0) of each
    window in the image (may be negative).  Mining crops patches from these
    without ever building (R, 3, H, W).  Any other model: ``zf.graph.project_graph`` cut to the same windows
    (``batch_size`` is its ``chunk``, ``crop`` its ``crop``: ``"auto"`` or ``"off"``)."""
    rows = _check_args(images, rows, method, seed, norm)
    if not fast_path(model):
        from zf.graph_project import graph_windows

        return graph_windows(model, images, rows, _graph_layer(model, layer, tap).path, method, seed, batch_size,
                             crop)
    t = _target(model, layer, tap)
    if t.head is not None:
        raise ValueError(f"{t.layer.name} is in the classifier: its receptive field is the whole image; use "
                         "project(..., crop=False)")
    return _windows(model, t, images, rows, method, seed, norm, batch_size, images_per_chunk)


def _windows(model, t, images, rows, method, seed, norm, batch_size, images_per_chunk):
    dev = images.device
    out, corners = None, torch.zeros(len(rows), 2, dtype=torch.long, device=dev)
    order = torch.argsort(rows[:, 0], stable=True)
    uniq = torch.unique(rows[:, 0])
    for u0 in range(0, len(uniq), images_per_chunk):
        ids = uniq[u0:u0 + images_per_chunk]
        with torch.no_grad():
            acts, recs = _forward_features(model.features, images[ids], t.stop, masks=method != "deconvnet",
                                           lrn_inputs=norm == "gradient")
        local = torch.full((len(images),), -1, dtype=torch.long, device=dev)
        local[ids] = torch.arange(len(ids), device=dev)
        sel = order[local[rows[order, 0]] >= 0]
        sub = rows[sel]
        _check_rows(sub, acts.shape, t.layer)
        bs = batch_size or _row_chunk(model.features, t.stop, acts.shape[1])
        for b0 in range(0, len(sel), bs):
            r = sub[b0:b0 + bs]
            idx = sel[b0:b0 + bs]
            img, ch, y, x = local[r[:, 0]], r[:, 1], r[:, 2], r[:, 3]
            sig = torch.zeros(len(r), acts.shape[1], 1, 1, dtype=acts.dtype, device=dev)
            ar = torch.arange(len(r), device=dev)
            sig[ar, ch, 0, 0] = acts[img, ch, y, x] if seed == "activation" else 1.0
            with torch.no_grad():
                win, oy, ox = _reverse_windows(model.features, recs, t.stop, sig, img, y, x, method, norm)
            if out is None:
                out = win.new_zeros(len(rows), *win.shape[1:])
            out[idx] = win
            corners[idx, 0], corners[idx, 1] = oy, ox
    if out is None:  # no rows
        out = images.new_zeros(0, images.shape[1], 1, 1)
    return out, corners


def _paste(win: torch.Tensor, corners: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Windows (R, C, s, s) with top-left corners (R, 2) onto a zero canvas (R, C, H, W), clipped at the borders."""
    r, c, h, w = win.shape
    hh, ww = hw
    ys, vy = _window_index(corners[:, 0], hh, h)
    xs, vx = _window_index(corners[:, 1], ww, w)
    ok = vy[:, None, :, None] & vx[:, None, None, :]
    flat = (ys[:, None, :, None] * ww + xs[:, None, None, :]).expand(r, c, h, w).reshape(r, c, -1)
    vals = torch.where(ok, win, 0).reshape(r, c, -1)  # clamped positions outside add zeros
    return win.new_zeros(r, c, hh * ww).scatter_add_(2, flat, vals).view(r, c, hh, ww)


def project(model: nn.Module, images: torch.Tensor, rows: torch.Tensor, layer: int | str,
            method: str = "deconvnet", seed: str = "activation", tap: str = "relu", norm: str = "identity",
            crop: bool = True, batch_size: int | None = None, images_per_chunk: int = 32) -> torch.Tensor:
    """Project single activations down to pixel space (section 2.1).

    Args:
        model: a network with ``features`` (and ``classifier``): zfnet, torchvision AlexNet / VGG16.  Its
            ``training`` flag is ignored: dropout is off and batch norm uses running statistics.
        images: (N, 3, H, W) normalised model inputs.
        rows: (R, 4) long, one projection per row: (image index into ``images``, channel, y, x) of the activation at
            the layer's tap (y = x = 0 for a classifier layer).  Rows may mix images, channels and positions.
        layer: anything ``zf.layers.resolve_layer`` takes: 1..5, ``"conv4"``, ``"pool5"``, ``"fc6"``, ``"features.9"``.
        method: ``"deconvnet"`` (the paper), ``"guided"`` or ``"gradient"`` (see the module docstring).
        seed: ``"activation"`` (the signal starts at the activation's value, as in the paper) or ``"one"``
            (1.0: the result is then the gradient-like map of the unit, as captum's Neuron* methods give).
        tap: ``"relu"``, ``"conv"`` or ``"output"`` (see ``zf.layers``).
        norm: LRN in the reverse path: ``"identity"`` (skipped) or ``"gradient"`` (its vector-Jacobian product).
        crop: reverse on receptive-field windows (fast; the default).  ``False``: autograd on whole images (the
            reference; always used for classifier layers).
        batch_size: rows per reverse batch (default: sized to keep the window tensors near 256 MB with ``crop``,
            8 rows without).
        images_per_chunk: distinct images per forward pass (``crop`` only).

    Any model that is not a ``features`` stack (``zf.layers.is_stack``: ResNet, DenseNet, GoogLeNet, ...) goes
    through ``zf.graph.project_graph``: ``layer`` is a module path, ``tap`` and ``norm`` are ignored,
    ``batch_size`` is its ``chunk`` and ``crop=False`` turns its receptive-field crops off.

    Returns:
        (R, 3, H, W) projections, zero outside each unit's receptive field (``zf.receptive.unit_box``).
    """
    rows = _check_args(images, rows, method, seed, norm)
    if not fast_path(model):
        from zf.graph import project_graph

        return project_graph(model, images, rows, _graph_layer(model, layer, tap).path, method, seed,
                             chunk=batch_size, crop=None if crop else False)
    t = _target(model, layer, tap)
    if crop and t.head is None:
        win, corners = _windows(model, t, images, rows, method, seed, norm, batch_size, images_per_chunk)
        return _paste(win, corners, tuple(images.shape[2:]))
    bs = batch_size or 8
    out = images.new_zeros(len(rows), *images.shape[1:])
    for b0 in range(0, len(rows), bs):
        out[b0:b0 + bs] = _project_full(model, t, images, rows[b0:b0 + bs], method, seed, norm)
    return out


__all__ = ["project", "project_windows", "activations", "check_invertible", "fast_path", "NotInvertibleError",
           "METHODS"]
