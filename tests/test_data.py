"""zf.data: folder listing, unreadable and non-RGB files, and the batched training augmentation (BatchAugment)."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zf import data as zdata
from zf.errors import DataError


def write_tree(root, classes=3, per_class=4, size=(40, 48), seed=0):
    """root/c<k>/<i>.png: random-noise RGB images; returns the paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = root / f"c{c}" / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
            paths.append(p)
    return paths


# --------------------------------------------------------------------------------------------------------------
# list_images / ImageDataset

def test_list_images_tree_and_flat(tmp_path):
    write_tree(tmp_path / "tree", classes=2, per_class=3)
    (tmp_path / "tree" / "c1" / "notes.txt").write_text("not an image")
    files = zdata.list_images(tmp_path / "tree")
    assert files.classes == ["c0", "c1"]
    assert files.labels == [0, 0, 0, 1, 1, 1]
    assert all(p.suffix == ".png" for p in files.paths)

    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.jpg")
    files = zdata.list_images(flat)
    assert files.classes == [] and files.labels == [-1] and files.paths[0].name == "a.jpg"


def test_list_images_missing_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zdata.list_images(tmp_path / "nope")
    (tmp_path / "empty" / "c0").mkdir(parents=True)
    (tmp_path / "empty" / "c0" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="holds no images"):
        zdata.list_images(tmp_path / "empty")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_non_rgb_images_become_rgb(tmp_path, mode):
    (tmp_path / "c0").mkdir()
    img = Image.new(mode, (30, 20), 200 if mode in ("L", "P") else (200, 120) if mode == "LA" else (200, 100, 50, 128))
    img.save(tmp_path / "c0" / "x.png")
    ds = zdata.ImageDataset(tmp_path, size=16)
    x, label, i = ds[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16) and label == 0 and i == 0
    if mode in ("L", "LA"):  # greyscale: three equal channels
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
        assert int(x[0, 8, 8]) == 200
    elif mode == "P":  # palette: the palette's colour of index 200
        assert x[:, 8, 8].tolist() == list(img.convert("RGB").getpixel((0, 0)))
    else:  # RGBA drops alpha, keeps the colour
        assert x[:, 8, 8].tolist() == [200, 100, 50]


def test_unreadable_file_is_skipped_with_a_warning(tmp_path):
    write_tree(tmp_path, classes=2, per_class=2)
    bad = tmp_path / "c1" / "bad.jpg"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    truncated = tmp_path / "c0" / "truncated.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:200])
    ds = zdata.ImageDataset(tmp_path, size=16)
    assert len(ds) == 6
    with pytest.warns(UserWarning) as rec:
        items = [ds[i] for i in range(len(ds))]
    msgs = " ".join(str(w.message) for w in rec)
    assert str(bad) in msgs and str(truncated) in msgs
    assert sum(it is None for it in items) == 2
    assert sorted(ds.skipped) == sorted([str(bad), str(truncated)])
    # a second pass (the next epoch) lists each file once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [ds[i] for i in range(len(ds))]
    assert len(ds.skipped) == 2
    # the collate drops them; a batch of nothing but unreadable files is None
    batch = zdata.collate_skip(items)
    assert batch[0].shape == (4, 3, 16, 16) and len(batch[1]) == 4
    assert zdata.collate_skip([None, None]) is None
    # preload leaves them out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images, labels = zdata.preload(ds, progress=False)
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 0, 1, 1]


def test_limit_is_a_fixed_subset(tmp_path):
    write_tree(tmp_path, classes=3, per_class=4, size=(8, 8))
    a = zdata.ImageDataset(tmp_path, size=8, limit=5, subset_seed=3)
    b = zdata.ImageDataset(tmp_path, size=8, limit=5, subset_seed=3)
    assert len(a) == 5 and list(a.indices) == list(b.indices) and list(a.indices) == sorted(a.indices)


