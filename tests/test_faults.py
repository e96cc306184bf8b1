"""Faults: kill -9 during mining and during training (each rerun equals a clean run exactly), a data file that
disappears between listing and reading, and truncated checkpoints (a ``CheckpointError`` naming the file).

The killed processes are made to wait at a chosen point (a data set that blocks on one image; ``fit``'s
``zf.faults.pause_point``), so the kill lands mid-run for certain; a test fails if it would land late.
"""
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from imagetree import write_tree
from killing import wait_then_kill

from zf import data as zdata
from zf.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
for _k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ZF_PAUSE_AT", "ZF_PAUSE_FILE"):
    ENV.pop(_k, None)


# --------------------------------------------------------------------------------------------------------------
# kill -9 during mining

MINE = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    import numpy as np, torch
    from zf.data import ImageDataset
    from zf.mining.mine import mine
    from zf.net.models import zfnet

    root, out, state, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)

    class Blocking(ImageDataset):
        def __getitem__(self, i):
            if i == block:  # the state of the batches before this one is saved: say so, then hang
                Path(out + ".paused").write_text(str(os.getpid()))
                while True:
                    time.sleep(1)
            return super().__getitem__(i)

    torch.manual_seed(0)
    model = zfnet(num_classes=3, width=0.0625, fc=[32, 32]).eval()
    tables = mine(model, Blocking(root, size=64), layers=[1, 3, 5], k=3, batch_size=2, progress=False,
                  state_path=state if state != "-" else None, save_every=1)
    np.savez(out, **{f"{L}_{f}": getattr(t, f) for L, t in tables.items()
                     for f in ("activation", "image", "y", "x", "box")})
''')


def test_kill_during_mining_then_rerun_equals_a_clean_run(tmp_path):
    data = write_tree(tmp_path / "data", per_class=4, val_per_class=0, size=(64, 64))
    root = data / "train"  # 12 images, 6 batches of 2
    script = tmp_path / "mine.py"
    script.write_text(MINE)
    state = tmp_path / "state.pt"

    def run(out, state_arg, block):
        return [sys.executable, str(script), str(root), str(out), state_arg, str(block)]

    killed = tmp_path / "killed.npz"
    proc = subprocess.Popen(run(killed, str(state), 7), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    wait_then_kill(proc, Path(str(killed) + ".paused"), "mining")
    assert not killed.exists()
    assert int(torch.load(state, weights_only=True)["done"]) == 6  # batches 0-2 saved; batch 3 (images 6, 7) not

    rerun = subprocess.run(run(killed, str(state), -1), env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    clean = subprocess.run(run(tmp_path / "clean.npz", "-", -1), env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    a, b = np.load(killed), np.load(tmp_path / "clean.npz")
    assert sorted(a.files) == sorted(b.files) and len(a.files) == 15
    for f in a.files:
        np.testing.assert_array_equal(a[f], b[f], err_msg=f)
    assert (a["relu1_image"] >= 0).all()  # every slot filled: 12 images for k=3


# --------------------------------------------------------------------------------------------------------------
# kill -9 during training

TRAIN = textwrap.dedent('''
    import sys
    import torch
    from zf import data as zdata
    from zf.net.models import zfnet
    from zf.training.train import TrainConfig, fit

    out = sys.argv[1]
    torch.manual_seed(0)
    model = zfnet(num_classes=3, width=0.0625, fc=[32, 32], dropout=0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (24, 3, 56, 56), dtype=torch.uint8, generator=g)
    y = torch.arange(24) % 3
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.02, schedule="onecycle", progress=False, threads=1,
                      snapshot_epochs=(1,))
    fit(model, zdata.TensorImages(x, y), zdata.TensorImages(x[:6], y[:6]), out, cfg, resume=True,
        augment=zdata.BatchAugment(56, "random_resized_crop", flip=True))
