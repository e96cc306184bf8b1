"""Image folders as datasets: ImageFolder trees (``root/<class>/*.jpg``, Imagenette or ImageNet) and flat folders of
unlabelled images of any size and format PIL reads.

Images are returned as uint8 tensors (3, S, S): the shorter side resized to ``resize``, then the centre ``size``
crop (``transform_spec`` records this).  Normalisation happens on the batch (``Normalize``), so the uint8 images can
also be cropped for display without undoing it.  An unreadable file is skipped with a warning naming it, never a crash
mid-epoch; ``skipped`` lists them.  ``ImageSource`` holds a data set with its normalisation, transform spec and
device, as a job reads it.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from zf.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Where the shipped data lives, relative to the project root; ``ZF_DATA`` overrides it.
DEFAULT_DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "imagenette-224"


def default_data_root() -> Path:
    return Path(os.environ.get("ZF_DATA", DEFAULT_DATA_ROOT))


@dataclass
class ImageList:
    """Files of a folder: ``paths`` (sorted), ``labels`` (class index, or -1 for a flat folder), ``classes``."""

    root: Path
    paths: list[Path]
    labels: list[int]
    classes: list[str] = field(default_factory=list)


def list_images(root: str | os.PathLike) -> ImageList:
    """Every image under ``root``: an ImageFolder tree if ``root`` has sub-folders with images, else a flat folder.

    Each file is listed once, by its resolved path (a symlink loop such as ``self -> .`` or a link to a class folder
    adds nothing).  A folder with images both at its top and in sub-folders is refused (``DataError`` naming both),
    since either reading would silently drop one of them.  Raises ``DataError`` for a missing folder and for one
    without images."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist (set data.root=... or ZF_DATA=...)")
    real_root = root.resolve()
    seen: set[Path] = set()

    def images_in(d: Path, recursive: bool) -> list[Path]:
        it = d.rglob("*") if recursive else d.iterdir()
        found = []
        for p in sorted(q for q in it if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file()):
            r = p.resolve()
            if r not in seen:  # each file once, whatever links lead to it
                seen.add(r)
                found.append(p)
        return found

    def is_loop(d: Path) -> bool:  # a sub-folder that is the root itself or one of its parents (self -> .)
        r = d.resolve()
        return r == real_root or r in real_root.parents

    top = images_in(root, recursive=False)
    seen.clear()
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and not is_loop(d))
    paths, labels = [], []
    for i, c in enumerate(classes):
        found = images_in(root / c, recursive=True)
        paths += found
        labels += [i] * len(found)
    if paths and top:
        with_images = sorted({classes[l] for l in labels})
        raise DataError(f"data folder {root} has {len(top)} images at its top (e.g. {top[0].name}) and "
                        f"{len(paths)} in sub-folders ({', '.join(with_images[:5])}"
                        f"{', ...' if len(with_images) > 5 else ''}): move the top-level images into a sub-folder, "
                        "or set data.root to one folder that holds only one kind")
    if not paths:
        classes = []
        paths = top
        labels = [-1] * len(paths)
    if not paths:
        raise DataError(f"data folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}), neither directly "
                         "nor in class sub-folders")
    return ImageList(root, paths, labels, classes)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB with its real range: 16-bit and 32-bit integer greyscale (``I;16``, ``I``) scaled from
    0..65535 (or 0..max where values go higher), float greyscale (``F``) from 0..1 (or min..max where values leave
    it), everything else (palette, CMYK, alpha, greyscale) through PIL's ``convert`` (``convert("RGB")`` alone clips
    16-bit images to white and float images to black)."""
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            finite = a[np.isfinite(a)]
            lo, hi = (0.0, 1.0) if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1) else (
                float(finite.min()), float(finite.max()))
        else:
            lo, hi = 0.0, max(65535.0, float(a.max()))
            if a.min() < 0:
                lo = float(a.min())
        a = np.nan_to_num((a - lo) / max(hi - lo, 1e-12), nan=0.0)
        return Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def read_image(path: str | os.PathLike, size: int | None = None) -> Image.Image | None:
    """The image at ``path`` as 8-bit RGB (``to_rgb``: 16-bit and float images keep their range; greyscale, palette,
    CMYK and alpha images converted; the first frame of an animation), or ``None`` with a warning if PIL cannot read
    it.  ``size`` lets JPEG decoding skip resolution that a later resize would drop."""
    try:
        with Image.open(path) as img:
            if size and img.format == "JPEG":
                img.draft("RGB", (size, size))
            return to_rgb(img)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        warnings.warn(f"skipping unreadable image {path}: {e}. Remove or replace the file.", stacklevel=2)
        return None


def resize_crop(img: Image.Image, size: int, resize: int | None = None) -> torch.Tensor:
    """Shorter side to ``resize`` (default ``size``), centre ``size`` crop -> uint8 (3, size, size)."""
    img = TF.resize(img, resize or size, antialias=True)
    return TF.pil_to_tensor(TF.center_crop(img, [size, size]))


def transform_spec(size: int, resize: int | None, mean: Sequence[float], std: Sequence[float]) -> dict:
    """A plain description of the evaluation transform, recorded in summaries and cache keys."""
    return {"resize_shorter_side": int(resize or size), "center_crop": int(size), "mean": [float(m) for m in mean],
            "std": [float(s) for s in std]}


class ImageDataset(Dataset):
    """``(image uint8 (3, S, S), label, index)`` for every file of ``list_images(root)``.

    ``transform`` (optional) maps the uint8 tensor to another tensor (training augmentation).  Unreadable images
    give ``None`` (dropped by ``collate_skip``) and land in ``skipped``.  A worker process's ``skipped`` is its own
    copy: loaders that use workers iterate ``Tagged(dataset)`` and call ``record_skipped`` in the main process
    (``zf.mining.mine`` and ``zf.training.train.fit`` do).
    """

    def __init__(self, root: str | os.PathLike | ImageList, size: int = 224, resize: int | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, limit: int | None = None,
                 subset_seed: int = 0):
        self.files = root if isinstance(root, ImageList) else list_images(root)
        self.size, self.resize, self.transform = size, resize, transform
        self.indices = np.arange(len(self.files.paths))
        if limit is not None and limit < len(self.indices):
            # a fixed, class-balanced-in-expectation subset: a seeded permutation, then sorted for locality
            rng = np.random.default_rng(subset_seed)
            self.indices = np.sort(rng.permutation(len(self.indices))[:limit])
        self.skipped: list[str] = []

    @property
    def classes(self) -> list[str]:
        return self.files.classes

    def path(self, i: int) -> Path:
        return self.files.paths[self.indices[i]]

    def label(self, i: int) -> int:
        return self.files.labels[self.indices[i]]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img = read_image(self.path(i), self.resize or self.size)
        if img is None:
            if str(self.path(i)) not in self.skipped:  # once, not once per epoch
                self.skipped.append(str(self.path(i)))
            return None
        x = resize_crop(img, self.size, self.resize)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.label(i), i


def collate_skip(batch):
    """Default collate without the ``None`` of unreadable images; an all-unreadable batch gives ``None``."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    xs, ys, idx = zip(*batch)
    return torch.stack(xs), torch.tensor(ys), torch.tensor(idx)


