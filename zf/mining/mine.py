"""Top-k mining (paper Fig. 2): for every unit (feature map) of one or more layers, the k images of a data set whose
activation of that unit is largest, with the position of that activation.

One streaming pass over the data mines every requested layer at once; memory holds only the running top-k per unit,
so it does not grow with the number of images.  Each image counts once per unit, at its strongest position (the first
in raster order if several tie); images are ranked by activation, ties broken by the smaller image index, so the
table is the same on every run and on any number of processes.

    tables = mine(model, dataset, layers=[1, 2, 3, 4, 5], k=9)    # {"relu4": TopK, ...}

``state_path`` makes the pass resumable: the running tables (and the unreadable files met so far) are saved every
``save_every`` batches or ``save_every_s`` seconds, whichever comes first, and a restarted pass skips what is done.
Under ``torchrun`` each process mines a contiguous shard and the tables are merged (``merge``) into exactly the
single-process result.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from zf.data import Normalize, Tagged, add_skipped, collate_tagged, record_skipped
from zf.errors import ConfigError, DataError, LayerError
from zf.mining.table import TopK
from zf.net.layers import TAPS, is_stack, resolve_layer
from zf.net.modules import capture
from zf.net.receptive import receptive_fields, unit_box


class Running:
    """The running top-k of one layer: ``value`` (C, k) float, ``image``/``pos`` (C, k) long (pos = y * w + x).
    Empty slots hold value -inf and image -1."""

    def __init__(self, channels: int, k: int):
        self.value = torch.full((channels, k), -float("inf"))
        self.image = torch.full((channels, k), -1, dtype=torch.long)
        self.pos = torch.zeros((channels, k), dtype=torch.long)

    def update(self, value: torch.Tensor, image: torch.Tensor, pos: torch.Tensor) -> None:
        """Merge candidates ``value``/``image``/``pos`` of shape (C, M) into the table."""
        v = torch.cat([self.value, value], 1)
        im = torch.cat([self.image, image], 1)
        p = torch.cat([self.pos, pos], 1)
        # order: value descending, then image index ascending (empty slots, image -1, sort last via -inf)
        key_img = torch.where(im < 0, torch.iinfo(torch.long).max, im)
        o = torch.argsort(key_img, dim=1, stable=True)
        v, im, p = v.gather(1, o), im.gather(1, o), p.gather(1, o)
        o = torch.argsort(v, dim=1, descending=True, stable=True)
        k = self.value.shape[1]
        o = o[:, :k]
        self.value, self.image, self.pos = v.gather(1, o), im.gather(1, o), p.gather(1, o)

    def state(self) -> dict:
        return {"value": self.value, "image": self.image, "pos": self.pos}

    @classmethod
    def from_state(cls, s: dict) -> "Running":
        r = cls.__new__(cls)
        r.value, r.image, r.pos = s["value"].clone(), s["image"].clone(), s["pos"].clone()
        return r


def merge(parts: Iterable[dict]) -> dict:
    """Merge running states (``Running.state()``) of disjoint image sets into one."""
    parts = list(parts)
    out = Running.from_state(parts[0])
    for p in parts[1:]:
        out.update(p["value"], p["image"], p["pos"])
    return out.state()


def _feature_taps(model: nn.Module, layers: Sequence, tap: str) -> dict[str, str]:
    """{module path: layer name} of the tapped modules (for a ``features`` stack every tap must lie in
    ``features``).  Raises ``ConfigError`` for an unknown tap or no layers, ``LayerError`` for a layer the model
    lacks or one in the classifier."""
    if tap not in TAPS:
        raise ConfigError(f"tap={tap!r} is not a tap; use one of {', '.join(TAPS)}")
    if isinstance(layers, (str, int)):
        layers = [layers]
    if not list(layers):
        raise ConfigError("layers=[] names no layer to mine; give layer names (conv4, relu5, ...) or 1..5")
    taps = {}
    for layer in layers:
        try:
            L = resolve_layer(model, layer, tap)
        except TypeError as e:
            raise LayerError(str(e)) from None
        except KeyError as e:
            raise LayerError(str(e.args[0]) if e.args else str(e)) from None
        if is_stack(model) and L.index is None:
            raise LayerError(f"layer {layer!r} ({L.name}) is in the classifier; mining covers the convolutional "
                             "layers of model.features")
        taps[L.path] = L.name
    return taps


def run_features(model: nn.Module, x: torch.Tensor, taps: dict[str, str]) -> dict[str, torch.Tensor]:
    """Forward ``x`` only as far as the last tap; {layer name: activation (N, C, h, w)}.  ``taps`` maps module paths
    to names (``_feature_taps``).  The activations are read by ``zf.net.modules.capture``: forward hooks that copy what
    they read (an in-place ReLU after a conv cannot rectify the conv output that ``tap="conv"`` reads) and stop the
    forward after the last tapped module."""
    return {taps[p]: v for p, v in capture(model, x, list(taps), clone=_must_copy(model, taps)).items()}


def _must_copy(model: nn.Module, taps: dict[str, str]) -> bool:
    """Whether a tapped output can be changed after it is read: always in a graph; in a ``features`` stack only
    when a tapped module is followed by one that works in place (torchvision's ``ReLU(inplace=True)`` after a
    conv).  Copying every tap of a stack would cost about 5% of a mining pass."""
    if not is_stack(model):
        return True
    mods = list(model.features.named_children())
    keys = [f"features.{k}" for k, _ in mods]
    return any(getattr(mods[keys.index(p) + 1][1], "inplace", False) for p in taps
               if p in keys and keys.index(p) + 1 < len(mods))


def _loader(dataset, indices: range, batch_size: int, num_workers: int) -> DataLoader:
    # Tagged: the indices of unreadable files come back with each batch, whichever process read them
    return DataLoader(Tagged(dataset), batch_size=batch_size, sampler=indices, num_workers=num_workers,
                      collate_fn=collate_tagged, persistent_workers=False)


def _positive_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ConfigError(f"{name}={v!r}: must be an integer >= {minimum}")
    return int(v)


@torch.no_grad()
def mine(model: nn.Module, dataset, layers: Sequence = (1, 2, 3, 4, 5), k: int = 9, tap: str = "relu",
         batch_size: int = 64, num_workers: int = 0, device: str | torch.device = "cpu",
         normalize: Normalize | None = None, state_path: str | os.PathLike | None = None, save_every: int = 20,
         save_every_s: float | None = 30.0, progress: bool = True, stop_after: int | None = None) -> dict[str, TopK]:
    """The top-``k`` images of every unit of ``layers``.

    Args:
        model: any network, in eval mode: a ``features`` stack (zfnet, AlexNet, VGG16...) read at its layer names and
            taps, or any other graph read at module paths (``zf.net.layers.resolve_layer``).
        dataset: items ``(uint8 image (3, H, W), label, index)`` (``zf.data.ImageDataset``); ``index`` is the image id
            stored in the table.  ``None`` items (unreadable files) are skipped; when ``mine`` returns,
            ``dataset.skipped`` lists every one of this pass (read by worker processes, before a resume, or by other
            ranks under torch.distributed alike).
        layers: layer names or the paper's integers; all are mined in the same pass.
        tap: where activations are read (``zf.net.layers``).
        normalize: uint8 -> model input; ImageNet statistics by default.
        state_path: where to keep the resumable state of this pass (one file per process under torchrun).
        save_every, save_every_s: the state is saved after ``save_every`` batches or ``save_every_s`` seconds since
            the last save, whichever comes first (``save_every_s=None``: by batches only).
        stop_after: stop after this many batches (tests of resumption; the state is saved first).

    Returns:
        {layer name: TopK} with boxes computed from the receptive field at the data's image size.

    Raises ``ConfigError`` / ``LayerError`` before the pass for a bad ``k``, ``tap``, layer or a network whose
    receptive fields cannot be computed.
    """
    # everything that can be wrong with the arguments fails here, before the pass
    k, batch_size, save_every, num_workers = _checked(k, batch_size, save_every, num_workers, save_every_s)
    taps = _feature_taps(model, layers, tap)
    guess = getattr(dataset, "size", None)
    guess = guess if isinstance(guess, int) else 224  # the image size the fields are computed for before the pass
    rfs = _receptive_fields(model, guess, layers)
    if len(dataset) == 0:
        raise DataError("the data set to mine holds no images")

    model.eval().to(device)
    normalize = (normalize or Normalize()).to(device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    lo, hi = _shard(len(dataset), batch_size, rank, world)
    state = _Pass.resume(_state_file(state_path, rank, world), dataset)
    seen = _Seen()
    bar = tqdm(total=hi - lo, initial=state.done, desc=f"mining {', '.join(taps.values())}", unit="img",
               disable=not progress or rank != 0, mininterval=5)
    batches = 0
    for batch, bad in _loader(dataset, range(lo + state.done, hi), batch_size, num_workers):
        state.add_skipped(record_skipped(dataset, bad))
        if batch is not None:
            x, _, idx = batch
            acts = run_features(model, normalize(x.to(device)), taps)
            seen.image_size = tuple(x.shape[-2:])
            _update(state.running, acts, idx.to(device), k, seen.map_sizes)  # idx: the dataset's own indices
        covered = min(batch_size, hi - lo - state.done)  # unreadable images count as done too
        bar.update(covered)
        state.done += covered
        batches += 1
        state.save_if_due(save_every, save_every_s)
        if stop_after is not None and batches >= stop_after:
            state.save()
            bar.close()
            return {}
    bar.close()
    state.done = hi - lo
    state.save()
    merged = _gather(state, seen, dataset, world)
    if seen.image_size is None:
        x0 = dataset[0]
        seen.image_size = tuple(x0[0].shape[-2:]) if x0 is not None else (224, 224)
    rfs = rfs if seen.image_size[0] == guess else _receptive_fields(model, seen.image_size[0], layers)
    return to_tables(model, merged, seen.map_sizes, seen.image_size, rfs=rfs)


def _checked(k, batch_size, save_every, num_workers, save_every_s) -> tuple[int, int, int, int]:
    """``mine``'s counts as ints, after checking them (``ConfigError``)."""
    out = (_positive_int("k", k), _positive_int("batch_size", batch_size), _positive_int("save_every", save_every),
           _positive_int("num_workers", num_workers, 0))
    if save_every_s is not None and not save_every_s >= 0:
        raise ConfigError(f"save_every_s={save_every_s!r}: must be seconds >= 0 (or None)")
    return out


