"""Data and weights on first use: the official Imagenette release fetched once into a user cache, and pretrained
weights through torchvision's and timm's own downloads into the torch hub cache.

Nothing here is implied: the Imagenette download happens only where no data was named (no ``data.root``, no
``ZF_DATA``, no copy in ``../shared``) or with ``data.download=true``; weights are downloaded only for
``model.weights=download``.  Every failure (no network, a checksum mismatch, an unsafe archive) is one line (a
``DataError`` or ``CheckpointError``) naming the URL, the folder the file belongs in and its size, and leaves
nothing half-written where a later run would read it.

The Imagenette archive is torchvision's: ``torchvision.datasets.Imagenette._ARCHIVES["320px"]`` (the fast.ai
``imagenette2-320.tgz``, 341 MB, shorter side 320 px, ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``), downloaded
with ``torchvision.datasets.utils.download_url`` (progress bar, MD5 check) and unpacked with its ``extract_archive``.
The paper (section 3) trains and visualises on ImageNet; this is the ten-class subset the shipped model was trained
on.  The zf data pipeline resizes the shorter side to ``data.size`` and centre-crops it (``zf.data.resize_crop``).
"""
from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import tarfile
import urllib.error
from pathlib import Path, PurePosixPath

import torch
import torchvision.models
from torchvision.datasets import Imagenette
from torchvision.datasets.utils import check_integrity, download_url, extract_archive

from zf.errors import CheckpointError, DataError

#: Size of the official imagenette2-320.tgz (341 MB), quoted in messages.
IMAGENETTE_320_MB = 341
#: Seconds a stalled connection may stay silent before the download gives up (a down server is refused at once).
TIMEOUT_S = 30.0


def imagenette_archive() -> tuple[str, str]:
    """(URL, MD5) of the official Imagenette 320 px release, as torchvision knows them."""
    return Imagenette._ARCHIVES["320px"]


def zf_home() -> Path:
    """zf's user cache: ``ZF_HOME``, else ``~/.cache/zf``."""
    return Path(os.environ.get("ZF_HOME") or "~/.cache/zf").expanduser()


def default_imagenette_dir() -> Path:
    """Where the downloaded release lives in the user cache (holds ``train/`` and ``val/``)."""
    return zf_home() / "imagenette2-320"


@contextlib.contextmanager
def _timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


#: What a failed download raises: no network, a refused or dropped connection, an HTTP error, a timeout.
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)


def _reason(e: BaseException) -> str:
    r = getattr(e, "reason", None) or e
    return (str(r).splitlines() or [type(e).__name__])[0] or type(e).__name__


def check_members(archive: Path) -> None:
    """Refuse a tarball with a member that would land outside the folder it is unpacked into: an absolute path, a
    ``..`` component, a link pointing out of it, or a device file.  Raises ``DataError`` naming the member."""
    try:
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                parts = PurePosixPath(m.name).parts
                bad = m.name.startswith("/") or ".." in parts
                if m.issym() or m.islnk():
                    target = PurePosixPath(m.linkname)
                    bad = bad or m.linkname.startswith("/") or ".." in target.parts
                bad = bad or m.isdev()
                if bad:
                    raise DataError(f"{archive} holds an unsafe member {m.name!r} (outside the folder it is "
                                    "unpacked into); refused, nothing extracted. Check data.url")
    except tarfile.TarError as e:
        raise DataError(f"{archive} is not a readable tar archive ({e}); delete it and rerun") from None


def fetch_imagenette(dest: str | os.PathLike, url: str | None = None, md5: str | None = None,
                     progress: bool = True) -> Path:
    """The Imagenette release unpacked at ``dest`` (``dest/train``, ``dest/val``), downloaded first if ``dest`` does
    not exist.  ``url``/``md5`` default to torchvision's for the 320 px release (a mirror or a test overrides them).

    The archive is downloaded and unpacked in a staging folder beside ``dest`` (``.<name>.download``), and the
    unpacked tree is renamed to ``dest`` only once complete, so ``dest`` is never seen half-written: an interrupted
    extraction leaves only the staging folder, and the rerun starts over (reusing the archive when its MD5 is right).
    A failed download, a wrong MD5 or an unsafe archive deletes the staging folder.  The archive is deleted once
    unpacked.  An existing ``dest`` is returned without any request."""
    dest = Path(dest).expanduser()
    if dest.is_dir():
        return dest
    default_url, default_md5 = imagenette_archive()
    url, md5 = url or default_url, md5 or default_md5
    size = (f"{IMAGENETTE_320_MB} MB" if url == default_url else
            f"a mirror of imagenette2-320.tgz, {IMAGENETTE_320_MB} MB")
    stage = dest.parent / f".{dest.name}.download"
    name = Path(url.split("?")[0]).name or "imagenette.tgz"
    archive = stage / name
    help_ = (f"download {url} ({size}) yourself and unpack it so that {dest} holds train/ and val/, or point "
             "data.root (or ZF_DATA) at a copy")
    try:
        stage.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {stage} for the Imagenette download: {e.strerror}; set ZF_HOME to a "
                        "writable folder or data.root=...") from None
    if not check_integrity(str(archive), md5):
        print(f"downloading Imagenette ({size}) from {url} into {dest} (once)", flush=True)
        try:
            with _timeout(TIMEOUT_S):
                download_url(url, str(stage), name, md5=None)
        except NETWORK_ERRORS as e:
            shutil.rmtree(stage, ignore_errors=True)
            raise DataError(f"cannot download {url} ({_reason(e)}): {help_}") from None
        if not check_integrity(str(archive), md5):
            shutil.rmtree(stage, ignore_errors=True)
            raise DataError(f"{url} does not match its MD5 {md5} (a broken download or a wrong data.md5); deleted, "
                            f"nothing kept. Rerun, or {help_}")
    try:
        check_members(archive)
    except DataError:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    unpacked = stage / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)  # an interrupted extraction is redone, never reused
    extract_archive(str(archive), str(unpacked))
    tops = [p for p in unpacked.iterdir() if p.is_dir()]
    tree = tops[0] if len(tops) == 1 and not (unpacked / "train").is_dir() else unpacked
    if not ((tree / "train").is_dir() and (tree / "val").is_dir()):
        shutil.rmtree(stage, ignore_errors=True)
        raise DataError(f"{url} unpacks to no train/ and val/ folders (found {sorted(p.name for p in tops)}); "
                        f"check data.url, or {help_}")
    os.replace(tree, dest)  # one rename: dest appears complete or not at all
    shutil.rmtree(stage, ignore_errors=True)
    return dest