class Tagged(Dataset):
    """``(i, dataset[i])``: each item carries its index, so the process that iterates a ``DataLoader`` learns which
    items were unreadable (``None``) even when a worker process read them (a worker's ``dataset.skipped`` is its own
    copy and never reaches the main process).  Use with ``collate_tagged``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return i, self.dataset[i]


def collate_tagged(batch):
    """Items of ``Tagged`` -> ``(collate_skip(items), [indices of the unreadable items])``."""
    return collate_skip([item for _, item in batch]), [int(i) for i, item in batch if item is None]


def record_skipped(dataset, indices: Sequence[int]) -> list[str]:
    """Add the files of the unreadable items ``indices`` of ``dataset`` to ``dataset.skipped`` (once each, in the
    order met) and return their names: the file path where the dataset has ``path(i)``, else ``"<type>[i]"``."""
    names = [str(dataset.path(i)) if hasattr(dataset, "path") else f"{type(dataset).__name__}[{i}]"
             for i in indices]
    add_skipped(dataset, names)
    return names


def add_skipped(dataset, names: Sequence[str]) -> None:
    """Append ``names`` to ``dataset.skipped`` (created if missing), without duplicates."""
    if not names:
        return
    skipped = getattr(dataset, "skipped", None)
    if skipped is None:
        skipped = []
        try:
            dataset.skipped = skipped
        except AttributeError:
            return
    seen = set(skipped)
    for n in names:
        if n not in seen:
            skipped.append(n)
            seen.add(n)


class Normalize(torch.nn.Module):
    """uint8 (N, 3, H, W) in [0, 255] -> float, minus ``mean``, divided by ``std`` (per channel, in [0, 1] units)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """float normalised -> float in [0, 255] (not clamped)."""
        return x * self.std + self.mean


def preload(dataset: ImageDataset, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image of ``dataset`` once: uint8 (N, 3, S, S) and labels (N,) in memory.  Unreadable images are
    left out (and listed in ``dataset.skipped``).  For small data sets (Imagenette: 1.4 GB for the train split)."""
    keep_transform, dataset.transform = dataset.transform, None
    xs, ys = [], []
    try:
        for i in tqdm(range(len(dataset)), desc=f"decoding {dataset.files.root.name}", disable=not progress,
                      mininterval=5):
            item = dataset[i]
            if item is not None:
                xs.append(item[0])
                ys.append(item[1])
    finally:
        dataset.transform = keep_transform
    return torch.stack(xs), torch.tensor(ys)


class TensorImages(Dataset):
    """In-memory uint8 images with an optional per-sample ``transform``: ``(x, label, index)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i]), i


