"""The stack engine: the deconvnet of Zeiler & Fergus (section 2.1), guided backpropagation and the plain gradient
on receptive-field windows, for the ``features`` of zfnet, AlexNet or VGG16 (and fc targets on whole images).
``zf.projection.api`` is the entry point; it sends every other model to ``zf.projection.graph``.

To see one activation, every other activation of its layer is set to zero and the signal goes back down to pixels,
repeating (i) unpool with the switches of this image's forward pass, (ii) rectify, (iii) filter with the transposed
filters (no bias).  The three methods differ only at the ReLUs, by the rule table of ``zf.projection.rules``
(``relu_rule``).

Unpooling is the max-pool gradient: with overlapping pools (3x3, stride 2) two windows can pick the same input
location, and their signals add up there.  Contrast normalisation (LRN) is skipped in the reverse path by default
(``norm="identity"``; the paper is silent), or reversed by its true vector-Jacobian product (``norm="gradient"``).
Dropout is the identity, batch norm (running statistics) its per-channel scale.  Biases are never used.

A ``features`` stack with a module this reverse pass does not cover (a dilated or rectangular kernel, an average
pool, ...) is projected through ``zf.projection.graph`` instead (autograd with the same rules; slower), with a
warning that names the module (``zf.projection.reversible.fast_path``).

Speed (``windows``): a unit's projection only needs the pixels of its receptive field.  The forward pass runs once
on the distinct images and records the switches (and ReLU masks, LRN inputs when needed).  The reverse pass then runs
on small windows: 1x1 at the target, growing through each conv/pool (an output window ``[a, b]`` needs the input
window ``[a*s - p, b*s - p + k - 1]``) up to the unit's receptive field in pixels (``zf.net.receptive``).  All rows
share the window sizes, so thousands of projections run as one batch of small tensors.  ``project_full`` runs
autograd on whole images with the ReLU rule swapped in; it is the reference, and the path for fc targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zf.net.layers import Layer, resolve_layer
from zf.projection.reversible import NotInvertibleError, check_module, pair
from zf.projection.rules import relu_rule
from zf.projection.windows import gather, inside


@dataclass(frozen=True)
class Target:
    """A layer of a stack this engine reverses, and how far the forward pass runs to reach it."""

    layer: Layer
    stop: int  # last index of model.features that runs
    head: int | None  # last index of model.classifier that runs (None: the target is in features)


def target(model: nn.Module, layer: int | str, tap: str) -> Target:
    """The layer ``resolve_layer(model, layer, tap)`` of a stack, after checking every module between it and the
    pixels can be reversed (``NotInvertibleError`` naming the first that cannot)."""
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
        check_module(f"features.{k}", m)
    return Target(lay, stop, head)


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
def activations(model: nn.Module, t: Target, images: torch.Tensor) -> torch.Tensor:
    """The activations of target ``t`` for images (N, 3, H, W): (N, C, h, w), or (N, C, 1, 1) for a classifier
    layer; eval semantics whatever ``model.training`` is."""
    x, _ = _forward_features(model.features, images, t.stop)
    if t.head is not None:
        x = _forward_head(model, x, t.head)[:, :, None, None]
    return x


# --- reverse pass on windows ---


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
            (sy, sx), (py, px) = pair(m.stride), pair(m.padding)
            sig = F.conv_transpose2d(sig, m.weight, stride=(sy, sx), groups=m.groups)
            oy, ox = oy * sy - py, ox * sx - px
            sig = sig * inside(oy, ox, sig.shape[2], sig.shape[3], hh, ww)  # padding is not part of the map
        elif isinstance(m, nn.MaxPool2d):
            (ky, kx), (sy, sx), (py, px) = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding)
            idx, ok = gather(rec.switches, img, oy, ox, h, w)
            oy, ox = oy * sy - py, ox * sx - px
            h2, w2 = (h - 1) * sy + ky, (w - 1) * sx + kx
            ry = torch.div(idx, ww, rounding_mode="floor") - oy[:, None, None, None]
            rx = idx % ww - ox[:, None, None, None]
            flat = torch.where(ok, ry * w2 + rx, 0).view(r, c, h * w)
            # scatter_add: windows that share an input location add up there (the max-pool gradient)
            sig = sig.new_zeros(r, c, h2 * w2).scatter_add_(2, flat, sig.reshape(r, c, h * w)).view(r, c, h2, w2)
        elif isinstance(m, nn.ReLU):
            mask = None if method == "deconvnet" else gather(rec.mask, img, oy, ox, h, w)[0]
            sig = relu_rule(sig, mask, method)
        elif isinstance(m, nn.LocalResponseNorm):
            if norm == "gradient":  # LRN mixes channels at one pixel only, so the window's inputs suffice
                sig = _lrn_vjp(m, gather(rec.saved, img, oy, ox, h, w)[0], sig)
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
    part, ok = gather(sig, torch.arange(r, device=sig.device), zy - oy, zx - ox, ny, nx)
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
        return relu_rule(g, mask, ctx.method), None


class _SkipBackward(torch.autograd.Function):
    """Forward through a module, identity backward (LRN with ``norm="identity"``)."""

    @staticmethod
    def forward(ctx, x, module):
        return module(x)

    @staticmethod
    def backward(ctx, g):
        return g, None


def _forward_rule(model: nn.Module, t: Target, x: torch.Tensor, method: str, norm: str) -> torch.Tensor:
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


def _project_rows(model, t, images, rows, method, seed_mode, norm):
    x = images[rows[:, 0]].detach().requires_grad_(True)
    with torch.enable_grad():
        acts = _forward_rule(model, t, x, method, norm)
        _check_rows(rows, acts.shape, t.layer)
        ar = torch.arange(len(rows), device=rows.device)
        value = acts[ar, rows[:, 1], rows[:, 2], rows[:, 3]].detach()
        g = torch.zeros_like(acts)
        g[ar, rows[:, 1], rows[:, 2], rows[:, 3]] = value if seed_mode == "activation" else 1.0
        return torch.autograd.grad(acts, x, g)[0]


def _check_rows(rows: torch.Tensor, shape, layer: Layer) -> None:
    _, c, h, w = shape
    for j, (name, n) in enumerate((("channel", c), ("y", h), ("x", w)), start=1):
        col = rows[:, j]
        if len(col) and (int(col.min()) < 0 or int(col.max()) >= n):
            raise IndexError(f"rows: {name} out of range for {layer.name} ({layer.path}) with maps {tuple(shape[1:])}")


def _row_chunk(features: nn.Sequential, stop: int, channels: int, budget: float = 2 ** 28) -> int:
    """Rows per reverse batch so that the largest window tensors stay near ``budget`` bytes."""
    h = w = 1
    worst = channels
    for i in range(stop, -1, -1):
        m = features[i]
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            (ky, kx), (sy, sx) = pair(m.kernel_size), pair(m.stride or m.kernel_size)
            h, w = (h - 1) * sy + ky, (w - 1) * sx + kx
            channels = getattr(m, "in_channels", channels)
        worst = max(worst, channels * h * w)
    per_row = 40 * worst  # float signal, int64 switches and scatter indices, temporaries
    return int(max(1, min(4096, budget // per_row)))


IMAGES_PER_CHUNK = 32  # distinct images per forward pass of ``windows``


def windows(model, t, images, rows, method, seed_mode, norm, batch_size):
    """Projections of ``rows`` (checked) inside their receptive-field windows and the windows' corners (see
    ``zf.projection.api.project_windows``).  ``method`` may also be a list of methods: then the projections are
    ``{method: windows}``, all from one forward pass (its switches and masks serve every method)."""
    dev = images.device
    many = not isinstance(method, str)
    methods = list(method) if many else [method]
    out, corners = dict.fromkeys(methods), torch.zeros(len(rows), 2, dtype=torch.long, device=dev)
    order = torch.argsort(rows[:, 0], stable=True)
    uniq = torch.unique(rows[:, 0])
    for u0 in range(0, len(uniq), IMAGES_PER_CHUNK):
        ids = uniq[u0:u0 + IMAGES_PER_CHUNK]
        with torch.no_grad():
            acts, recs = _forward_features(model.features, images[ids], t.stop,
                                           masks=any(m != "deconvnet" for m in methods),
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
            sig[ar, ch, 0, 0] = acts[img, ch, y, x] if seed_mode == "activation" else 1.0
            for m in methods:
                with torch.no_grad():
                    win, oy, ox = _reverse_windows(model.features, recs, t.stop, sig, img, y, x, m, norm)
                if out[m] is None:
                    out[m] = win.new_zeros(len(rows), *win.shape[1:])
                out[m][idx] = win
            corners[idx, 0], corners[idx, 1] = oy, ox
    for m in methods:
        if out[m] is None:  # no rows
            out[m] = images.new_zeros(0, images.shape[1], 1, 1)
    return (out if many else out[method]), corners


def project_full(model, t: Target, images, rows, method, seed_mode, norm, batch_size):
    """Projections of ``rows`` (checked) on whole images by autograd with the ReLU and LRN rules swapped in,
    ``batch_size`` rows at a time: (R, 3, H, W)."""
    out = images.new_zeros(len(rows), *images.shape[1:])
    for b0 in range(0, len(rows), batch_size):
        out[b0:b0 + batch_size] = _project_rows(model, t, images, rows[b0:b0 + batch_size], method, seed_mode, norm)
    return out


__all__ = ["Target", "target", "activations", "windows",
           "project_full"]
