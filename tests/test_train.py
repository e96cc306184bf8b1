"""zf.training.train and the training task: feature scale clipping, resume after kill -9, distributed equivalence,
unreadable files, config composition and a tiny end-to-end run with export.

Everything runs on fabricated data (random-noise JPEGs in tmp_path) and a tiny zfnet (width 1/16, fc 64) at 56-64 px.
"""
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from imagetree import write_tree
from killing import wait_then_kill
from torch import nn

from zf import data as zdata
from zf.net.models import load_zfnet, zfnet
from zf.training.train import TrainConfig, clip_feature_scale_, fit

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.arch.width=0.0625", "model.arch.fc=[64,64]", "data.size=56", "data.resize=64", "train.batch_size=4",
        "train.progress=false", "train.threads=1", "train.preload=true", "logger=none"]
# metrics that must agree between two runs of the same config (not the timings)
SAME = ("epoch", "train_loss", "train_top1", "lr", "clipped_filters", "train_size", "val_loss", "val_top1", "val_top5")


def compose(overrides, out_dir=None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    extra = [f"paths.output_dir={out_dir}"] if out_dir is not None else []
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides) + extra)


def same_history(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert {k: x.get(k) for k in SAME} == {k: y.get(k) for k in SAME}


# --------------------------------------------------------------------------------------------------------------
# 1. feature scale clipping (section 3)

def test_clip_feature_scale_on_a_hand_made_filter_bank():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3)
    d = torch.randn(3, 3, 3)
    with torch.no_grad():
        conv.weight[0] = d / d.pow(2).mean().sqrt() * 0.2  # RMS 0.2, a random direction
        conv.weight[1] = 0.05                             # RMS 0.05
        conv.weight[2] = 0.1                              # RMS exactly at the radius: not "exceeds"
    before = conv.weight.detach().clone()
    bias = conv.bias.detach().clone()
    n = clip_feature_scale_(nn.Sequential(conv), 0.1)
    w = conv.weight.detach()
    assert n == 1
    rms = w.pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms[0], torch.tensor(0.1), rtol=1e-6, atol=0)
    torch.testing.assert_close(w[0], before[0] / 2, rtol=1e-6, atol=1e-8)  # same direction, half the length
    assert torch.equal(w[1], before[1]) and torch.equal(w[2], before[2])
    assert torch.equal(conv.bias, bias)  # biases are not filters
    assert clip_feature_scale_(nn.Sequential(conv), 0.1) == 0  # idempotent


def test_clip_layers_conv1_leaves_later_convs_alone():
    a, b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3)
    with torch.no_grad():
        a.weight.fill_(1.0)
        b.weight.fill_(1.0)
    model = nn.Sequential(a, nn.ReLU(), b, nn.Linear(2, 2))
    with torch.no_grad():
        model[3].weight.fill_(5.0)
    assert clip_feature_scale_(model, 0.1, layers="conv1") == 4
    torch.testing.assert_close(a.weight, torch.full_like(a.weight, 0.1))
    assert torch.equal(b.weight, torch.ones_like(b.weight))
    assert clip_feature_scale_(model, 0.1, layers="all") == 2
    torch.testing.assert_close(b.weight, torch.full_like(b.weight, 0.1))
    assert torch.equal(model[3].weight, torch.full_like(model[3].weight, 5.0))  # linear layers are not clipped
    with pytest.raises(ValueError, match="conv1"):
        clip_feature_scale_(model, 0.1, layers="conv2")


# --------------------------------------------------------------------------------------------------------------
# 2. resume after kill -9

