"""The explorer's uploaded images: checked before decoding (``decode_image``: an image PIL reads, at most so many
pixels), turned into the model input exactly as the main job decodes its data (``prepare``), held by a random id
(``ImageStore``), and sent back as ``data:`` URIs; ``RequestError`` is a bad request's one line and HTTP status."""
from __future__ import annotations

import base64
import collections
import io
import re
import threading
import uuid

import numpy as np
import torch
from PIL import Image

from zf.data import resize_crop
from zf.errors import ZFError


class RequestError(ZFError):
    """A bad request to the explorer: one line for the page, and its HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


_HEX_ID = re.compile(r"[0-9a-f]{32}")


def png_uri(arr: np.ndarray) -> str:
    """A uint8 (h, w) or (h, w, 3) array as a ``data:image/png`` URI (lossless: the test decodes it)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def jpeg_uri(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=92)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Check that ``data`` is an image PIL reads and that it has at most ``max_pixels`` pixels (checked from the
    header, before decoding); returns it opened (not yet decoded).  ``RequestError`` 400 / 413 / 415 otherwise."""
    if not data:
        raise RequestError("the request holds no image: choose an image file (JPEG, PNG, ...)", 400)
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
    except Image.DecompressionBombError as e:
        raise RequestError(f"the image is too large to open safely ({e}); use a smaller image", 413) from None
    except Exception:
        raise RequestError("that file is not an image zf can read: choose a JPEG, PNG, GIF, BMP, TIFF or WebP "
                           "file", 415) from None
    if w * h > max_pixels:
        raise RequestError(f"the image is {w} x {h} pixels ({w * h / 1e6:.1f} megapixels); the limit is "
                           f"{max_pixels / 1e6:g} megapixels (--max-megapixels): use a smaller image", 413)
    return img


def prepare(data: bytes, size: int, resize: int | None, max_pixels: int) -> torch.Tensor:
    """The model input of an image file's bytes, uint8 (3, size, size), decoded exactly as the main job decodes its
    data (``zf.data.read_image``: RGB, JPEG draft at the resize size; ``zf.data.resize_crop``)."""


    img = decode_image(data, max_pixels)
    try:
        with img:
            if img.format == "JPEG":
                img.draft("RGB", (resize or size, resize or size))
            rgb = img.convert("RGB")
    except Exception:
        raise RequestError("that file is not an image zf can read (it is truncated or damaged): choose another "
                           "one", 415) from None
    return resize_crop(rgb, size, resize)


class ImageStore:
    """Uploaded images by id (random 128-bit hex), the oldest dropped beyond ``capacity``; each entry keeps its
    bytes and what was computed from them (model inputs and activations per run and layer)."""

    def __init__(self, capacity: int = 32, max_pixels: int = 40_000_000):
        self.capacity, self.max_pixels = capacity, max_pixels
        self._items: "collections.OrderedDict[str, dict]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, data: bytes) -> str:
        img = decode_image(data, self.max_pixels)  # refuse a non-image now, not at the first grid
        try:
            with img:
                img.load()
        except Exception:
            raise RequestError("that file is not an image zf can read (it is truncated or damaged): choose another "
                               "one", 415) from None
        key = uuid.uuid4().hex
        with self._lock:
            self._items[key] = {"data": bytes(data), "inputs": {}, "acts": collections.OrderedDict()}
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> dict:
        if not isinstance(key, str) or not _HEX_ID.fullmatch(key):
            raise RequestError(f"image={key!r} is not an image id: upload an image first", 400)
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                raise RequestError(f"image {key} is not held here (the server restarted or dropped it after "
                                   f"{self.capacity} newer uploads): upload it again", 404)
            self._items.move_to_end(key)
            return entry

    def __len__(self) -> int:
        return len(self._items)


__all__ = ["RequestError", "png_uri", "jpeg_uri", "decode_image", "prepare", "ImageStore"]
