"""Projections on any graph: ``project_graph`` and ``graph_activations`` (see ``zf.graph``'s docstring for the
rules at each activation and the speed notes); re-exported by ``zf.graph``."""
from __future__ import annotations

import torch
from torch import nn

from zf.errors import ConfigError
from zf.graph import METHODS, SEEDS, capture, eval_mode, rules


def check_inputs(images, rows, method, seed):
    """``rows`` as a long (R, 4) tensor on ``images``'s device, after checking the method, seed, image batch and
    image indices (``zf.errors.ConfigError`` / ``IndexError``)."""
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: use one of {METHODS}")
    if seed not in SEEDS:
        raise ConfigError(f"seed={seed!r}: use one of {SEEDS}")
    if images.dim() != 4:
        raise ConfigError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    rows = torch.as_tensor(rows, device=images.device).long().reshape(-1, 4)
    if len(rows) and (int(rows[:, 0].min()) < 0 or int(rows[:, 0].max()) >= len(images)):
        raise IndexError(f"rows: image index out of range for {len(images)} images")
    return rows


def _check_units(r: torch.Tensor, shape, path: str) -> None:
    _, c, h, w = shape
    for j, (name, n) in enumerate((("channel", c), ("y", h), ("x", w)), start=1):
        if len(r) and (int(r[:, j].min()) < 0 or int(r[:, j].max()) >= n):
            raise IndexError(f"rows: {name} out of range for {path} with maps {tuple(shape[1:])}")


def _seeds(acts, b, ch, y, x, seed):
    g = torch.zeros_like(acts)
    g[b, ch, y, x] = acts[b, ch, y, x].detach() if seed == "activation" else 1.0
    return g


def _full(model, images, rows, path, method, seed, chunk, out, batched=True):
    """Whole images.  Default (``batched``): one forward per image, reverse passes ``is_grads_batched`` over chunks
    of its rows; otherwise each chunk of one image's rows runs forward on as many copies of the image and back once
    (equal results; slower, see ``zf.graph``'s docstring)."""
    for i in torch.unique(rows[:, 0]).tolist():
        sel = torch.nonzero(rows[:, 0] == i).flatten()
        if batched:
            x = images[i:i + 1].detach().requires_grad_(True)
            with torch.enable_grad(), rules(method):
                acts = capture(model, x, [path])[path]
        for b0 in range(0, len(sel), chunk):
            idx = sel[b0:b0 + chunk]
            r = rows[idx]
            ar = torch.arange(len(r), device=r.device)
            if not batched:
                x = images[i:i + 1].detach().repeat(len(r), 1, 1, 1).requires_grad_(True)
                with torch.enable_grad(), rules(method):
                    acts = capture(model, x, [path])[path]
                _check_units(r, acts.shape, path)
                out[idx] = torch.autograd.grad(acts, x, _seeds(acts, ar, r[:, 1], r[:, 2], r[:, 3], seed))[0]
                continue
            _check_units(r, acts.shape, path)
            g = torch.zeros(len(r), *acts.shape, dtype=acts.dtype, device=acts.device)
            v = acts[0, r[:, 1], r[:, 2], r[:, 3]].detach() if seed == "activation" else 1.0
            g[ar, 0, r[:, 1], r[:, 2], r[:, 3]] = v
            gx = torch.autograd.grad(acts, x, g, retain_graph=True, is_grads_batched=True)[0]
            out[idx] = gx[:, 0]


def _crop_len(n: int, size: int, stride: int) -> int:
    length = min(n, size + stride - 1)
    return min(n, length + (n - length) % stride)


def _crops(rf, rows, H, W):
    """Per row and axis the crop [a, a + L) of the image that holds the unit's receptive field, ``a`` a multiple of
    the layer's stride (so every intermediate map keeps its grid and its padding), one length L for all rows:
    the field plus stride - 1, grown until ``n - L`` is a multiple of the stride, so that a crop that would pass
    the image's far edge can end exactly there instead (the image's own border, with its own padding)."""
    out = []
    for ax, (n, size, stride, off) in enumerate(((H, rf.size_hw[0], rf.stride_hw[0], rf.offset_hw[0]),
                                                  (W, rf.size_hw[1], rf.stride_hw[1], rf.offset_hw[1]))):
        u = rows[:, 2 + ax]
        length = _crop_len(n, size, stride)
        if length >= n:
            a = torch.zeros_like(u)
        else:
            a = torch.div((u * stride + off).clamp_min(0), stride, rounding_mode="floor") * stride
            a = torch.where(a + length > n, torch.full_like(a, n - length), a)
        out.append((a, a + length))
    return out


