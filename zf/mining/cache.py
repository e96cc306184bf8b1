"""The mining cache: ``zf.mining.mine`` keyed by everything its result depends on, so a later run on another layer,
or an experiment that needs the same tables, reads them instead of passing over the data again.

    tables, folder = mine_cached(model, dataset, layers=[1, 2, 3, 4, 5], k=9, cache_dir="outputs/cache",
                                 transform=spec, normalize=Normalize(mean, std))

The key (``fingerprint``) covers the model's weights, the data's file list (path, size, modification time), the
subset of files, the transform, the layers, ``k``, the tap and the batch size (activations computed in batches of
another size can differ in the last bits, which can reorder near-ties).  A finished pass over more layers with the
same key otherwise serves a run on a subset of its layers.  A folder holds ``partial.pt`` while a pass
runs (an interrupted pass resumes from it) and ``done.json`` once it is complete; the unreadable files a pass skipped
are kept in ``done.json`` and restored to ``dataset.skipped`` when the cache serves a later run.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from zf.data import add_skipped, read_image
from zf.errors import OutputError
from zf.mining.mine import mine
from zf.mining.table import TOPK_FIELDS, TopK
from zf.net.layers import resolve_layer


def fingerprint(model: nn.Module, files, extra: dict) -> str:
    """A 16-hex key for ``model``'s weights, the files of ``files`` (a ``zf.data.ImageList``: names, sizes, times)
    and ``extra`` (any JSON-able dict)."""
    return _keyed(_hasher(model, files), extra)


def _keyed(h, extra: dict) -> str:
    h = h.copy()
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _hasher(model: nn.Module, files):
    """sha256 of the model's weights and the files (``fingerprint`` without its ``extra``)."""
    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for p in files.paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h


def mine_cached(model: nn.Module, dataset, layers: Sequence, k: int, cache_dir: str | Path, transform: dict,
                normalize=None, tap: str = "relu", batch_size: int = 64, num_workers: int = 0,
                device: str | torch.device = "cpu", progress: bool = True) -> tuple[dict[str, TopK], Path]:
    """``zf.mining.mine`` through the cache under ``cache_dir``: ({layer name: TopK}, the cache folder).

    ``transform`` describes how images become model inputs (``zf.data.transform_spec``); it is part of the key.
    After the call ``dataset.skipped`` lists the unreadable files of the pass, whether it ran now or earlier."""
    names = sorted({resolve_layer(model, layer, tap).name for layer in layers})
    check_cache_dir(cache_dir)
    h = _hasher(model, dataset.files)
    extra = {"transform": transform, "k": int(k), "tap": tap, "subset": dataset.indices.tolist(),
             "batch_size": int(batch_size)}
    key, base = _keyed(h, {**extra, "layers": names}), _keyed(h, extra)
    folder = Path(cache_dir) / f"mine-{key}"
    done = folder / "done.json"
    if not done.is_file():  # a pass that mined these layers among others serves them too
        done = next((d for d in sorted(Path(cache_dir).glob("mine-*/done.json")) if _serves(d, base, names)), done)
        folder = done.parent
    if done.is_file():
        info = json.loads(done.read_text())
        if not _readable_now(info.get("skipped", [])):  # a skipped file that reads now: the tables are stale
            add_skipped(dataset, info.get("skipped", []))
            return {n: TopK.load(folder / f"{n}.npz") for n in names}, folder
        done.unlink()
        (folder / "partial.pt").unlink(missing_ok=True)
        folder = Path(cache_dir) / f"mine-{key}"  # a stale pass over more layers: mine these under their own key
        done = folder / "done.json"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        tables = mine(model, dataset, layers=names, k=k, tap=tap, batch_size=batch_size, num_workers=num_workers,
                      device=device, normalize=normalize, state_path=folder / "partial.pt", progress=progress)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        if getattr(e, "errno", None) not in (errno.ENOSPC, errno.EDQUOT) and "No space left" not in str(e):
            raise
        for f in folder.glob("*.tmp"):
            f.unlink(missing_ok=True)
        raise OutputError(f"no space left in the mining cache {folder} while saving the pass's progress "
                          f"({shutil.disk_usage(folder).free / 1e6:.0f} MB free): free some space or pass "
                          "paths.cache_dir=<another folder>") from None
    if not dist.is_initialized() or dist.get_rank() == 0:
        need = sum(getattr(t, f).nbytes for t in tables.values() for f in TOPK_FIELDS)
        try:
            for n, t in tables.items():  # a temporary name, renamed once whole: no truncated table is ever served
                tmp = folder / f"{n}.tmp.npz"
                t.save(tmp)
                os.replace(tmp, folder / f"{n}.npz")
            tmp = folder / "done.json.tmp"
            tmp.write_text(json.dumps({"layers": names, "base": base, "k": int(k), "tap": tap, "transform": transform,
                                       "n_images": len(dataset), "skipped": sorted(set(map(str, dataset.skipped)))}))
            os.replace(tmp, done)
        except OSError as e:
            for f in folder.glob("*.tmp*"):
                f.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                free = shutil.disk_usage(folder).free
                raise OutputError(f"no space left in the mining cache {folder} (needs about {need / 1e6:.0f} MB, "
                                  f"{free / 1e6:.0f} MB free): free some space or pass paths.cache_dir=<another "
                                  "folder>; a rerun resumes from the saved pass") from None
            raise
    return tables, folder


def check_cache_dir(cache_dir: str | os.PathLike) -> Path:
    """The mining cache folder, created if missing; ``OutputError`` naming it when it is a file or cannot be
    written (checked before any pass)."""
    path = Path(cache_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".zf-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        why = "is not a folder" if path.exists() and not path.is_dir() else f"cannot be written ({e.strerror})"
        raise OutputError(f"paths.cache_dir={path} {why}: pass a writable folder, paths.cache_dir=...") from None
    return path


def _readable_now(skipped) -> bool:
    """Whether any of the files a cached pass skipped reads now (restored after the pass)."""
    for p in skipped:
        if os.path.isfile(p):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if read_image(p) is not None:
                    return True
    return False


def _serves(done: Path, base: str, names: list[str]) -> bool:
    """Whether the finished pass of ``done`` (its ``done.json``) has the same key as this one but for its layers,
    and mined every layer of ``names``."""
    try:
        info = json.loads(done.read_text())
    except (OSError, ValueError):
        return False
    return (info.get("base") == base and set(names) <= set(info.get("layers", []))
            and all((done.parent / f"{n}.npz").is_file() for n in names))
