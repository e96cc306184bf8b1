"""The sanity check of Adebayo et al. (``zf.experiments.sanity``, ``experiment=sanity``): randomisation touches
exactly the layers it names, the cascade runs top-down and cumulatively, the gradient's similarities on a linear net
equal what its closed form gives (the transposed linear map from ``torch.autograd.functional.jacobian``, the
measures from scipy), SSIM equals scikit-image's, and the experiment runs end to end on a stack and a graph model."""
from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from zf.experiments import sanity as S
from zf.mining.table import TopK

ROOT = Path(__file__).resolve().parents[1]


class _Stack(nn.Module):
    """features -> mean over positions -> classifier (a deep copy stays self-contained)."""

    def __init__(self, layers, head):
        super().__init__()
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Sequential(OrderedDict(head))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.mean((2, 3))) if len(self.classifier) else x


def small_stack(seed=0, bn=True):
    """A features stack: conv1-relu-pool-(bn)-conv2-relu-conv3-relu, and a classifier."""
    torch.manual_seed(seed)
    layers = [("conv1", nn.Conv2d(3, 4, 3, 1, 1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
              ("bn1", nn.BatchNorm2d(4)), ("conv2", nn.Conv2d(4, 6, 3, 1, 1)), ("relu2", nn.ReLU()),
              ("conv3", nn.Conv2d(6, 5, 3, 1, 1)), ("relu3", nn.ReLU())]
    m = _Stack([l for l in layers if bn or l[0] != "bn1"], [("fc6", nn.Linear(5, 2))])
    if bn:
        with torch.no_grad():  # running statistics that are not the defaults, so a reset would show
            m.features.bn1.running_mean.fill_(0.3)
            m.features.bn1.running_var.fill_(2.0)
    return m.eval()


def _bytes(t):
    return t.detach().cpu().contiguous().numpy().tobytes()


@pytest.mark.parametrize("init", S.INITS)
def test_randomising_a_layer_changes_exactly_its_parameters(init):
    m = small_stack()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    S.randomize_(m, ["features.conv2"], init=init, seed=3)
    after = m.state_dict()
    for k in before:
        same = _bytes(before[k]) == _bytes(after[k])
        assert same == (not k.startswith("features.conv2.")), k  # conv2's weight and bias change, nothing else
    if init == "normal":
        assert float(after["features.conv2.bias"].abs().max()) == 0.0
        assert 0.005 < float(after["features.conv2.weight"].std()) < 0.02  # N(0, 1e-2)
    # a layer's draw depends only on the seed and its path: the same alone or together with another layer
    m2 = small_stack()
    S.randomize_(m2, ["features.conv3", "features.conv2"], init=init, seed=3)
    assert _bytes(m2.features.conv2.weight) == _bytes(m.features.conv2.weight)
    S.randomize_(m2, ["features.conv2"], init=init, seed=4)
    assert _bytes(m2.features.conv2.weight) != _bytes(m.features.conv2.weight)


def test_weighted_layers_and_cascade_are_top_down():
    m = small_stack()
    layers = S.weighted_layers(m, "conv3", "conv", input_size=8)
    # forward order, batch norm (1-D weight) and the classifier (after the target) excluded
    assert layers == [("conv1", "features.conv1"), ("conv2", "features.conv2"), ("conv3", "features.conv3")]
    assert S.weighted_layers(m, "relu2", "relu", input_size=8) == layers[:2]
    steps = S.cascade_steps(layers)
    assert [[n for n, _ in s] for s in steps] == [["conv3"], ["conv3", "conv2"], ["conv3", "conv2", "conv1"]]
    assert S.target_layer(m, "relu3", "conv").name == "conv3" and S.target_layer(m, "relu3", "relu").name == "relu3"


class _Images:
    """A data set of fixed uint8 images, as ``zf.data.ImageDataset`` serves them."""

    def __init__(self, images):
        self.images, self.size = images, images.shape[-1]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0, i


def _table(rows, size, k):
    """A TopK of ``rows`` [(unit, [(image, y, x), ...k])] with boxes of a ``size`` px field centred on y, x."""
    h = size // 2
    units = np.array([u for u, _ in rows])
    img = np.array([[r[0] for r in rr] for _, rr in rows])
    ys, xs = np.array([[r[1] for r in rr] for _, rr in rows]), np.array([[r[2] for r in rr] for _, rr in rows])
    box = np.stack([ys - h, ys + h + 1, xs - h, xs + h + 1], -1)
    return TopK(units, np.ones(img.shape, np.float32), img, ys, xs, box)


def test_cascade_steps_equal_randomising_from_scratch():
    m = small_stack(bn=False)
    torch.manual_seed(1)
    data = _Images(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    table = _table([(1, [(0, 3, 3), (1, 4, 2)]), (4, [(1, 5, 5), (0, 2, 6)])], 11, 2)  # conv3: 10 px fields
    prep = S.prepare_rows(data, table, [1, 4])
    layers = S.weighted_layers(m, "conv3", "conv", 16)
    steps = S.sanity_projections(m, prep, "features.conv3", layers, methods=["guided", "deconvnet"], seed=5)
    assert [(s["mode"], s["step"], s["down_to"]) for s in steps] == [
        ("trained", 0, ""), ("cascade", 1, "conv3"), ("cascade", 2, "conv2"), ("cascade", 3, "conv1"),
        ("independent", 1, "conv3"), ("independent", 2, "conv2"), ("independent", 3, "conv1")]
    for s in steps[1:]:
        ref = S.randomize_(copy.deepcopy(m), [f"features.{n}" for n in s["randomised"]], seed=5)
        for meth in ("guided", "deconvnet"):  # one shared forward for both methods = each projected alone
            np.testing.assert_array_equal(s["projections"][meth], S.project_rows(ref, prep, "features.conv3", meth))
    np.testing.assert_array_equal(steps[0]["projections"]["guided"],
                                  S.project_rows(m, prep, "features.conv3", "guided"))  # model left as trained
    assert not np.array_equal(steps[1]["projections"]["guided"], steps[0]["projections"]["guided"])


def test_ssim_equals_scikit_image():
    # scikit-image 0.26 structural_similarity(a, b, gaussian_weights=True, use_sample_covariance=False,
    # data_range=1.0, sigma=1.5) on these arrays (computed once with scikit-image, which zf does not depend on)
    rng = np.random.default_rng(0)
    a = rng.random((20, 23))
    b = np.clip(a + 0.3 * rng.standard_normal((20, 23)), 0, 1)
    assert S.ssim(a, b) == pytest.approx(0.67482689561279, abs=1e-12)
    a = rng.random((40, 40))
    assert S.ssim(a, a ** 2) == pytest.approx(0.8826195330636709, abs=1e-12)
    assert S.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    # constant maps: the formula reduces to (2 a b + C1) / (a^2 + b^2 + C1)
    c1 = 0.01 ** 2
    assert S.ssim(np.full((9, 9), 0.2), np.full((9, 9), 0.7)) == pytest.approx((0.28 + c1) / (0.53 + c1), abs=1e-12)


def linear_net(seed=0):
    """Two 7x7 convolutions, no ReLU: the gradient of a unit is a fixed linear map of nothing but the weights."""
    torch.manual_seed(seed)
    return _Stack([("conv1", nn.Conv2d(3, 4, 7, 1, 3)), ("conv2", nn.Conv2d(4, 3, 7, 1, 3))], []).eval()


def _closed_form(w1, b1, w2, b2, c, y, x, size, half):
    """The gradient of conv2's unit (c, y, x) with respect to the input: row (c, y, x) of the Jacobian of the linear
    map x -> conv2(conv1(x)), cut to the field's box [y - half, y + half] (zero outside the image)."""
    f = lambda img: torch.nn.functional.conv2d(torch.nn.functional.conv2d(img, w1, b1, padding=3), w2, b2,  # noqa
                                               padding=3)[0, c, y, x]
    g = torch.autograd.functional.jacobian(f, torch.zeros(1, 3, size, size, dtype=torch.float64))[0]
    out = torch.zeros(3, 2 * half + 1, 2 * half + 1, dtype=torch.float64)
    y0, x0 = y - half, x - half
    ya, yb, xa, xb = max(y0, 0), min(y + half + 1, size), max(x0, 0), min(x + half + 1, size)
    out[:, ya - y0:yb - y0, xa - x0:xb - x0] = g[:, ya:yb, xa:xb]
    return out.numpy()


def test_gradient_similarity_after_full_randomisation_is_the_closed_form(tmp_path):
    size, half = 24, 6  # two 7x7 convolutions: 13 px fields
    m = linear_net()
    torch.manual_seed(2)
    data = _Images(torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8))
    rows = [(0, [(0, 8, 9), (1, 12, 12), (0, 3, 17)]), (2, [(1, 15, 6), (0, 10, 4), (1, 20, 20)])]
    table = _table(rows, 2 * half + 1, 3)
    S.run(m, data, table, "conv2", tmp_path, units=[0, 2], methods=["gradient", "deconvnet"], modes=["cascade"],
          seed=7, show_units=2)
    got = {(int(r["unit"]), int(r["rank"])): r for r in csv.DictReader(open(tmp_path / "sanity.csv"))
           if r["method"] == "gradient" and r["mode"] == "cascade" and r["step"] == "2"}
    assert len(got) == 6 and {r["down_to"] for r in got.values()} == {"conv1"}
    rnd = S.randomize_(copy.deepcopy(m), ["features.conv1", "features.conv2"], seed=7)  # what step 2 holds
    p0 = {k: v.detach().double() for k, v in m.state_dict().items()}
    p1 = {k: v.detach().double() for k, v in rnd.state_dict().items()}
    assert not torch.equal(p0["features.conv1.weight"], p1["features.conv1.weight"])
    for u, rr in rows:
        for r, (_, y, x) in enumerate(rr):
            a = _closed_form(p0["features.conv1.weight"], p0["features.conv1.bias"], p0["features.conv2.weight"],
                             p0["features.conv2.bias"], u, y, x, size, half)
            b = _closed_form(p1["features.conv1.weight"], p1["features.conv1.bias"], p1["features.conv2.weight"],
                             p1["features.conv2.bias"], u, y, x, size, half)
            ma, mb = np.abs(a).sum(0), np.abs(b).sum(0)
            rho = spearmanr(ma.ravel(), mb.ravel())[0]
            assert float(got[u, r]["spearman_abs"]) == pytest.approx(rho, abs=1e-6)
            assert float(got[u, r]["ssim"]) == pytest.approx(S.ssim(S.normalise_map(ma), S.normalise_map(mb)),
                                                             abs=1e-5)
            assert -0.5 < rho < 0.9  # the weights changed, so the map did
    summary = list(csv.DictReader(open(tmp_path / "sanity_summary.csv")))
    assert len(summary) == 2 * 3  # two methods x (trained, two cascade steps)
    trained = [r for r in summary if r["mode"] == "trained"]
    assert all(float(r["median_spearman_abs"]) == pytest.approx(1.0) for r in trained)
    assert (tmp_path / "figures" / "sanity_cascade_conv2.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "sanity_curves_conv2.png").is_file()
    z = np.load(tmp_path / "sanity.npz")
    assert z["gradient"].shape == (3, 2, 3, 3, 13, 13)  # steps, shown units, k, colour, field
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["randomised_layers"] == ["conv1", "conv2"] and s["layer"] == "conv2"


def _tiny_checkpoint(path):
    from zf.net.models import zfnet

    torch.manual_seed(0)
    m = zfnet(num_classes=3, width=0.0625, fc=[64, 64])
    torch.save({"model": m.state_dict(), "arch": m.arch, "epoch": 1,
                "meta": {"classes": ["c0", "c1", "c2"], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                         "input_size": 64}}, path)
    return path


def test_sanity_runs_end_to_end_through_run_py(tmp_path):
    import imagetree

    data = imagetree.write_tree(tmp_path / "data", per_class=1, val_per_class=3, size=(80, 88))
    ck = _tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), "experiment=sanity", "layer=2", "k=2",
                        f"model.checkpoint={ck}", f"data.root={data}", "data.size=64", "mine_layers=[]",
                        "sanity.n_units=2", "sanity.show_units=1", "sanity.modes=[cascade]", "logger=none",
                        "progress=false", "num_workers=0", "batch_size=8", f"paths.cache_dir={tmp_path / 'c'}",
                        f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["layer"] == "conv2" and s["mined_layer"] == "relu2" and s["randomised_layers"] == ["conv1", "conv2"]
    rows = list(csv.DictReader(open(out / "sanity.csv")))
    assert len(rows) == 3 * 3 * 2 * 2  # methods x (trained + 2 cascade steps) x units x k
    assert (out / "figures" / "sanity_cascade_conv2.png").is_file()
    from hydra import compose, initialize_config_dir

    from zf.errors import ConfigError
    from zf.edge.tasks import dispatch

    for opt, msg in (("sanity.init=xavier", "sanity.init='xavier'"), ("sanity.modes=[all]", "sanity.modes")):
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("run", ["experiment=sanity", opt, f"model.checkpoint={ck}", f"data.root={data}",
                                  "logger=none", f"paths.output_dir={tmp_path / 'bad'}",
                                  f"paths.cache_dir={tmp_path / 'bad_cache'}"])
        with pytest.raises(ConfigError, match=msg.replace("[", r"\[")):
            dispatch(cfg)
        assert not (tmp_path / "bad_cache").exists()  # refused before the mining pass


class _Residual(nn.Module):
    """Not a features stack: a stem and a residual block with functional ReLUs (projected by zf.graph)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.block = nn.Sequential(OrderedDict([("a", nn.Conv2d(4, 4, 3, 1, 1)), ("relu", nn.ReLU()),
                                                ("b", nn.Conv2d(4, 4, 3, 1, 1))]))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.nn.functional.relu(x + self.block(x))
        return self.head(x.mean((2, 3)))


def test_sanity_on_a_graph_model(tmp_path):
    """Layers by module path, projected through zf.graph: every method changes under randomisation, and the
    layers are the graph's weighted modules in forward order."""
    torch.manual_seed(0)
    m = _Residual().eval()
    data = _Images(torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8))
    table = _table([(1, [(0, 6, 7), (1, 10, 12)]), (3, [(1, 9, 9), (0, 12, 5)])], 7, 2)  # three 3x3: 7 px
    assert S.weighted_layers(m, "block", input_size=20) == [("stem", "stem"), ("block.a", "block.a"),
                                                            ("block.b", "block.b")]
    S.run(m, data, table, "block", tmp_path, units=[1, 3], modes=["cascade", "independent"], show_units=1)
    rows = list(csv.DictReader(open(tmp_path / "sanity_summary.csv")))
    assert [(r["mode"], r["down_to"]) for r in rows if r["method"] == "gradient"] == [
        ("trained", ""), ("cascade", "block.b"), ("cascade", "block.a"), ("cascade", "stem"),
        ("independent", "block.b"), ("independent", "block.a"), ("independent", "stem")]
    for r in rows:
        rho = float(r["median_spearman_abs"])
        assert rho == pytest.approx(1.0) if r["mode"] == "trained" else rho < 0.999, r
    assert (tmp_path / "figures" / "sanity_independent_block.png").is_file()