def _cropped(model, images, rows, path, method, seed, chunk, out, rf):
    """Each row forward and back on its own crop (rows of one crop shape batched ``chunk`` at a time)."""
    H, W = images.shape[2:]
    (ay, ey), (ax, ex) = _crops(rf, rows, H, W)
    shapes = torch.stack([ey - ay, ex - ax], 1)
    for hw in torch.unique(shapes, dim=0).tolist():
        sel = torch.nonzero((shapes[:, 0] == hw[0]) & (shapes[:, 1] == hw[1])).flatten()
        for b0 in range(0, len(sel), chunk):
            idx = sel[b0:b0 + chunk]
            r = rows[idx]
            ys = ay[idx, None] + torch.arange(hw[0], device=r.device)
            xs = ax[idx, None] + torch.arange(hw[1], device=r.device)
            x = images[r[:, 0, None, None, None], torch.arange(images.shape[1], device=r.device)[None, :, None, None],
                       ys[:, None, :, None], xs[:, None, None, :]].detach().requires_grad_(True)
            with torch.enable_grad(), rules(method):
                acts = capture(model, x, [path], probe=images[:1])[path]
            sy, sx = rf.stride_hw
            y = r[:, 2] - torch.div(ay[idx], sy, rounding_mode="floor")
            xx = r[:, 3] - torch.div(ax[idx], sx, rounding_mode="floor")
            ar = torch.arange(len(r), device=r.device)
            loc = torch.stack([ar, r[:, 1], y, xx], 1)
            _check_units(loc, acts.shape, path)
            gx = torch.autograd.grad(acts, x, _seeds(acts, ar, r[:, 1], y, xx, seed))[0]
            for j, (i, a0, a1) in enumerate(zip(idx.tolist(), ay[idx].tolist(), ax[idx].tolist())):
                out[i, :, a0:a0 + hw[0], a1:a1 + hw[1]] = gx[j]  # out is zero elsewhere


def project_graph(model: nn.Module, images: torch.Tensor, rows, layer: str, method: str = "deconvnet",
                  seed: str = "activation", chunk: int | None = None, crop: bool | None = None) -> torch.Tensor:
    """Project single activations of any network down to pixel space (see the module docstring).

    Args:
        model: any ``nn.Module`` taking (N, 3, H, W); run in eval mode (its flags are restored afterwards).
        images: (N, 3, H, W) normalised model inputs.
        rows: (R, 4) long, (image index, channel, y, x) of the unit in ``layer``'s output, as ``zf.deconv.project``.
        layer: a module path or name (``zf.layers.resolve_layer``); its output (last call) is the target.
        method: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
        seed: ``"activation"`` (the signal starts at the unit's value) or ``"one"`` (captum's Neuron* convention).
        chunk: rows per reverse batch (memory: about ``chunk`` times one image's backward, or one crop's forward
            and backward); default 64 with crops, 16 on whole images.
        crop: run each row on a stride-aligned crop of its receptive field (``None``: when the crop has under half
            the image's pixels).  Exact either way.

    Returns:
        (R, 3, H, W) float32 projections.
    """
    from zf.layers import resolve_layer
    from zf.receptive import graph_receptive_fields

    rows = check_inputs(images, rows, method, seed)
    if chunk is not None and int(chunk) < 1:
        raise ConfigError(f"chunk={chunk}: use a positive number of rows per reverse batch")
    path = resolve_layer(model, layer).path
    H, W = images.shape[2:]
    out = torch.zeros(len(rows), *images.shape[1:], dtype=images.dtype, device=images.device)
    if not len(rows):
        return out.float()
    with eval_mode(model):
        rf = None
        if crop is None or crop:
            rf = graph_receptive_fields(model, (H, W), [path])[path]
            area = _crop_len(H, rf.size_hw[0], rf.stride_hw[0]) * _crop_len(W, rf.size_hw[1], rf.stride_hw[1])
            crop = crop if crop is not None else area < 0.5 * H * W
        if crop:
            _cropped(model, images, rows, path, method, seed, int(chunk or 64), out, rf)
        else:
            _full(model, images, rows, path, method, seed, int(chunk or 16), out)
    return out.float()


@torch.no_grad()
def graph_activations(model: nn.Module, images: torch.Tensor, layer: str) -> torch.Tensor:
    """The output of ``layer`` (path or name) for ``images``, in eval mode, stopping the forward there."""
    from zf.layers import resolve_layer

    path = resolve_layer(model, layer).path
    with eval_mode(model):
        return capture(model, images, [path])[path]


__all__ = ["project_graph", "graph_activations"]


def graph_windows(model, images, rows, path, method, seed, batch_size):
    """``zf.deconv.project_windows`` for any graph: each row's projection cut to its receptive field's window
    (clipped to the image), and the windows' top-left corners."""
    from zf.deconv import _gather
    from zf.receptive import graph_receptive_fields

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
        full = project_graph(model, images, rows[sl], path, method, seed, chunk=batch_size)
        win, ok = _gather(full, torch.arange(len(full), device=rows.device), corners[sl, 0], corners[sl, 1], sh, sw)
        out[sl] = torch.where(ok, win, 0)
    return out, corners
