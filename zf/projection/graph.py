"""The graph engine: projections of single units of any network (ResNet, DenseNet, GoogLeNet, MobileNet,
ConvNeXt, ...) down to pixels, by autograd with the method's rule (``zf.projection.rules``) swapped in at every
activation, whether it is a module (``nn.ReLU``) or a functional call (``F.relu``, ``torch.relu``, ``x.relu_()``).
Max pools route through their switches, convolutions through their transposed filters, batch norm (running
statistics), additions and concatenations as autograd has them.  ``zf.projection.stack`` is the faster engine for
``features`` stacks of leaf modules; ``zf.projection.api`` picks the engine.

Speed: the forward stops at the target layer; one forward per distinct image, then reverse passes batched over the
image's rows with ``torch.autograd.grad(..., is_grads_batched=True)``, ``chunk`` rows at a time.  Measured on 2 CPU
cores, ResNet-50 ``layer3``, 18 rows of one 224 px image: 0.09 s a row batched, 0.13-0.16 s a row with the
alternative (each row on its own copy of the image, one forward of ``chunk`` copies and one backward), 0.14 s a row
for captum's per-unit loop.  When a unit's receptive field
is much smaller than the image, each row instead runs forward and back on a crop of its receptive field aligned to
the layer's stride, where the padding of every intermediate map is the one of the whole image, so the result is the
same (``crop``: used where ``crop_check`` finds it exact, ``crop=auto``; ``zf.net.receptive`` measures the
field).  Rows whose crops coincide (one image, one corner: units at
one position, or positions clamped to the same crop at a border) share the crop's forward pass.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from zf.errors import ConfigError
from zf.net.layers import resolve_layer
from zf.net.modules import call_counts, capture, eval_mode, module_paths
from zf.net.receptive import graph_receptive_fields
from zf.projection.rules import CROPS, rules
from zf.projection.windows import check_inputs, gather


def _check_units(r: torch.Tensor, shape, path: str) -> None:
    _, c, h, w = shape
    for j, (name, n) in enumerate((("channel", c), ("y", h), ("x", w)), start=1):
        if len(r) and (int(r[:, j].min()) < 0 or int(r[:, j].max()) >= n):
            raise IndexError(f"rows: {name} out of range for {path} with maps {tuple(shape[1:])}")


def _seeds(acts, b, ch, y, x, seed_mode):
    g = torch.zeros_like(acts)
    g[b, ch, y, x] = acts[b, ch, y, x].detach() if seed_mode == "activation" else 1.0
    return g


def _full(model, images, rows, path, method, seed_mode, chunk, out):
    """Whole images: one forward per image, reverse passes ``is_grads_batched`` over chunks of its rows (faster
    than one forward of as many copies of the image, see ``zf.projection.graph``'s docstring)."""
    for i in torch.unique(rows[:, 0]).tolist():
        sel = torch.nonzero(rows[:, 0] == i).flatten()
        x = images[i:i + 1].detach().requires_grad_(True)
        with torch.enable_grad(), rules(method):
            acts = capture(model, x, [path])[path]
        for b0 in range(0, len(sel), chunk):
            idx = sel[b0:b0 + chunk]
            r = rows[idx]
            ar = torch.arange(len(r), device=r.device)
            _check_units(r, acts.shape, path)
            g = torch.zeros(len(r), *acts.shape, dtype=acts.dtype, device=acts.device)
            v = acts[0, r[:, 1], r[:, 2], r[:, 3]].detach() if seed_mode == "activation" else 1.0
            g[ar, 0, r[:, 1], r[:, 2], r[:, 3]] = v
            gx = torch.autograd.grad(acts, x, g, retain_graph=True, is_grads_batched=True)[0]
            out[idx] = gx[:, 0]


def _crop_len(n: int, size: int, stride: int, offset: int) -> int:
    """Length of an interior crop: the field plus its fixed phase ``offset % stride`` in a stride-aligned crop."""
    return min(n, size + offset % stride)


def _crops(rf, rows, H, W):
    """Per row and axis the crop [a, e) of the image that holds the unit's receptive field, ``a`` a multiple of
    the layer's stride (so every intermediate map keeps its grid and its padding).  A field starts at the fixed
    phase ``offset % stride`` of its aligned crop, so interior crops have one length, field plus phase.  A crop that
    would pass the image's far edge ends exactly there instead (the image's own border, with its own padding) and
    starts at the last aligned position that still holds the field, so all far-edge crops share one length too."""
    out = []
    for ax, (n, size, stride, off) in enumerate(((H, rf.size_hw[0], rf.stride_hw[0], rf.offset_hw[0]),
                                                  (W, rf.size_hw[1], rf.stride_hw[1], rf.offset_hw[1]))):
        u = rows[:, 2 + ax]
        length = _crop_len(n, size, stride, off)
        if length >= n:
            a, e = torch.zeros_like(u), torch.full_like(u, n)
        else:
            a = torch.div((u * stride + off).clamp_min(0), stride, rounding_mode="floor") * stride
            edge = a + length > n
            a_edge = (n - length) // stride * stride
            a = torch.where(edge, torch.full_like(a, a_edge), a)
            e = torch.where(edge, torch.full_like(a, n), a + length)
        out.append((a, e))
    return out


# crops per forward below which copies of a crop pay (measured: a backward of 1 crop costs 3x a row of a batch of 8)
_MIN_BATCH = 8


def _cropped(model, images, rows, path, method, seed_mode, chunk, out, rf):
    """Rows on receptive-field crops.  Rows that share a crop (same image and corner) share its forward pass: crops
    are grouped by shape and by their number of rows ``m``, run forward at most ``chunk`` at a time, and go back
    once per round, each round taking one row of every crop (``m`` rounds).  A group of fewer than ``_MIN_BATCH``
    crops runs forward on as many copies of each as it takes to reach that batch (fewer rounds), since a reverse
    pass over one or two crops costs up to three times as much a row."""
    H, W = images.shape[2:]
    (ay, ey), (ax, ex) = _crops(rf, rows, H, W)
    key = torch.stack([rows[:, 0], ay, ax, ey - ay, ex - ax], 1)
    crops, inv, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    members = torch.argsort(inv, stable=True).split(counts.tolist())  # members[c]: the rows of crop c
    sy, sx = rf.stride_hw
    dev = rows.device
    chans = torch.arange(images.shape[1], device=dev)[None, :, None, None]
    group = torch.cat([crops[:, 3:], counts[:, None]], 1)
    for h, w, m in torch.unique(group, dim=0).tolist():
        cs = torch.nonzero((group == torch.tensor([h, w, m], device=dev)).all(1)).flatten()
        copies = 1 if len(cs) >= _MIN_BATCH else min(m, chunk, -(-_MIN_BATCH // len(cs)))
        rounds = -(-m // copies)
        dy, dx = torch.arange(h, device=dev), torch.arange(w, device=dev)
        for b0 in range(0, len(cs), max(1, chunk // copies)):
            cc = cs[b0:b0 + max(1, chunk // copies)].repeat_interleave(copies)  # one slot per copy
            i0, a0, c0 = crops[cc, 0], crops[cc, 1], crops[cc, 2]
            x = images[i0[:, None, None, None], chans, (a0[:, None] + dy)[:, None, :, None],
                       (c0[:, None] + dx)[:, None, None, :]].detach().requires_grad_(True)
            with torch.enable_grad(), rules(method):
                acts = capture(model, x, [path], probe=images[:1])[path]
            order = torch.stack([members[c] for c in cc[::copies].tolist()])  # (crops, m): the rows of each crop
            for t in range(rounds):
                j = torch.arange(t * copies, min((t + 1) * copies, m), device=dev)  # this round's rows of a crop
                idx = order[:, j].flatten()
                slot = (torch.arange(len(order), device=dev)[:, None] * copies + (j - t * copies)).flatten()
                r = rows[idx]
                y = r[:, 2] - torch.div(ay[idx], sy, rounding_mode="floor")
                xx = r[:, 3] - torch.div(ax[idx], sx, rounding_mode="floor")
                _check_units(torch.stack([slot, r[:, 1], y, xx], 1), acts.shape, path)
                gx = torch.autograd.grad(acts, x, _seeds(acts, slot, r[:, 1], y, xx, seed_mode),
                                         retain_graph=t < rounds - 1)[0]
                for i, s_, p, q in zip(idx.tolist(), slot.tolist(), a0[slot].tolist(), c0[slot].tolist()):
                    out[i, :, p:p + h, q:q + w] = gx[s_]  # out is zero elsewhere


# ---------------------------------------------------------------------------------------------------------------
# when the crop path is exact

_CROP_OK: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
# module types whose output depends on the size of their input or on the whole map: on a crop they compute
# something else (a "same" padding computed from the input size, a global pool, a gate from the whole map...)
_SIZE_DEPENDENT = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.GroupNorm, nn.InstanceNorm2d,
                   nn.MultiheadAttention)
_SIZE_DEPENDENT_NAMES = ("Same", "SqueezeExcit", "SEModule", "EffectiveSE", "SqueezeExcitation", "ChannelAttn",
                         "Attention", "Attn", "NonLocal", "GlobalContext", "CbamModule", "SelectAdaptivePool",
                         "AdaptiveAvgMax", "GatherExcite", "EvoNorm")


def _modules_before(model: nn.Module, path: str, hw) -> list[str]:
    """Paths of the modules that finish before ``path``'s last call in one forward (and its submodules)."""
    p0 = next(model.parameters(), None)
    x = torch.zeros(1, 3, *hw, dtype=p0.dtype if p0 is not None else None,
                    device=p0.device if p0 is not None else None)
    need, _ = call_counts(model, x)
    order: list[str] = []
    seen = {path: 0}
    mods = module_paths(model)

    class _Done(Exception):
        pass

    def hook(p):
        def fn(*_):
            order.append(p)
            if p == path:
                seen[p] += 1
                if seen[p] == need.get(p, 1):
                    raise _Done
        return fn

    hooks = [m.register_forward_hook(hook(p)) for p, m in mods.items()]
    try:
        with torch.no_grad():
            model(x)
    except _Done:
        pass
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order + [q for q in mods if q.startswith(path + ".")]))


def size_dependent_module(model: nn.Module, path: str, hw) -> tuple[str, str] | None:
    """(path, type name) of the first module before ``path`` (or inside it) whose output depends on its input's size
    or on the whole map (timm's ``Conv2dSame`` / ``*Same`` pools, squeeze-excitation gates, adaptive pools, group
    and instance norms, attention), or ``None``.  A static check by module type; ``crop_check`` also compares."""
    mods = dict(model.named_modules())
    for p in _modules_before(model, path, hw):
        m = mods[p]
        name = type(m).__name__
        if isinstance(m, _SIZE_DEPENDENT) or any(t in name for t in _SIZE_DEPENDENT_NAMES):
            return p, name
    return None


def crop_check(model: nn.Module, images: torch.Tensor, path: str, rf, log=print) -> bool:
    """Whether ``project_graph``'s receptive-field crops are exact for ``path`` of ``model`` at this image size,
    decided once per (model, layer, size) and cached, with one line to ``log`` saying which and why.

    Crops are used where (1) the crop has under half the image's pixels, (2) no module before the layer depends on
    its input's size or on the whole map (``size_dependent_module``), and (3) two rows (a unit at the map's centre
    and one at its far corner, whose crop ends at the image's border) of the first image, projected by the gradient
    and the deconvnet with seed_mode one, come out equal on the crop and on the whole image (within 1e-5 of the largest
    value).  Otherwise every row runs on the whole image, which is exact for any network."""
    H, W = images.shape[2:]
    cache = _CROP_OK.setdefault(model, {})
    key = (path, H, W)
    if key in cache:
        return cache[key]
    area = (_crop_len(H, rf.size_hw[0], rf.stride_hw[0], rf.offset_hw[0])
            * _crop_len(W, rf.size_hw[1], rf.stride_hw[1], rf.offset_hw[1]))
    ok, why = False, ""
    if area >= 0.5 * H * W:
        why = f"whole images (its receptive field's crop, {area} px, is over half the image)"
    elif (bad := size_dependent_module(model, path, (H, W))) is not None:
        why = (f"whole images ({bad[0]} is a {bad[1]}, whose output depends on its input's size or on the whole "
               "map: a crop would change it)")
    else:
        h, w = rf.out_hw
        rows = torch.tensor([[0, 0, h // 2, w // 2], [0, 0, h - 1, w - 1]], device=images.device)
        worst = 0.0
        for method in ("gradient", "deconvnet"):
            ref = torch.zeros(len(rows), *images.shape[1:], dtype=images.dtype, device=images.device)
            got = torch.zeros_like(ref)
            _full(model, images[:1], rows, path, method, "one", 16, ref)
            try:
                _cropped(model, images[:1], rows, path, method, "one", 64, got, rf)
            except (IndexError, RuntimeError):  # the crop's map has another shape: not the whole image's grid
                worst = float("inf")
                break
            peak = float(ref.abs().max())
            worst = max(worst, float((ref - got).abs().max()) / peak if peak > 0 else 0.0)
        ok = worst <= 1e-5
        why = (f"receptive-field crops (a crop's projection matched the whole image's to {worst:.1e} of its peak)"
               if ok else "whole images (a crop's map does not keep the whole image's grid)" if worst == float("inf")
               else f"whole images (a crop's projection differed from the whole image's by {worst:.2g} of its peak)")
    cache[key] = ok
    if log is not None:
        log(f"projections of {path} at {H}x{W}: {why}")
    return ok


def project_graph(model: nn.Module, images: torch.Tensor, rows, layer: str, method: str = "deconvnet",
                  seed_mode: str = "activation", chunk: int | None = None, crop: bool | None = None) -> torch.Tensor:
    """Project single activations of any network down to pixel space (see the module docstring).

    Args:
        model: any ``nn.Module`` taking (N, 3, H, W); run in eval mode (its flags are restored afterwards).
        images: (N, 3, H, W) normalised model inputs.
        rows: (R, 4) long, (image index, channel, y, x) of the unit in ``layer``'s output, as
            ``zf.projection.api.project``.
        layer: a module path or name (``zf.net.layers.resolve_layer``); its output (last call) is the target.
        method: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
        seed_mode: ``"activation"`` (the signal starts at the unit's value) or ``"one"`` (captum's Neuron* convention).
        chunk: rows per reverse batch (memory: about ``chunk`` times one image's backward, or one crop's forward
            and backward); default 64 with crops, 16 on whole images.
        crop: ``"auto"`` (or ``None``): each row on a stride-aligned crop of its receptive field where
            ``crop_check`` finds that exact (checked once per model, layer and image size, said in one line),
            otherwise on the whole image; ``"off"`` (or ``False``): whole images; ``True``: crops unchecked (tests).

    Returns:
        (R, 3, H, W) float32 projections.
    """
    rows = check_inputs(images, rows, method, seed_mode)
    if chunk is not None and int(chunk) < 1:
        raise ConfigError(f"chunk={chunk}: use a positive number of rows per reverse batch")
    path = resolve_layer(model, layer).path
    H, W = images.shape[2:]
    out = torch.zeros(len(rows), *images.shape[1:], dtype=images.dtype, device=images.device)
    if not len(rows):
        return out.float()
    if crop in (None, "auto"):
        crop = None
    elif crop == "off":
        crop = False
    elif not isinstance(crop, bool):
        raise ConfigError(f"crop={crop!r}: use one of {', '.join(CROPS)}")
    with eval_mode(model):
        rf = None
        if crop is None or crop:
            rf = graph_receptive_fields(model, (H, W), [path])[path]
            if crop is None:
                crop = crop_check(model, images, path, rf)
        if crop:
            _cropped(model, images, rows, path, method, seed_mode, int(chunk or 64), out, rf)
        else:
            _full(model, images, rows, path, method, seed_mode, int(chunk or 16), out)
    return out.float()


@torch.no_grad()
def graph_activations(model: nn.Module, images: torch.Tensor, layer: str) -> torch.Tensor:
    """The output of ``layer`` (path or name) for ``images``, in eval mode, stopping the forward there."""
    path = resolve_layer(model, layer).path
    with eval_mode(model):
        return capture(model, images, [path])[path]


def graph_windows(model, images, rows, path, method, seed_mode, batch_size, crop="auto"):
    """``zf.projection.api.project_windows`` for any graph: each row's projection cut to its receptive field's window
    (clipped to the image), and the windows' top-left corners."""
    hw = tuple(images.shape[2:])
    rf = graph_receptive_fields(model, hw, [path])[path]
    sh, sw = min(rf.size_hw[0], hw[0]), min(rf.size_hw[1], hw[1])
    corners = torch.stack([rows[:, 2] * rf.stride_hw[0] + rf.offset_hw[0],
                           rows[:, 3] * rf.stride_hw[1] + rf.offset_hw[1]], 1)
    if rf.size_hw[0] > hw[0]:
        corners[:, 0] = 0
    if rf.size_hw[1] > hw[1]:
        corners[:, 1] = 0
    out = images.new_zeros(len(rows), images.shape[1], sh, sw)
    for b0 in range(0, len(rows), 256):  # full canvases for 256 rows at a time, cut to the windows
        sl = slice(b0, b0 + 256)
        full = project_graph(model, images, rows[sl], path, method, seed_mode, chunk=batch_size, crop=crop)
        win, ok = gather(full, torch.arange(len(full), device=rows.device), corners[sl, 0], corners[sl, 1], sh, sw)
        out[sl] = torch.where(ok, win, 0)
    return out, corners


__all__ = ["project_graph", "graph_activations", "graph_windows", "crop_check", "size_dependent_module"]
