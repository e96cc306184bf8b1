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
from zf.net.models import zfnet

ROOT = Path(__file__).resolve().parents[1]
# the paper's Table 1 (Sec. 4.3), layer 5 and layer 7 means, copied here rather than read from the module
PAPER_TABLE1_MEANS = {"right_eye": (0.067, 0.069), "left_eye": (0.069, 0.068), "nose": (0.079, 0.069),
                      "random": (0.107, 0.073)}


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


def _reference_features(model, x):
    """pool5 and relu7 of ``x`` read with forward hooks written here (not zf.experiments.features)."""
    got = {}
    hooks = [model.features.pool5.register_forward_hook(lambda m, i, o: got.__setitem__("pool5", o.flatten(1).clone())),
             model.classifier.relu7.register_forward_hook(lambda m, i, o: got.__setitem__("relu7", o.clone()))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return got


def _reference_delta(a, b):
    """Mean over image pairs i < j of the fraction of features whose change a - b differs in sign (numpy)."""
    s = np.sign((a - b).numpy())
    n = len(s)
    return np.mean([np.mean(s[i] != s[j]) for i in range(n) for j in range(i + 1, n)])


def test_correspondence_matches_a_reference_written_here():
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.125).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 224, 224, generator=g)
    # centres (x, y); a 24 px square centred there starts at (x - 12, y - 12); the second one is moved inside the
    # image at its right edge (x0 = 224 - 24 = 200)
    part = np.array([[100, 60], [220, 30], [50, 150]])
    corners = [(48, 88), (18, 200), (138, 38)]   # (y0, x0), by hand
    res = C.correspondence(model, x, {"p": part}, size=24, n_random=2, jitter=0, seed=3)
    base = _reference_features(model, x)
    occ = x.clone()
    for i, (y0, x0) in enumerate(corners):
        occ[i, :, y0:y0 + 24, x0:x0 + 24] = 0
    feats = _reference_features(model, occ)
    for n in ("pool5", "relu7"):
        want = _reference_delta(base[n], feats[n])
        assert 0.05 < want < 0.95   # a case where the signs really differ between images
        assert res["rows"]["p"][n]["mean"] == pytest.approx(want, abs=1e-6)
    # the random control: one location per draw, the same in every image, inside the image
    rc = res["random_centres"]
    assert rc.shape == (2, 2) and (rc >= 12).all() and (rc <= 224 - 12).all()
    for n in ("pool5", "relu7"):
        want = []
        for cx, cy in rc:
            y0, x0 = int(np.round(cy - 12)), int(np.round(cx - 12))
            occ = x.clone()
            occ[:, :, y0:y0 + 24, x0:x0 + 24] = 0
            want.append(_reference_delta(base[n], _reference_features(model, occ)[n]))
        np.testing.assert_allclose(res["rows"]["random"][n]["values"], want, atol=1e-6)
        assert res["rows"]["random"][n]["mean"] == pytest.approx(np.mean(want), abs=1e-6)
        assert res["rows"]["random"][n]["std"] == pytest.approx(np.std(want), abs=1e-6)


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
    # every grid cell equals a direct evaluation of the image occluded there (0 = the data mean), written here
    from zf.projection.api import activations

    for i, y in enumerate([0, 56, 112]):
        for j, xx in enumerate([0, 56, 112]):
            occ = x.clone()
            occ[:, y:y + 112, xx:xx + 112] = 0
            with torch.no_grad():
                p = torch.softmax(model(occ[None]), 1)[0].numpy()
            np.testing.assert_allclose(res["probs"][i, j], p, rtol=1e-4, atol=1e-6)
            assert res["p_true"][i, j] == pytest.approx(p[2], rel=1e-4, abs=1e-7)
            assert res["top_label"][i, j] == p.argmax()
            a = activations(model, occ[None], 5)[0, res["unit"]].sum().item()
            assert res["activation"][i, j] == pytest.approx(a, rel=1e-4)
    # the unit is the map holding the largest relu5 activation
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


def run_experiment(name, tmp_path, overrides, data):
    from hydra import compose, initialize_config_dir

    from zf.edge.tasks import dispatch

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=[f"experiment={name}", "model.checkpoint=null", "logger=none",
                                        f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
                                        f"data.root={data}", "progress=false", "dpi=40"] + overrides)
    assert cfg.task._target_ == f"zf.edge.tasks.{name}"
    return dispatch(cfg)