class BatchAugment(torch.nn.Module):
    """Training augmentation of a whole batch at once: uint8 (N, 3, H, W) -> float (N, 3, size, size) in [0, 255].

    ``kind="random_crop"`` is the paper's: a random ``size`` crop of the stored (256) image; ``"random_resized_crop"``
    samples a box of area ``scale`` (fraction of the image) and aspect ratio 3/4..4/3 (as torchvision's
    RandomResizedCrop) and resamples it to ``size`` with area averaging (``roi_align``, adaptive sampling);
    ``"none"`` only resizes.  ``flip`` mirrors half the images.  One C++ call per batch instead of one resize per
    image: about 15x cheaper on the CPU than per-sample transforms, and it runs on the GPU with the batch.
    ``size`` may be changed between epochs (progressive resizing).
    """

    def __init__(self, size: int, kind: str = "random_resized_crop", scale: Sequence[float] = (0.35, 1.0),
                 flip: bool = True, ratio: Sequence[float] = (3 / 4, 4 / 3)):
        super().__init__()
        if kind not in ("random_crop", "random_resized_crop", "none"):
            raise ConfigError(f"augmentation {kind!r}: use random_crop, random_resized_crop or none")
        self.size, self.kind, self.scale, self.flip, self.ratio = int(size), kind, tuple(scale), flip, tuple(ratio)

    def boxes(self, n: int, h: int, w: int, device=None, rand: Callable | None = None) -> torch.Tensor:
        """(n, 4) float boxes x0, y0, x1, y1 in pixel units.  ``rand(n, *shape)`` gives uniform [0, 1) numbers, one
        row per image (default: ``torch.rand`` from the global generator); every random choice is made from them."""
        rand = rand or (lambda m, *shape: torch.rand(m, *shape, device=device))
        s = self.size
        if self.kind == "none":
            return torch.tensor([[0.0, 0.0, w, h]], device=device).expand(n, 4).clone()
        if self.kind == "random_crop":
            if s > h or s > w:
                raise ConfigError(f"random_crop of {s} from {h}x{w} images: store them at least {s} (data.resize)")
            u = rand(n, 2).to(device)
            y0 = torch.floor(u[:, 0] * (h - s + 1)).clamp(max=h - s)
            x0 = torch.floor(u[:, 1] * (w - s + 1)).clamp(max=w - s)
            return torch.stack([x0, y0, x0 + s, y0 + s], 1)
        tries = 10
        u = rand(n, 2 * tries + 2).to(device)
        area = (self.scale[0] + u[:, :tries] * (self.scale[1] - self.scale[0])) * h * w
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        logr = lo + u[:, tries:2 * tries] * (hi - lo)
        bw = torch.sqrt(area * torch.exp(logr)).round()
        bh = torch.sqrt(area / torch.exp(logr)).round()
        ok = (bw <= w) & (bh <= h) & (bw > 0) & (bh > 0)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
        fallback = first < 0  # torchvision falls back to the whole (centre) image
        idx = first.clamp(min=0)[:, None]
        bw = torch.where(fallback, torch.tensor(float(w), device=device), bw.gather(1, idx)[:, 0])
        bh = torch.where(fallback, torch.tensor(float(h), device=device), bh.gather(1, idx)[:, 0])
        x0 = torch.minimum(torch.floor(u[:, -2] * (w - bw + 1)), w - bw)
        y0 = torch.minimum(torch.floor(u[:, -1] * (h - bh + 1)), h - bh)
        return torch.stack([x0, y0, x0 + bw, y0 + bh], 1)

    def forward(self, x: torch.Tensor, rand: Callable | None = None) -> torch.Tensor:
        """``rand``: as in ``boxes`` (``zf.training.train.fit`` passes numbers drawn per sample of the global batch, so
        the augmentation of an image does not depend on the number of processes)."""
        n, _, h, w = x.shape
        b = self.boxes(n, h, w, x.device, rand=rand)
        rois = torch.cat([torch.arange(n, device=x.device, dtype=b.dtype)[:, None], b], 1)
        out = roi_align(x.float(), rois, output_size=(self.size, self.size), spatial_scale=1.0, sampling_ratio=-1,
                        aligned=True)
        if self.flip:
            u = rand(n, 1)[:, 0].to(x.device) if rand is not None else torch.rand(n, device=x.device)
            out = torch.where((u < 0.5)[:, None, None, None], out.flip(-1), out)
        return out


@dataclass(frozen=True, eq=False)
class ImageSource:
    """The images a job reads and how they enter the model, resolved once: ``dataset`` (items (uint8 image, label,
    index), e.g. an ``ImageDataset``), ``normalize`` (uint8 -> model input, on ``device``), ``transform`` (the spec
    of how the images were made: part of the mining cache key and of the run's summary) and the ``device`` the model
    runs on."""

    dataset: Any
    normalize: Normalize
    transform: dict = field(default_factory=dict)
    device: torch.device | str = "cpu"

    @cached_property
    def paths(self) -> list[str]:
        """The source path of every image id, as strings."""
        return [str(self.dataset.path(i)) for i in range(len(self.dataset))]

    @property
    def image_size(self) -> int:
        """The model-input size of the images (``transform["size"]``, 224 when the spec does not say)."""
        return int(self.transform.get("size", 224))