def _shard(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """This process's shard [lo, hi) of ``n`` images: a contiguous run of whole batches, so every batch holds the
    same images as in a single-process pass and the activations are bitwise the same (convolutions may round
    differently for other batch sizes)."""
    nb = -(-n // batch_size)
    return min(n, nb * rank // world * batch_size), min(n, nb * (rank + 1) // world * batch_size)


def _state_file(state_path, rank: int, world: int) -> Path | None:
    """Where this process keeps its resumable state (one file per process under torchrun)."""
    if not state_path:
        return None
    return Path(f"{state_path}.rank{rank}") if world > 1 else Path(state_path)


class _Pass:
    """The resumable state of one process's pass: the running tables, the images of the shard done, the unreadable
    files of this shard (this run and the runs it resumes), and when it was last saved to ``file``."""

    def __init__(self, file: Path | None):
        self.file = file
        self.running: dict[str, Running] = {}
        self.done = 0
        self.skipped: list[str] = []
        self.since_save, self.last_save = 0, time.monotonic()

    @classmethod
    def resume(cls, file: Path | None, dataset) -> "_Pass":
        """A new pass, or the one saved in ``file`` (its unreadable files are added to ``dataset.skipped``)."""
        state = cls(file)
        if file is not None and file.is_file():
            s = torch.load(file, map_location="cpu", weights_only=True)
            state.running = {name: Running.from_state(v) for name, v in s["layers"].items()}
            state.done = int(s["done"])
            state.skipped = list(s.get("skipped", []))
            add_skipped(dataset, state.skipped)
        return state

    def add_skipped(self, names) -> None:
        for name in names:
            if name not in self.skipped:
                self.skipped.append(name)

    def save(self) -> None:
        if self.file is None:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        # the state's own name + .tmp: with_suffix would turn state.rank0 and state.rank1 into the same state.tmp,
        # which two processes then write and rename over each other
        tmp = self.file.with_name(self.file.name + ".tmp")
        torch.save({"done": self.done, "layers": {nm: r.state() for nm, r in self.running.items()},
                    "skipped": self.skipped}, tmp)
        os.replace(tmp, self.file)

    def save_if_due(self, every: int, every_s: float | None) -> None:
        """Count a batch; save after ``every`` batches or ``every_s`` seconds since the last save."""
        self.since_save += 1
        if self.file is not None and (self.since_save >= every or (
                every_s is not None and time.monotonic() - self.last_save >= every_s)):
            self.save()
            self.since_save, self.last_save = 0, time.monotonic()


class _Seen:
    """What the pass has seen of the data: each layer's map size and the images' size."""

    def __init__(self):
        self.map_sizes: dict[str, tuple[int, int]] = {}
        self.image_size: tuple[int, int] | None = None


def _update(running: dict[str, Running], acts: dict[str, torch.Tensor], ids: torch.Tensor, k: int,
            map_sizes: dict) -> None:
    """Merge one batch's activations {layer: (N, C, h, w)} of images ``ids`` into the running tables."""
    for name, a in acts.items():
        nimg, c, h, w = a.shape
        map_sizes[name] = (h, w)
        val, pos = a.reshape(nimg, c, h * w).max(dim=2)            # (N, C): strongest position per image
        if name not in running:
            running[name] = Running(c, k)
        running[name].update(val.t().cpu(), ids.expand(c, nimg).cpu(), pos.t().cpu())


def _gather(state: _Pass, seen: _Seen, dataset, world: int) -> dict:
    """The merged running states of every process (and their map sizes, image size and unreadable files)."""
    if world == 1:
        return {nm: r.state() for nm, r in state.running.items()}
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {nm: r.state() for nm, r in state.running.items()})
    names = sorted({nm for g in gathered for nm in g})
    merged = {nm: merge(g[nm] for g in gathered if nm in g) for nm in names}
    sizes: list = [None] * world
    dist.all_gather_object(sizes, (seen.map_sizes, seen.image_size, state.skipped))
    for ms, isz, sk in sizes:  # rank order = data order (contiguous shards)
        seen.map_sizes.update(ms)
        seen.image_size = seen.image_size or isz
        add_skipped(dataset, sk)
    return merged


def _receptive_fields(model: nn.Module, input_size: int, layers=None):
    """The fields of the mined ``layers`` only (any graph: their module paths; a stack: all, by the recurrence)."""
    try:
        paths = None if layers is None or is_stack(model) else list(
            dict.fromkeys(resolve_layer(model, lay).path for lay in layers))
        return receptive_fields(model, input_size=input_size, paths=paths)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot mine {type(model).__name__}: {e}; patches are cropped by the receptive field, "
                          "which this model's layers do not define") from None


def to_tables(model: nn.Module, states: dict, map_sizes: dict, image_size: tuple[int, int],
              rfs: dict | None = None) -> dict[str, TopK]:
    """Running states -> ``TopK`` tables with receptive-field boxes (for square receptive fields); ``rfs``:
    ``receptive_fields(model, image_size[0])`` if already computed."""
    rfs = rfs if rfs is not None else receptive_fields(model, input_size=image_size[0])
    tables = {}
    for name, s in states.items():
        value, image, pos = (s[f].numpy() for f in ("value", "image", "pos"))
        h, w = map_sizes.get(name, (rfs[name].out_size, rfs[name].out_size))
        y, x = pos // w, pos % w
        b = unit_box(rfs[name], y, x, image_size)
        box = np.stack([b.y0, b.y1, b.x0, b.x1], -1).astype(np.int64)
        empty = image < 0
        value = np.where(empty, np.nan, value).astype(np.float32)
        tables[name] = TopK(units=np.arange(value.shape[0]), activation=value, image=image.astype(np.int64),
                            y=y.astype(np.int64), x=x.astype(np.int64), box=box)
    return tables


def mine_brute_force(model: nn.Module, images: torch.Tensor, layer, k: int = 9, tap: str = "relu",
                     normalize: Normalize | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference for tests: every activation at once, sorted.  images: uint8 (N, 3, H, W).
    Returns (value, image, pos), each (C, k)."""
    normalize = normalize or Normalize()
    L = resolve_layer(model, layer, tap)
    with torch.no_grad():
        a = run_features(model.eval(), normalize(images), _feature_taps(model, [layer], tap))[L.name]
    n, c, h, w = a.shape
    flat = a.reshape(n, c, h * w).numpy()
    vals, poss, imgs = [], [], []
    for ch in range(c):
        best = flat[:, ch].max(1)
        pos = flat[:, ch].argmax(1)
        order = sorted(range(n), key=lambda i: (-best[i], i))[:k]
        vals.append(best[order])
        imgs.append(np.array(order))
        poss.append(pos[order])
    return np.stack(vals), np.stack(imgs), np.stack(poss)