def test_occlusion_experiment(tmp_path, imagenette):
    drop = run_experiment("occlusion", tmp_path, ["occlusion.images=[n03445777/ILSVRC2012_val_00022792.JPEG]",
                                           "occlusion.size=112", "occlusion.stride=56", "data.limit=4", "k=2",
                                           "mine_layers=[5]", "occlusion.grey=128"], imagenette)
    p = np.load(tmp_path / "p_true.npy")
    probs = np.load(tmp_path / "probs.npy").astype(np.float32)
    lab = np.load(tmp_path / "top_label.npy")
    assert p.shape == lab.shape == np.load(tmp_path / "activation.npy").shape == (1, 3, 3)
    s = json.loads((tmp_path / "occlusion.json").read_text())
    assert s["layer"] == "relu5" and s["images"][0]["class"] == "golf ball" and s["xs"] == [0, 56, 112]
    label = s["classes"].index("n03445777")   # golf ball
    assert s["images"][0]["label"] == label
    # p(true) is the golf-ball column of the stored probabilities (float16), the top label their argmax
    np.testing.assert_allclose(p[0], probs[0, ..., label], atol=1e-3)
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-2)
    assert (np.take_along_axis(probs, lab[..., None], -1)[..., 0] >= probs.max(-1) - 1e-3).all()
    # grey 128 in normalised units, per channel, from the ImageNet mean and std
    np.testing.assert_allclose(s["fill_normalised"], [(128 / 255 - m) / sd for m, sd in
                                                      [(0.485, 0.229), (0.456, 0.224), (0.406, 0.225)]], rtol=1e-5)
    im = s["images"][0]
    iy, ix = np.unravel_index(np.argmin(p[0]), (3, 3))
    assert im["min_p_true"] == pytest.approx(p[0].min()) and im["min_p_true_corner"] == [56 * iy, 56 * ix]
    assert im["labels_seen"] == sorted({s["class_names"][c] for c in lab.ravel().tolist()})
    assert drop == pytest.approx(im["base_p_true"] - p[0].min())
    assert (tmp_path / "figures" / "occlusion.png").stat().st_size > 1000


def test_invariance_experiment(tmp_path, imagenette):
    run_experiment("invariance", tmp_path, ["invariance.images=[n03028079/ILSVRC2012_val_00004912.JPEG]",
                                            "invariance.translate=[-20,20,20]", "invariance.scale=[0.5,1,0.5]",
                                            "invariance.rotate=[0,90,90]"], imagenette)
    z = np.load(tmp_path / "invariance.npz")
    np.testing.assert_allclose(z["translate_amounts"], [-20, 0, 20])
    # identity amounts: zero distance up to float noise of a different batch composition
    assert z["translate_distance_norm1"].shape == (1, 3)
    assert z["translate_distance_norm1"][0, 1] < 1e-4 * z["translate_distance_norm1"].max()
    assert z["scale_distance_relu7"][0, 1] < 1e-3 * z["scale_distance_relu7"].max()
    assert z["rotate_distance_relu7"][0, 0] < 1e-3 * z["rotate_distance_relu7"].max()
    s = json.loads((tmp_path / "invariance.json").read_text())
    assert s["layers"] == ["norm1", "relu7"]
    # the identity amounts (translate 0, scale 1, rotate 0) give the original image's p(true class)
    for kind, j in [("translate", 1), ("scale", 1), ("rotate", 0)]:
        orig = s["transforms"][kind]["p_true_original"][0]
        assert z[f"{kind}_p_true"][0, j] == pytest.approx(orig, rel=1e-4, abs=1e-6)
        assert s["transforms"][kind]["mean_p_true"] == pytest.approx(z[f"{kind}_p_true"].mean(), rel=1e-6)
    assert s["transforms"]["rotate"]["max_distance"]["relu7"] == pytest.approx(z["rotate_distance_relu7"].max(),
                                                                              rel=1e-6)
    assert (tmp_path / "invariance.csv").read_text().count("\n") == 1 + 3 + 2 + 2   # header + translate, scale, rotate rows
    assert (tmp_path / "figures" / "invariance.png").is_file()


