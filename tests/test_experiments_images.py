"""Occlusion (Fig. 7), invariance (Fig. 5) and correspondence (Table 1): exact results on toy inputs, then each
experiment config run tiny end to end on CPU (fresh weights, a few images, coarse grids)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zf.experiments import correspondence as C
from zf.experiments import invariance as I
from zf.experiments import occlusion as O
from zf.models import zfnet

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imagenette-224"
needs_data = pytest.mark.skipif(not (DATA / "val").is_dir(), reason="Imagenette val split not present")


# ---------------------------------------------------------------------------------------------------------------
# correspondence: Delta on hand-made sign vectors


def test_delta_hand_computed():
    eps = torch.tensor([[1.0, 2.0, -1.0, 3.0],     # signs + + - +
                        [1.0, -2.0, -1.0, 3.0],    # signs + - - +   : differs from row 0 in 1 of 4
                        [-1.0, -2.0, 1.0, -3.0]])  # signs - - + -   : row 0: 4 of 4, row 1: 3 of 4
    h = C.sign_hamming(eps)
    assert torch.allclose(h, torch.tensor([[0, .25, 1], [.25, 0, .75], [1, .75, 0]]))
    d, pairs = C.delta(eps)
    np.testing.assert_allclose(pairs, [0.25, 1.0, 0.75])
    assert d == pytest.approx(2.0 / 3)
    # the paper's sum over ordered pairs i != j, normalised by pairs and length, is the same number
    assert (h.sum() / (3 * 2)).item() == pytest.approx(d)


def test_delta_sign_of_zero_is_its_own_value():
    # sign(0) = 0: two unchanged features agree; an unchanged one differs from a changed one of either sign
    eps = torch.tensor([[0.0, 0.0, 5.0], [0.0, -1.0, 5.0]])
    np.testing.assert_allclose(C.delta(eps)[1], [1 / 3])
    assert C.delta(torch.zeros(4, 7))[0] == 0.0


def test_occlude_squares_centred_and_clipped():
    x = torch.ones(2, 3, 20, 20)
    y = C.occlude_squares(x, np.array([[10, 10], [1, 19]]), 4, value=0.0)
    assert (y[0, :, 8:12, 8:12] == 0).all() and y[0].sum() == 3 * (400 - 16)
    assert (y[1, :, 16:20, 0:4] == 0).all() and y[1].sum() == 3 * (400 - 16)   # moved inside at the corner


def test_correspondence_identical_images_give_zero_delta_for_parts():
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.125).eval()
    img = torch.randn(1, 3, 224, 224).repeat(3, 1, 1, 1)      # the same image three times: same change everywhere
    res = C.correspondence(model, img, {"p": np.array([[100, 100]] * 3)}, size=24, n_random=2, jitter=0)
    for n in res["layers"]:
        assert res["rows"]["p"][n]["mean"] == 0.0 and res["rows"]["random"][n]["mean"] == 0.0
    assert res["layers"] == ["pool5", "relu7"]


# ---------------------------------------------------------------------------------------------------------------
# occlusion: the grid and the sweep against a pixel-sum "network"


def test_grid_positions():
    ys, xs = O.grid_positions(224, 224, 48, 8)
    assert len(ys) == len(xs) == 23 and ys[0] == 0 and ys[-1] == 176
    ys, xs = O.grid_positions(10, 12, 4, 3)
    assert ys.tolist() == [0, 3, 6] and xs.tolist() == [0, 3, 6]
    with pytest.raises(ValueError):
        O.grid_positions(10, 10, 11, 1)


def test_occlusion_sweep_pixel_sum():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 11, 13, generator=g)
    size, stride = 4, 3
    out, ys, xs = O.occlusion_sweep(lambda b: b.sum((1, 2, 3)), img, size, stride, value=0.0, batch_size=5)
    assert ys.tolist() == [0, 3, 6] and xs.tolist() == [0, 3, 6, 9]
    assert out.shape == (3, 4)
    total = img.sum()
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            expect = total - img[:, y:y + size, x:x + size].sum()
            assert out[i, j].item() == pytest.approx(expect.item(), rel=1e-5)
    # a grey value per channel replaces the square by that value
    out2, _, _ = O.occlusion_sweep(lambda b: b.sum((1, 2, 3)), img, size, stride, value=[1.0, 2.0, 3.0])
    expect = total - img[:, :size, :size].sum() + 16 * 6
    assert out2[0, 0].item() == pytest.approx(expect.item(), rel=1e-5)


def test_occlusion_on_model_shapes_and_probabilities():
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.125).eval()
    x = torch.randn(3, 224, 224)
    res = O.occlusion(model, x, label=2, size=112, stride=56, batch_size=4)
    assert res["activation"].shape == res["p_true"].shape == res["top_label"].shape == (3, 3)
    assert res["probs"].shape == (3, 3, 10)
    np.testing.assert_allclose(res["probs"].sum(-1), 1, atol=1e-5)
    assert ((res["p_true"] >= 0) & (res["p_true"] <= 1)).all()
    # the unit is the map holding the largest relu5 activation
    from zf.deconv import activations

    a = activations(model, x[None], 5)[0]
    assert a[res["unit"]].max() == a.max() and res["base_activation"] == pytest.approx(a[res["unit"]].sum().item())


# ---------------------------------------------------------------------------------------------------------------
# invariance: transforms and identity amounts


def test_translation_shifts_pixels():
    x = torch.arange(2 * 6 * 5, dtype=torch.float32).view(2, 6, 5)
    y = I.translate_vertical(x, 2, fill=-1)
    assert torch.equal(y[:, 2:], x[:, :4]) and (y[:, :2] == -1).all()
    assert y[1, 3, 4] == x[1, 1, 4]
    z = I.translate_vertical(x, -1)
    assert torch.equal(z[:, :5], x[:, 1:]) and (z[:, 5] == 0).all()
    assert torch.equal(I.translate_vertical(x, 0), x)


def test_scale_and_rotate():
    x = torch.rand(3, 40, 40)
    assert torch.equal(I.scale(x, 1.0), x) and torch.equal(I.rotate(x, 0), x) and torch.equal(I.rotate(x, 360), x)
    s = I.scale(x, 0.5)
    assert s.shape == x.shape and (s[:, :10] == 0).all() and (s[:, :, 30:] == 0).all() and s[:, 10:30, 10:30].abs().sum() > 0
    big = I.scale(torch.ones(1, 40, 40), 2.0)
    assert big.shape == (1, 40, 40) and torch.allclose(big, torch.ones_like(big))
    r = I.rotate(torch.ones(1, 41, 41), 45)
    assert r[0, 0, 0] == 0 and r[0, 20, 20] == pytest.approx(1.0)
    # 90 degrees counter-clockwise: the top row goes to the left column
    m = torch.zeros(1, 5, 5)
    m[0, 0, 2] = 1
    assert I.rotate(m, 90)[0, 2, 0] == pytest.approx(1.0)


def test_invariance_identity_gives_zero_distance():
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.125).eval()
    x = torch.randn(2, 3, 224, 224)
    for kind, amounts in [("translate", [0, 20]), ("scale", [1.0, 0.8]), ("rotate", [0, 30])]:
        res = I.invariance(model, x, [1, 3], kind, amounts)
        assert res["layers"] == ["norm1", "relu7"]
        for n in res["layers"]:   # zero up to float noise (the batches differ from the original's)
            d = res["distance"][n]
            assert (d[:, 0] <= 1e-4 * d[:, 1]).all() and (d[:, 1] > 0).all()
        np.testing.assert_allclose(res["p_true"][:, 0], res["p_true_original"], rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# each experiment config, tiny, end to end


def run_experiment(name, tmp_path, overrides):
    from hydra import compose, initialize_config_dir

    from zf.tasks import dispatch

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=[f"experiment={name}", "model.checkpoint=null", "logger=none",
                                        f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
                                        f"data.root={DATA}", "progress=false", "dpi=40"] + overrides)
    assert cfg.task._target_ == f"zf.tasks.{name}"
    return dispatch(cfg)


@needs_data
def test_occlusion_experiment(tmp_path):
    run_experiment("occlusion", tmp_path, ["occlusion.images=[n03445777/ILSVRC2012_val_00022792.JPEG]",
                                           "occlusion.size=112", "occlusion.stride=56", "data.limit=4", "k=2",
                                           "mine_layers=[5]", "occlusion.grey=128"])
    p = np.load(tmp_path / "p_true.npy")
    assert p.shape == (1, 3, 3) and ((p >= 0) & (p <= 1)).all()
    assert np.load(tmp_path / "activation.npy").shape == (1, 3, 3)
    lab = np.load(tmp_path / "top_label.npy")
    assert lab.shape == (1, 3, 3) and lab.min() >= 0 and lab.max() < 10
    s = json.loads((tmp_path / "occlusion.json").read_text())
    assert s["layer"] == "relu5" and s["images"][0]["class"] == "golf ball" and s["xs"] == [0, 56, 112]
    assert (tmp_path / "figures" / "occlusion.png").stat().st_size > 1000


@needs_data
def test_invariance_experiment(tmp_path):
    run_experiment("invariance", tmp_path, ["invariance.images=[n03028079/ILSVRC2012_val_00004912.JPEG]",
                                            "invariance.translate=[-20,20,20]", "invariance.scale=[0.5,1,0.5]",
                                            "invariance.rotate=[0,90,90]"])
    z = np.load(tmp_path / "invariance.npz")
    np.testing.assert_allclose(z["translate_amounts"], [-20, 0, 20])
    # identity amounts: zero distance up to float noise of a different batch composition
    assert z["translate_distance_norm1"].shape == (1, 3)
    assert z["translate_distance_norm1"][0, 1] < 1e-4 * z["translate_distance_norm1"].max()
    assert z["scale_distance_relu7"][0, 1] < 1e-3 * z["scale_distance_relu7"].max()
    assert z["rotate_distance_relu7"][0, 0] < 1e-3 * z["rotate_distance_relu7"].max()
    p = z["rotate_p_true"]
    assert ((p >= 0) & (p <= 1)).all()
    s = json.loads((tmp_path / "invariance.json").read_text())
    assert s["layers"] == ["norm1", "relu7"]
    assert (tmp_path / "invariance.csv").read_text().count("\n") == 1 + 3 + 2 + 2   # header + translate, scale, rotate rows
    assert (tmp_path / "figures" / "invariance.png").is_file()


@needs_data
def test_correspondence_experiment(tmp_path):
    run_experiment("correspondence", tmp_path, ["correspondence.n_random=2", "correspondence.jitter=0"])
    rows = json.loads((tmp_path / "table1.json").read_text())["rows"]
    assert [r["occluded"] for r in rows] == ["right_eye", "left_eye", "nose", "random"]
    for r in rows:
        assert 0 <= r["pool5_mean"] <= 1 and 0 <= r["relu7_mean"] <= 1
        assert r["paper_l5_mean"] == C.PAPER_TABLE1[r["occluded"]][0]
    md = (tmp_path / "table1.md").read_text()
    assert "| nose |" in md and "0.079 +- 0.017" in md
    assert (tmp_path / "table1.csv").read_text().count("\n") == 5
    assert (tmp_path / "figures" / "correspondence.png").is_file()