''')


def test_kill_during_training_then_resume_equals_a_clean_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    killed, paused = tmp_path / "killed", tmp_path / "paused"
    env = {**ENV, "ZF_PAUSE_AT": "train:2:3", "ZF_PAUSE_FILE": str(paused)}
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_then_kill(proc, paused, "training")
    last = killed / "checkpoints" / "last.pt"
    assert int(torch.load(last, weights_only=True)["epoch"]) == 1  # killed in epoch 2, after 2 of its 6 steps

    resumed = subprocess.run([sys.executable, str(script), str(killed)], env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr and "after epoch 1" in resumed.stdout + resumed.stderr
    clean = subprocess.run([sys.executable, str(script), str(tmp_path / "clean")], env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    a = torch.load(last, weights_only=True)
    b = torch.load(tmp_path / "clean" / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in b["optimizer"]["state"]:
        assert torch.equal(a["optimizer"]["state"][k]["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


# --------------------------------------------------------------------------------------------------------------
# a data file that disappears between listing and reading

@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_file_deleted_after_listing_is_skipped_and_listed(tmp_path, num_workers):
    from zf.mining.mine import mine
    from zf.net.models import zfnet

    data = write_tree(tmp_path / "data", per_class=2, val_per_class=0, size=(64, 64))
    ds = zdata.ImageDataset(data / "train", size=64)
    gone = ds.path(3)
    gone.unlink()  # listed, then deleted before the pass reads it
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = mine(zfnet(num_classes=3, width=0.0625, fc=[32, 32]), ds, layers=[2], k=2, batch_size=2,
                 num_workers=num_workers, progress=False)["relu2"]
    assert ds.skipped == [str(gone)]
    assert 3 not in t.image and (t.image >= 0).all()
    with pytest.warns(UserWarning, match=gone.name):  # the warning names the file
        assert ds[3] is None


# --------------------------------------------------------------------------------------------------------------
# truncated checkpoints

def _truncated(tmp_path, keep: float) -> Path:
    p = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.randn(64, 64)}, "epoch": 3}, p)
    blob = p.read_bytes()
    p.write_bytes(blob[:int(len(blob) * keep)])
    return p


@pytest.mark.parametrize("loader, keep", [("zf.training.checkpoints.load_checkpoint", k) for k in (0.0, 0.01, 0.5, 0.99)]
                         + [("zf.net.models.load_state_dict", k) for k in (0.0, 0.5)])
def test_truncated_checkpoint_gives_checkpoint_error(tmp_path, loader, keep):
    """A training checkpoint or a weights file cut short: one line naming the file, never weights_only=False."""
    from hydra.utils import get_method

    p = _truncated(tmp_path, keep)
    with pytest.raises(CheckpointError) as e:
        get_method(loader)(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg and "weights_only=False" not in msg


# --------------------------------------------------------------------------------------------------------------
# kill -9 during the main job's projections and during the gallery build

RUN = [sys.executable, str(ROOT / "scripts" / "run.py")]


def _main_job(data: Path, out: Path, cache: Path) -> list[str]:
    return RUN + [f"data.root={data}", "data.size=64", "model.checkpoint=null", "model.weights=random",
                  "model.arch.width=0.125", "layer=[2,4]", "k=2", "logger=none", "progress=false", "num_workers=0",
                  "batch_size=4", f"hydra.run.dir={out}", f"paths.cache_dir={cache}"]


def _files(run: Path, skip=("summary.json", "index.html", "run.log")) -> dict[str, bytes]:
    """Every file a run wrote, by relative path, but the ones that hold the date, the cache path or logs."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name not in skip and ".hydra" not in p.parts and "wandb" not in p.parts}


def _summary(run: Path) -> dict:
    import json

    s = json.loads((run / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in ("date", "mining_cache")}


@pytest.mark.parametrize("point", ["render:relu4", "gallery"])
def test_kill_during_projection_or_gallery_then_rerun_equals_a_clean_run(tmp_path, point):
    data = write_tree(tmp_path / "data", per_class=1, val_per_class=3)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_main_job(data, clean, tmp_path / "cache"), env=ENV, check=True, capture_output=True, timeout=600)
    paused = tmp_path / "paused"
    proc = subprocess.Popen(_main_job(data, killed, tmp_path / "cache"), env={**ENV, "ZF_PAUSE_AT": point,
                            "ZF_PAUSE_FILE": str(paused)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_then_kill(proc, paused, point)
    assert not (killed / "gallery" / "index.html").exists()   # it died before finishing
    subprocess.run(_main_job(data, killed, tmp_path / "cache"), env=ENV, check=True, capture_output=True, timeout=600)
    assert _summary(killed) == _summary(clean)
    a, b = _files(clean), _files(killed)
    assert sorted(a) == sorted(b) and all(a[k] == b[k] for k in a)
    assert any(k.startswith("layers/relu4/deconvnet/") for k in a) and "gallery/layer_relu4.html" in a
