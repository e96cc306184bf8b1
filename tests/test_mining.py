"""zf.mining: the streamed top-k equals brute force, ties break deterministically, an interrupted pass resumes to the
same table, and two gloo processes merge into the single-process table."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from zf.data import ImageDataset, default_data_root
from zf.mining import Running, merge, mine, mine_brute_force
from zf.models import zfnet

VAL = default_data_root() / "val"
LAYERS = ["relu1", "relu2", "relu3", "relu4", "relu5", "pool5"]


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return zfnet(num_classes=10, width=0.125).eval()


@pytest.fixture(scope="module")
def dataset():
    return ImageDataset(VAL, limit=23, subset_seed=3)


@pytest.fixture(scope="module")
def reference(dataset):
    model = small_model()
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return model, {L: mine_brute_force(model, images, L, k=5) for L in LAYERS}


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
    # each process kept its own resumable state
    assert (tmp_path / "dist.state.rank0").is_file() and (tmp_path / "dist.state.rank1").is_file()