def resolve_data_root(root, download: bool = False, url: str | None = None, md5: str | None = None,
                      shared: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The data folder a run uses (``data=imagenette``):

    - ``root`` given (``data.root``, else ``ZF_DATA``): that folder; if it does not exist, Imagenette is downloaded
      into it only with ``download=True`` (``data.download=true``), otherwise it is an error: a typo must not start
      a 341 MB download.
    - else the copy at ``shared`` (``paths.data_dir``: ``../shared/data/imagenette-224``) if it exists;
    - else the release in zf's user cache (``default_imagenette_dir()``), downloaded there on first use.
    """
    if root is None and os.environ.get("ZF_DATA"):
        root = os.environ["ZF_DATA"]
    if root is not None and str(root).strip():
        root = Path(str(root)).expanduser()
        if root.is_dir():
            return root
        if download:
            return fetch_imagenette(root, url, md5, progress)
        raise DataError(f"data folder {root} does not exist: fix data.root (or ZF_DATA), or add data.download=true "
                        f"to download Imagenette ({IMAGENETTE_320_MB} MB) into it")
    if shared is not None and Path(shared).expanduser().is_dir():
        return Path(shared).expanduser()
    return fetch_imagenette(default_imagenette_dir(), url, md5, progress)


# --- weights -------------------------------------------------------------------------------------------------------


def torchvision_download(arch_name: str, progress: bool = True) -> Path:
    """The file of ``arch_name``'s DEFAULT torchvision weights in the torch hub cache (``TORCH_HOME``), downloaded
    there by ``torch.hub.load_state_dict_from_url`` with its SHA-256 check (the hash in the file name) if missing.
    torch.hub writes to a temporary file and moves it into place only when complete and checked, so a failure leaves
    no file in the cache."""
    w = torchvision.models.get_model_weights(arch_name).DEFAULT
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / Path(w.url).name
    if not path.is_file():
        try:
            with _timeout(TIMEOUT_S):
                w.get_state_dict(progress=progress, check_hash=True, weights_only=True)
        except NETWORK_ERRORS as e:
            raise CheckpointError(f"cannot download the {arch_name} weights {w.url} ({_reason(e)}): put the file at "
                                  f"{path}, or pass model.weights=/path/to/{path.name}") from None
        except RuntimeError as e:  # torch.hub's hash check
            raise CheckpointError(f"{w.url}: {_reason(e)}; the download was refused and not kept. Rerun, or put "
                                  f"the right file at {path}") from None
    return path


def timm_download(arch_name: str, num_classes: int, progress: bool = True, **kwargs):
    """``timm.create_model(arch_name, pretrained=True, ...)``: timm fetches the file its pretrained configuration
    names (the Hugging Face hub, or the URL into the torch hub cache; ``pretrained_cfg_overlay=dict(url=...)``
    points it elsewhere) and loads it.  Failures are one ``CheckpointError`` line."""
    import timm

    try:
        with _timeout(TIMEOUT_S):
            return timm.create_model(arch_name, pretrained=True, num_classes=num_classes, **kwargs)
    except NETWORK_ERRORS as e:
        raise CheckpointError(f"cannot download the timm weights of {arch_name} ({_reason(e)}); pass "
                              "model.weights=/path/to/model.safetensors, or rerun with network access") from None
    except RuntimeError as e:
        if "hash" not in str(e) and "download" not in str(e).lower():
            raise
        raise CheckpointError(f"timm weights of {arch_name}: {_reason(e)}; not kept. Rerun, or pass "
                              "model.weights=/path/to/model.safetensors") from None
