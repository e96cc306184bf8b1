"""The shipped checkpoint: it loads with weights_only=True, describes itself, and still has the accuracy its model card
states on a fixed slice of the Imagenette val split (so a broken checkpoint cannot land silently)."""
from __future__ import annotations

import json

import pytest
import torch

from zf.data import ImageDataset, Normalize, collate_skip, default_data_root
from zf.models import DEFAULT_CHECKPOINT, load_zfnet
from zf.train import evaluate

CARD = DEFAULT_CHECKPOINT.with_suffix(".json")
EVOLUTION = DEFAULT_CHECKPOINT.parent / "evolution"


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads(CARD.read_text())


def test_checkpoint_is_small_and_self_describing(card):
    assert DEFAULT_CHECKPOINT.stat().st_size < 20 * 2**20
    state = torch.load(DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)
    assert {"model", "arch", "meta", "epoch", "history", "config"} <= set(state)
    assert state["meta"]["classes"] == sorted(p.name for p in (default_data_root() / "val").iterdir())
    assert state["epoch"] == card["epochs"]
    assert state["history"][-1]["val_top1"] == pytest.approx(card["val_top1"], abs=1e-6)


def test_accuracy_on_a_fixed_val_slice_matches_the_model_card(card):
    model = load_zfnet()
    meta = model.meta
    data = ImageDataset(default_data_root() / "val", size=meta["input_size"], limit=card["slice"]["images"],
                        subset_seed=card["slice"]["seed"])
    loader = torch.utils.data.DataLoader(data, batch_size=100, collate_fn=collate_skip)
    got = evaluate(model, loader, Normalize(meta["mean"], meta["std"]))
    assert got["n"] == card["slice"]["images"]
    assert got["top1"] == pytest.approx(card["slice"]["top1"], abs=0.01)


def test_feature_snapshots_for_fig4_load_into_the_model(card):
    model = load_zfnet()
    files = sorted(EVOLUTION.glob("features_epoch*.pt"))
    epochs = [int(f.stem[-3:]) for f in files]
    assert epochs == [1, 2, 5, 10, 20, card["epochs"]]
    last = torch.load(files[-1], map_location="cpu", weights_only=True)
    for k, v in last["features"].items():
        torch.testing.assert_close(v.float(), model.state_dict()[k], atol=1e-2, rtol=1e-2)
    first = torch.load(files[0], map_location="cpu", weights_only=True)
    assert not torch.allclose(first["features"]["features.conv1.weight"].float(), model.features.conv1.weight)