def test_correspondence_experiment(tmp_path, imagenette):
    gap = run_experiment("correspondence", tmp_path, ["correspondence.n_random=2", "correspondence.jitter=0"],
                         imagenette)
    t = json.loads((tmp_path / "table1.json").read_text())
    rows = t["rows"]
    assert [r["occluded"] for r in rows] == ["right_eye", "left_eye", "nose", "random"]
    n_img = len(t["images"])
    for r in rows:
        v = t["values"][r["occluded"]]
        for n in ("pool5", "relu7"):
            assert len(v[n]["pairs"]) == n_img * (n_img - 1) // 2
            # jitter=0: a part's mean is its pairs' mean and its std theirs; the random rows' are over the 2 draws
            if r["occluded"] == "random":
                assert len(v[n]["values"]) == 2 and r[f"{n}_mean"] == pytest.approx(np.mean(v[n]["values"]))
                assert r[f"{n}_std"] == pytest.approx(np.std(v[n]["values"]))
            else:
                assert r[f"{n}_mean"] == pytest.approx(np.mean(v[n]["pairs"]))
                assert r[f"{n}_std"] == pytest.approx(np.std(v[n]["pairs"]))
        assert (r["paper_l5_mean"], r["paper_l7_mean"]) == PAPER_TABLE1_MEANS[r["occluded"]]
    parts = np.mean([r["relu7_mean"] for r in rows[:3]])
    assert gap == pytest.approx(rows[3]["relu7_mean"] - parts)
    md = (tmp_path / "table1.md").read_text()
    for r in rows:   # ours in the layer-5 column, the paper's beside it, ours in the layer-7 column
        assert (f"| {r['occluded']} | {r['pool5_mean']:.3f} +- {r['pool5_std']:.3f} | "
                f"{r['paper_l5_mean']:.3f} +- {r['paper_l5_std']:.3f} | {r['relu7_mean']:.3f} +- ") in md
    assert "| nose |" in md and "0.079 +- 0.017" in md
    assert (tmp_path / "table1.csv").read_text().count("\n") == 5
    assert (tmp_path / "figures" / "correspondence.png").is_file()


RESNET = ["model=torchvision", "model.arch_name=resnet18", "model.weights=random", "data.size=64"]


@pytest.mark.parametrize("name, overrides", [
    ("occlusion", ["occlusion.images=[n03445777/ILSVRC2012_val_00022792.JPEG]", "occlusion.layer=layer4",
                   "occlusion.size=32", "occlusion.stride=32", "occlusion.others=false"]),
    ("invariance", ["invariance.images=[n03028079/ILSVRC2012_val_00004912.JPEG]", "invariance.translate=[0,8,8]",
                    "invariance.scale=null", "invariance.rotate=null", "invariance.layers=[[layer1,relu],[layer4,relu]]"]),
    ("methods", ["layer=layer2", "mine_layers=[]", "data.limit=4", "k=2", "methods.n_units=2"]),
    ("probe", ["probe.train_images=12", "probe.val_images=6", "probe.max_iter=5"]),
])
def test_image_experiments_run_on_a_resnet(tmp_path, imagenette, name, overrides):
    """The image experiments on a network without a ``features`` stack (layers by module path), tiny: each writes
    its results, and its numbers are finite where they must be."""
    from hydra import compose, initialize_config_dir

    from zf.edge.tasks import dispatch

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=[f"experiment={name}", "logger=none", f"paths.output_dir={tmp_path}",
                                        f"paths.cache_dir={tmp_path / 'cache'}", f"data.root={imagenette}",
                                        "progress=false", "dpi=40", "num_workers=0"] + RESNET + overrides)
    value = dispatch(cfg)
    assert np.isfinite(value)
    if name == "occlusion":
        s = json.loads((tmp_path / "occlusion.json").read_text())
        assert s["layer"] == "layer4" and np.load(tmp_path / "p_true.npy").shape == (1, 2, 2)
    elif name == "invariance":
        s = json.loads((tmp_path / "invariance.json").read_text())
        assert s["layers"] == ["layer1", "layer4"] and s["transforms"]["translate"]["max_distance"]["layer4"] > 0
    elif name == "methods":
        z = np.load(tmp_path / "methods.npz")
        assert z["deconvnet"].shape[:2] == (2, 2) and not np.allclose(z["deconvnet"], z["gradient"])
    else:
        rows = json.loads((tmp_path / "probe.json").read_text())["rows"]
        assert [r["layer"] for r in rows] == ["conv1", "maxpool", "layer1", "layer2", "layer3", "layer4"]