def test_resume_after_kill_gives_the_uninterrupted_run(tmp_path):
    data = write_tree(tmp_path / "data", per_class=24, val_per_class=2)
    epochs = 3
    base = [sys.executable, str(ROOT / "scripts" / "train.py"), f"data.root={data}", f"train.epochs={epochs}",
            "train.schedule=onecycle", "train.snapshot_epochs=[1]", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROJECT_ROOT": str(ROOT), "HYDRA_FULL_ERROR": "1"}

    def cmd(run):
        return base + [f"hydra.run.dir={run}"]

    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.pt"
    paused = tmp_path / "paused"
    # the run stops before step 2 of epoch 2 (after epoch 1's checkpoint) and waits there to be killed
    pause = {**env, "ZF_PAUSE_AT": "train:2:2", "ZF_PAUSE_FILE": str(paused)}
    proc = subprocess.Popen(cmd(killed), env=pause, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_then_kill(proc, paused, "the run (epoch 2 step 2)", timeout=600)  # generous: a loaded machine is slow
    seen = int(torch.load(last, map_location="cpu", weights_only=True)["epoch"])
    assert seen == 1  # killed mid-way through epoch 2

    resumed = subprocess.run(cmd(killed), env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert "after epoch 1" in resumed.stdout + resumed.stderr
    fresh = subprocess.run(cmd(tmp_path / "fresh"), env=env, capture_output=True, text=True, timeout=900)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    ref = torch.load(tmp_path / "fresh" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)

    assert state["epoch"] == ref["epoch"] == epochs
    assert state["model"].keys() == ref["model"].keys()
    for k in ref["model"]:
        assert torch.equal(state["model"][k], ref["model"][k]), k
    same_history(state["history"], ref["history"])
    same_history(json.loads((killed / "history.json").read_text()), ref["history"])
    assert state["scheduler"]["last_epoch"] == ref["scheduler"]["last_epoch"]
    feats = torch.load(killed / "checkpoints" / "features_epoch001.pt", map_location="cpu", weights_only=True)
    assert feats["epoch"] == 1 and all(k.startswith("features.") for k in feats["features"])


# --------------------------------------------------------------------------------------------------------------
# 3. distributed: two gloo processes = one process with the same global batch

def _tiny_net():
    torch.manual_seed(0)
    return zfnet(num_classes=3, width=0.0625, fc=[64, 64], dropout=0.5)


def _tiny_augment():
    return zdata.BatchAugment(56, "random_resized_crop", scale=(0.3, 1.0), flip=True)


def _tiny_sets():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (24, 3, 56, 56), dtype=torch.uint8, generator=g)
    y = torch.arange(24) % 3
    return zdata.TensorImages(x, y), zdata.TensorImages(x[:6], y[:6])


DDP_CFG = dict(epochs=3, batch_size=8, lr=0.05, schedule="plateau", plateau_patience=0, progress=False, threads=1,
               snapshot_epochs=())


def _ddp_worker(rank, world, rendezvous, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    # a file rendezvous in the test's own folder (no port that another process could take); fit() finds the
    # process group initialised and uses it
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        train, val = _tiny_sets()
        fit(_tiny_net(), train, val, out_dir, TrainConfig(**DDP_CFG), resume=False, augment=_tiny_augment())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_dropout_and_augmentation_are_random(tmp_path, monkeypatch):
    # the distributed test below means something only if dropout and augmentation change the run
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    train, val = _tiny_sets()
    cfg = TrainConfig(**(DDP_CFG | dict(epochs=1)))
    a = fit(_tiny_net(), train, val, tmp_path / "a", cfg, resume=False, augment=_tiny_augment())
    b = fit(_tiny_net(), train, val, tmp_path / "b", cfg, resume=False,
            augment=zdata.BatchAugment(56, "none", flip=False))
    net = _tiny_net()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    c = fit(net, train, val, tmp_path / "c", cfg, resume=False, augment=_tiny_augment())
    assert a[0]["train_loss"] != b[0]["train_loss"] and a[0]["train_loss"] != c[0]["train_loss"]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path / "ddp")), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.time() + 600
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("distributed run timed out")

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    train, val = _tiny_sets()
    fit(_tiny_net(), train, val, tmp_path / "one", TrainConfig(**DDP_CFG), resume=False, augment=_tiny_augment())
    # with dropout and augmentation on: every random number is drawn per sample of the global batch (from a
    # generator seeded by (seed, epoch, step)), so 2 processes of 4 images draw what 1 process of 8 draws and only
    # the rounding of the summed gradients differs

    two = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    loss2 = [h["train_loss"] for h in two["history"]]
    loss1 = [h["train_loss"] for h in one["history"]]
    assert len(loss1) == 3 and loss1[0] != loss1[-1]
    np.testing.assert_allclose(loss2, loss1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([h["val_loss"] for h in two["history"]], [h["val_loss"] for h in one["history"]],
                               rtol=1e-5, atol=1e-6)
    assert [h["lr"] for h in two["history"]] == [h["lr"] for h in one["history"]]
    for k in one["model"]:
        torch.testing.assert_close(two["model"][k], one["model"][k], rtol=1e-4, atol=1e-5)


def test_batch_size_must_split_across_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    train, _ = _tiny_sets()
    with pytest.raises(ValueError, match="no full batch"):
        fit(_tiny_net(), train, None, tmp_path, TrainConfig(batch_size=64, progress=False), resume=False)


def _noise(x):
    """A per-sample random transform, run in the loader's worker processes (seeded by the loader)."""
    return (x.float() + 20 * torch.rand(1)).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_equals_uninterrupted_with_loader_workers(tmp_path, monkeypatch, num_workers):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    data = write_tree(tmp_path / "data", per_class=4, val_per_class=1, size=(56, 56))
    cfg = dict(batch_size=4, lr=0.02, schedule="constant", progress=False, threads=1, snapshot_epochs=(),
               num_workers=num_workers)

    def run(out, epochs, resume):
        train = zdata.ImageDataset(data / "train", size=56, transform=_noise)
        return fit(_tiny_net(), train, None, out, TrainConfig(epochs=epochs, **cfg), resume=resume,
                   augment=_tiny_augment())

    run(tmp_path / "whole", 3, False)
    run(tmp_path / "cut", 1, False)   # stops after epoch 1, as a killed run's checkpoint does
    run(tmp_path / "cut", 3, True)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    same_history(a["history"], b["history"])


# --------------------------------------------------------------------------------------------------------------
# 4. an unreadable file does not stop training

@pytest.mark.parametrize("num_workers", [0, 1])
def test_fit_lists_unreadable_and_vanished_files_whatever_the_workers(tmp_path, monkeypatch, num_workers):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    data = write_tree(tmp_path / "data", per_class=3, val_per_class=2, size=(56, 56))
    corrupt = data / "train" / "c1" / "1.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    train = zdata.ImageDataset(data / "train", size=56)
    val = zdata.ImageDataset(data / "val", size=56)
    gone, gone_val = data / "train" / "c2" / "0.jpg", data / "val" / "c0" / "1.jpg"
    gone.unlink()  # listed, then deleted before it is read
    gone_val.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = fit(_tiny_net(), train, val, tmp_path / "run",
                      TrainConfig(epochs=2, batch_size=2, progress=False, threads=1, snapshot_epochs=(),
                                  num_workers=num_workers), resume=False)
    assert len(history) == 2 and all(np.isfinite(h["train_loss"]) for h in history)
    assert sorted(train.skipped) == sorted([str(corrupt), str(gone)])  # once each, not once per epoch
    assert val.skipped == [str(gone_val)]


@pytest.mark.parametrize("preload", [True, False])
def test_training_skips_an_unreadable_file(tmp_path, preload):
    from zf.edge.tasks import train as train_task

    data = write_tree(tmp_path / "data", per_class=4, val_per_class=1)
    bad = data / "train" / "c1" / "zz_corrupt.jpg"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    out = tmp_path / "run"
    cfg = compose([f"data.root={data}", "train.epochs=2", f"train.preload={str(preload).lower()}",
                   "train.snapshot_epochs=[]", *[o for o in TINY if not o.startswith("train.preload")]], out)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        train_task(cfg)
    assert any(str(bad) in str(w.message) for w in rec)
    assert (out / "skipped.txt").read_text().split() == [str(bad)]
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and all(np.isfinite(h["train_loss"]) for h in history)


# --------------------------------------------------------------------------------------------------------------
# 6. configs compose; a tiny run writes everything; export loads

@pytest.mark.parametrize("experiment", [None, "default_model"])  # other experiments: tests/test_experiments_*.py
def test_config_composes(experiment, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    cfg = compose([f"experiment={experiment}"] if experiment else [], tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert set(TrainConfig.__dataclass_fields__) <= set(resolved["train"])  # no knob left at its code default
    assert resolved["train"]["seed"] == resolved["seed"]
    TrainConfig(**resolved["train"])
    assert resolved["paths"]["output_dir"] == str(tmp_path)
    if experiment is None:  # the paper's recipe (section 3)
        t = resolved["train"]
        assert (t["optimizer"], t["lr"], t["momentum"], t["batch_size"], t["clip_radius"], t["epochs"]) == \
            ("sgd", 0.01, 0.9, 128, 0.1, 70)
        assert resolved["model"]["arch"]["dropout"] == 0.5 and resolved["model"]["checkpoint"] is None
        assert (resolved["data"]["resize"], resolved["data"]["size"], t["augment"], t["flip"]) == \
            (256, 224, "random_crop", True)
    if experiment == "default_model":
        assert resolved["export"] == str(ROOT / "zf" / "weights" / "zfnet_imagenette.pt")
        assert resolved["train"]["sizes"][max(resolved["train"]["sizes"])] == resolved["data"]["size"]


def test_tiny_run_writes_outputs_and_exports(tmp_path, monkeypatch):
    from zf.edge.tasks import train as train_task

    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    data = write_tree(tmp_path / "data", per_class=4, val_per_class=2)
    out, exported = tmp_path / "run", tmp_path / "m.pt"
    # the shipped model's experiment, tiny; export redirected so the shipped checkpoint is never touched
    cfg = compose(["experiment=default_model", f"data.root={data}", "train.epochs=1", f"export={exported}",
                   "train.sizes={1: 56}", *TINY], out)
    best = train_task(cfg)
    assert 0.0 <= best <= 1.0
    for f in ("history.json", "curves.png", "checkpoints/last.pt", "checkpoints/features_epoch001.pt"):
        assert (out / f).is_file(), f
    last = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["meta"]["classes"] == ["c0", "c1", "c2"] and last["meta"]["input_size"] == 56
    assert last["config"]["train"]["optimizer"] == "adamw"
    for k, w in last["model"].items():  # feature scale clipping holds after the last update
        if k.startswith("features.") and k.endswith("weight") and w.ndim == 4:
            assert w.pow(2).mean(dim=(1, 2, 3)).sqrt().max() <= 0.1 + 1e-6

    blob = torch.load(exported, map_location="cpu", weights_only=True)
    assert "optimizer" not in blob
    assert all(v.dtype == torch.float16 for v in blob["model"].values() if v.is_floating_point())
    assert exported.stat().st_size < (out / "checkpoints" / "last.pt").stat().st_size
    shipped = load_zfnet(exported)
    trained = zfnet(**last["arch"]).eval()
    trained.load_state_dict(last["model"])
    assert shipped.meta["classes"] == ["c0", "c1", "c2"]
    x = zdata.Normalize()(torch.randint(0, 256, (4, 3, 56, 56), dtype=torch.uint8))
    with torch.no_grad():
        a, b = shipped(x), trained(x)
    torch.testing.assert_close(a, b, rtol=1e-2, atol=2e-3 * b.abs().max().item() + 1e-3)