def test_normalize_roundtrip():
    norm = zdata.Normalize()
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    y = norm(x)
    ref = (x.float() / 255 - torch.tensor(zdata.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        zdata.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.inverse(y), x.float(), atol=1e-3, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# BatchAugment

@pytest.mark.parametrize("kind", ["random_crop", "random_resized_crop", "none"])
def test_augment_shape(kind):
    x = torch.randint(0, 256, (5, 3, 40, 48), dtype=torch.uint8)
    aug = zdata.BatchAugment(32, kind)
    out = aug(x)
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    aug.size = 24  # progressive resizing changes it between epochs
    assert aug(x).shape == (5, 3, 24, 24)


def test_augment_none_is_a_resize():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    # same size: the identity
    assert torch.equal(zdata.BatchAugment(32, "none", flip=False)(x), x.float())
    # integer downsampling: area averaging
    torch.testing.assert_close(zdata.BatchAugment(16, "none", flip=False)(x),
                               F.interpolate(x.float(), size=16, mode="area"), atol=1e-3, rtol=0)
    # upsampling: bilinear (half-pixel centres)
    torch.testing.assert_close(zdata.BatchAugment(48, "none", flip=False)(x),
                               F.interpolate(x.float(), size=48, mode="bilinear", align_corners=False),
                               atol=1e-3, rtol=0)
    # a smooth image at a non-integer factor: close to an antialiased resize
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = (255 * torch.stack([yy, xx, (xx + yy) / 2])[None]).round().to(torch.uint8)
    ref = F.interpolate(smooth.float(), size=40, mode="bilinear", align_corners=False, antialias=True)
    assert (zdata.BatchAugment(40, "none", flip=False)(smooth) - ref).abs().max() < 3.0


def test_random_crop_is_an_exact_pixel_crop():
    x = torch.randint(0, 256, (16, 3, 20, 26), dtype=torch.uint8)
    aug = zdata.BatchAugment(12, "random_crop", flip=False)
    torch.manual_seed(7)
    boxes = aug.boxes(16, 20, 26)
    torch.manual_seed(7)
    out = aug(x)  # draws the same boxes first
    assert torch.equal(boxes, boxes.round())
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        assert (x1 - x0, y1 - y0) == (12, 12)
        assert torch.equal(out[i], x[i, :, y0:y1, x0:x1].float())
    # not always the same crop
    assert len({tuple(b) for b in boxes.tolist()}) > 1
    with pytest.raises(ValueError, match="at least"):
        zdata.BatchAugment(32, "random_crop")(x)


@pytest.mark.parametrize("kind,h,w", [("random_crop", 20, 26), ("random_resized_crop", 20, 26),
                                      ("random_resized_crop", 64, 16), ("random_resized_crop", 7, 300)])
def test_boxes_inside_image(kind, h, w):
    torch.manual_seed(0)
    aug = zdata.BatchAugment(8, kind, scale=(0.08, 1.0))
    b = aug.boxes(2000, h, w)
    assert b.shape == (2000, 4)
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    if kind == "random_resized_crop":
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (h * w)
        assert area.max() <= 1.0 + 1e-6 and area.min() > 0.0
        if w / h > 10:  # no box of ratio 3/4..4/3 and area >= 8% fits: the documented fallback, the whole image
            assert torch.equal(b, torch.tensor([[0.0, 0.0, w, h]]).expand(2000, 4))
        else:
            assert area.std() > 0.01  # boxes vary


def test_flip_mirrors_about_half():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8)
    out = zdata.BatchAugment(8, "none", flip=True)(x)
    same = (out == x.float()).flatten(1).all(1)
    mirrored = (out == x.float().flip(-1)).flatten(1).all(1)
    assert (same ^ mirrored).all()  # each image is one or the other (random noise is never symmetric)
    assert 60 < int(mirrored.sum()) < 140
    assert not (zdata.BatchAugment(8, "none", flip=False)(x) == x.float().flip(-1)).flatten(1).all(1).any()


def test_augment_rejects_unknown_kind():
    with pytest.raises(ValueError, match="random_crop"):
        zdata.BatchAugment(8, "cutmix")
