"""zf.mining.mine: the streamed top-k equals a reference computed here from forward hooks, ties break deterministically,
conv taps read the conv output even before an in-place ReLU, unreadable files reach the caller's ``skipped`` whatever
the worker count, bad arguments fail before the pass, an interrupted pass resumes to the same table without redoing
saved batches, and two gloo processes merge into the single-process table."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from torch import nn

from zf.data import ImageDataset, Normalize, TensorImages, default_data_root
from zf.errors import ConfigError, LayerError
from zf.mining.mine import Running, merge, mine
from zf.net.layers import resolve_layer
from zf.net.models import zfnet

VAL = default_data_root() / "val"
LAYERS = ["relu1", "relu2", "relu3", "relu4", "relu5", "pool5"]


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return zfnet(num_classes=10, width=0.125).eval()


@pytest.fixture(scope="module")
def dataset(imagenette_val):
    return ImageDataset(imagenette_val, limit=23, subset_seed=3)


def hooked_topk(model, images, layer, k, tap="relu"):
    """Reference written for the tests: the activation of ``layer`` read by a forward hook that copies it, during
    the model's own ``features`` forward of every image at once; per unit, the k images with the largest maximum
    (ties: smaller image first) and the first raster position of that maximum.  Returns (value, image, pos)."""
    module = resolve_layer(model, layer, tap).module
    got = []
    h = module.register_forward_hook(lambda m, i, o: got.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model.eval().features(Normalize()(images))
    finally:
        h.remove()
    a = got[0].numpy()
    n, c = a.shape[:2]
    flat = a.reshape(n, c, -1)
    best, pos = flat.max(2), flat.argmax(2)  # numpy argmax: the first maximum
    vals, imgs, poss = [], [], []
    for ch in range(c):
        order = sorted(range(n), key=lambda i: (-best[i, ch], i))[:k]
        vals.append(best[order, ch])
        imgs.append(order)
        poss.append(pos[order, ch])
    return np.array(vals), np.array(imgs), np.array(poss)


@pytest.fixture(scope="module")
def reference(dataset):
    model = small_model()
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return model, {L: hooked_topk(model, images, L, k=5) for L in LAYERS}


def _pos(table, w):
    return table.y * w + table.x


def test_streamed_topk_equals_brute_force_every_layer(dataset, reference):
    model, ref = reference
    tables = mine(model, dataset, layers=LAYERS, k=5, batch_size=4, progress=False)  # 23 = 5 uneven batches
    widths = {"relu1": 110, "relu2": 26, "relu3": 13, "relu4": 13, "relu5": 13, "pool5": 6}
    for L in LAYERS:
        value, image, pos = ref[L]
        t = tables[L]
        np.testing.assert_allclose(t.activation, value, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(t.image, image)
        np.testing.assert_array_equal(_pos(t, widths[L]), pos)
        # 5 different images per unit
        assert all(len(set(r)) == 5 for r in t.image)
        # boxes come from the receptive field: conv4 107 px, conv1 7 px
    assert (tables["relu4"].box[..., 1] - tables["relu4"].box[..., 0] == 107).all()
    assert (tables["relu1"].box[..., 1] - tables["relu1"].box[..., 0] == 7).all()


def test_batch_size_changes_only_rounding(dataset, reference):
    model, _ = reference
    a = mine(model, dataset, layers=[4], k=5, batch_size=23, progress=False)["relu4"]
    b = mine(model, dataset, layers=[4], k=5, batch_size=1, progress=False)["relu4"]
    np.testing.assert_allclose(a.activation, b.activation, rtol=1e-4, atol=1e-5 * np.nanmax(a.activation))
    for f in ("image", "y", "x"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_ties_break_by_image_index(tmp_path):
    # identical images: every activation ties, so the top-k are images 0..k-1 in order, at the first position
    for i in range(7):
        Image.new("RGB", (64, 64), (90, 120, 200)).save(tmp_path / f"{i:02d}.png")
    ds = ImageDataset(tmp_path, size=64)
    model = small_model()
    t = mine(model, ds, layers=[2], k=3, batch_size=2, progress=False)["relu2"]
    live = t.activation[:, 0] > 0
    assert live.any()
    np.testing.assert_array_equal(t.image[live], np.tile([0, 1, 2], (live.sum(), 1)))


def test_running_merge_is_order_independent():
    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 4, (3, 20), generator=g).float()  # many ties
    img = torch.randperm(20, generator=g).expand(3, 20)
    pos = torch.zeros(3, 20, dtype=torch.long)
    a = Running(3, 6)
    a.update(v, img, pos)
    parts = []
    for cols in (slice(0, 7), slice(7, 20)):
        r = Running(3, 6)
        r.update(v[:, cols], img[:, cols], pos[:, cols])
        parts.append(r.state())
    m = merge(reversed(parts))
    assert torch.equal(m["value"], a.value) and torch.equal(m["image"], a.image)
    # the order is value descending, then image ascending
    for c in range(3):
        pairs = list(zip((-a.value[c]).tolist(), a.image[c].tolist()))
        assert pairs == sorted(pairs)


def test_interrupted_mining_resumes_to_the_same_table(dataset, reference, tmp_path):
    model, _ = reference
    full = mine(model, dataset, layers=[1, 5], k=5, batch_size=4, progress=False)
    state = tmp_path / "state.pt"
    assert mine(model, dataset, layers=[1, 5], k=5, batch_size=4, progress=False, state_path=state,
                stop_after=3) == {}
    saved = torch.load(state, weights_only=True)
    assert saved["done"] == 12
    resumed = mine(model, dataset, layers=[1, 5], k=5, batch_size=4, progress=False, state_path=state)
    for L in full:
        for f in ("activation", "image", "y", "x", "box"):
            np.testing.assert_array_equal(getattr(full[L], f), getattr(resumed[L], f))


@pytest.mark.parametrize("arch", ["vgg11", "alexnet"])
def test_conv_tap_reads_the_conv_output_before_an_inplace_relu(arch):
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    assert any(getattr(m, "inplace", False) for m in model.features)  # the case at issue: in-place ReLUs
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    with torch.no_grad():  # a unit of each mined conv negative everywhere: a rectified copy would read 0.0
        convs[0].bias[0] = convs[1].bias[0] = -1000.0
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=g)
    data = TensorImages(x, torch.zeros(6, dtype=torch.long))
    tables = mine(model, data, layers=[1, 2], k=3, tap="conv", batch_size=4, progress=False)
    names = ("conv1_1", "conv2_1") if arch == "vgg11" else ("conv1", "conv2")  # VGG: named by block
    for layer, name in zip((1, 2), names):
        value, image, pos = hooked_topk(model, x, layer, 3, tap="conv")
        t = tables[name]
        np.testing.assert_allclose(t.activation, value, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(t.image, image)
        assert (t.activation < 0).any()
        assert (t.activation[0] < -100).all()


def _write_flat(root, n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_and_vanished_files_reach_the_callers_skipped(tmp_path, num_workers):
    root = _write_flat(tmp_path / "imgs", 7)
    corrupt = root / "02.png"
    corrupt.write_bytes(b"not an image at all" * 10)
    gone = root / "05.png"
    ds = ImageDataset(root, size=32)
    gone.unlink()  # listed, then deleted before it is read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = mine(small_model(), ds, layers=[2], k=3, batch_size=2, num_workers=num_workers, progress=False)["relu2"]
    assert ds.skipped == [str(corrupt), str(gone)]
    assert not np.isin(t.image, [2, 5]).any() and set(np.unique(t.image)) <= {0, 1, 3, 4, 6}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skipped_files_found_before_a_resume_are_kept(tmp_path, num_workers):
    root = _write_flat(tmp_path / "imgs", 6)
    corrupt = root / "01.png"
    corrupt.write_bytes(b"\xff\xd8 truncated")
    state = tmp_path / "state.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = ImageDataset(root, size=32)
        assert mine(small_model(), first, layers=[2], k=2, batch_size=2, num_workers=num_workers, progress=False,
                    state_path=state, stop_after=1) == {}
        resumed = ImageDataset(root, size=32)  # a new process: nothing in memory
        mine(small_model(), resumed, layers=[2], k=2, batch_size=2, num_workers=num_workers, progress=False,
             state_path=state)
    assert resumed.skipped == [str(corrupt)]


class _NoPass(torch.utils.data.Dataset):
    """A data set that fails the test if anything reads an item."""

    size = 32

    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise AssertionError("the pass started")


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(k=0), ConfigError, "k=0"),
    (dict(k=-1), ConfigError, "k=-1"),
    (dict(k=2.5), ConfigError, "k=2.5"),
    (dict(tap="pre"), ConfigError, "tap='pre'"),
    (dict(layers=[]), ConfigError, "layers"),
    (dict(layers=["conv9"]), LayerError, "conv9"),
    (dict(layers=["fc6"]), LayerError, "classifier"),
    (dict(batch_size=0), ConfigError, "batch_size=0"),
])
def test_bad_arguments_fail_before_the_pass(kwargs, error, words):
    args = dict(layers=[2], k=3) | kwargs
    with pytest.raises(error, match=words) as e:
        mine(small_model(), _NoPass(), progress=False, **args)
    assert "\n" not in str(e.value)


def test_a_net_without_receptive_field_fails_before_the_pass():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Upsample(scale_factor=2),
                                          nn.Conv2d(4, 4, 3), nn.ReLU())

    with pytest.raises(ConfigError, match="Upsample") as e:
        mine(Net(), _NoPass(), layers=["relu1"], k=1, progress=False)
    assert "\n" not in str(e.value)


class _Killed(Exception):
    pass


def test_state_saved_by_time_resumes_without_redoing_batches(dataset, reference, tmp_path):
    model, _ = reference
    full = mine(model, dataset, layers=[1, 5], k=5, batch_size=4, progress=False)  # 23 images = 6 batches
    state = tmp_path / "state.pt"
    calls = []

    def count(m, i):
        calls.append(len(i[0]))
        if len(calls) == 4:
            raise _Killed  # dies in its 4th batch, after 3 whole batches
    h = model.features[0].register_forward_pre_hook(count)
    try:
        with pytest.raises(_Killed):  # by batches alone (every 20) it would never have saved
            mine(model, dataset, layers=[1, 5], k=5, batch_size=4, progress=False, state_path=state,
                 save_every=20, save_every_s=0)
        assert torch.load(state, weights_only=True)["done"] == 12
        calls.clear()
        h.remove()
        h = model.features[0].register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
        resumed = mine(model, dataset, layers=[1, 5], k=5, batch_size=4, progress=False, state_path=state,
                       save_every=20, save_every_s=0)
    finally:
        h.remove()
    assert calls == [4, 4, 3]  # only the 3 batches after the saved state, not the 3 before
    for L in full:
        for f in ("activation", "image", "y", "x", "box"):
            np.testing.assert_array_equal(getattr(full[L], f), getattr(resumed[L], f))


def test_without_a_time_limit_a_short_pass_saves_only_every_save_every(dataset, reference, tmp_path):
    model, _ = reference
    state = tmp_path / "state.pt"
    calls = []

    def count(m, i):
        calls.append(1)
        if len(calls) == 3:
            raise _Killed
    h = model.features[0].register_forward_pre_hook(count)
    try:
        with pytest.raises(_Killed):
            mine(model, dataset, layers=[1], k=5, batch_size=4, progress=False, state_path=state, save_every=20,
                 save_every_s=None)
    finally:
        h.remove()
    assert not state.exists()


def _worker(rank: int, world: int, rendezvous: str, out: str, limit: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # a file rendezvous in the test's own folder: no port to pick, so nothing else on the machine can take it
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        ds = ImageDataset(VAL, limit=limit, subset_seed=3)
        tables = mine(small_model(), ds, layers=[2, 4], k=5, batch_size=3, progress=False,
                      state_path=Path(out).with_suffix(".state"))
        if rank == 0:
            np.savez(out, **{f"{L}_{f}": getattr(t, f) for L, t in tables.items()
                             for f in ("activation", "image", "y", "x")})
    finally:
        dist.destroy_process_group()


def test_two_process_merge_equals_one_process(dataset, reference, tmp_path):
    model, _ = reference
    single = mine(model, dataset, layers=[2, 4], k=5, batch_size=3, progress=False)
    out = tmp_path / "dist.npz"
    mp.start_processes(_worker, args=(2, str(tmp_path / "rendezvous"), str(out), len(dataset)), nprocs=2, join=True,
                       start_method="spawn")
    got = np.load(out)
    for L, t in single.items():
        for f in ("activation", "image", "y", "x"):
            np.testing.assert_array_equal(got[f"{L}_{f}"], getattr(t, f))
    # each process kept its own resumable state: 23 images in batches of 3 = 8 batches, 4 per process
    done = [int(torch.load(tmp_path / f"dist.state.rank{r}", weights_only=True)["done"]) for r in (0, 1)]
    assert done == [12, 11]
    assert not list(tmp_path.glob("*.tmp"))
