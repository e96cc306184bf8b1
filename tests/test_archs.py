"""The networks people use (timm, torchvision), random weights, small inputs: every one lists its layers, mines two
layers and projects them, and every projection a run stores equals the whole-image projection of the same row for
each method.  The architectures cover each mechanism: timm's fused ``BatchNormAct2d`` (layer paths inside it),
``Conv2dSame`` (tf_* models: a crop would pad differently), squeeze-excitation gates, ReLU6 / SiLU / Hardswish /
GELU, LayerNorm2d (ConvNeXt), dense concatenation, inception branches, plain residual blocks.  Also: receptive fields
of the one-channel copy equal the full copy's, ``crop_check``'s dynamic check catches a size-dependent module no
static list names, the image-dependence statistic (1.0 for a max-pool-free deconvnet, well below on VGG-16), and the
mining cache served by a pass over more layers without reading an image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from zf.data import ImageDataset, ImageSource, Normalize
from zf.mining.mine import mine
from zf.net.listing import list_layers
from zf.projection.graph import _CROP_OK, crop_check, project_graph
from zf.projection.rules import ProjectionOptions
from zf.views.visualize import unit_views

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

SIZE = 64


def _tv(name):
    def build():
        if name == "googlenet":
            return torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
        return getattr(torchvision.models, name)(weights=None)
    return build


def _timm(name):
    return lambda: timm.create_model(name, pretrained=False)


# (builder, two layers, whether the first layer's projections may use crops at 64 px: None = not asserted)
ARCHS = {
    "tf_efficientnet_lite0": (_timm("tf_efficientnet_lite0"), ["bn1.act", "blocks.2"], False),  # Conv2dSame
    "tf_efficientnet_b0": (_timm("tf_efficientnet_b0"), ["blocks.1", "blocks.3"], False),
    "efficientnet_b0": (_timm("efficientnet_b0"), ["bn1.act", "blocks.2"], True),  # stem before any SE gate
    "mobilenetv3_small_100": (_timm("mobilenetv3_small_100"), ["bn1.act", "blocks.1"], True),
    "regnety_002": (_timm("regnety_002"), ["stem", "s1"], True),
    "convnext_atto": (_timm("convnext_atto"), ["stem", "stages.1"], None),
    "resnet18": (_timm("resnet18"), ["act1", "layer2"], True),
    "densenet121": (_timm("densenet121"), ["features.denseblock1", "features.transition1"], None),
    "tv_mobilenet_v3_small": (_tv("mobilenet_v3_small"), ["features.1", "features.3"], None),
    "tv_googlenet": (_tv("googlenet"), ["maxpool2", "inception3a"], None),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return ImageDataset(root, size=SIZE)


SLOW = {"densenet121"}  # 554 modules to measure: a minute on a loaded 2-core machine (run with -m slow)


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in ARCHS])
def test_lists_mines_and_projects_exactly(arch, images):
    build, layers, crops = ARCHS[arch]
    torch.manual_seed(0)
    model = build().eval()
    rows = {r.path: r for r in list_layers(model, SIZE)}
    for layer in layers:
        assert layer in rows and rows[layer].rf_size[0] >= 1
    tables = mine(model, images, layers=layers, k=2, batch_size=4, progress=False)
    source = ImageSource(images, Normalize(), {"size": SIZE})
    for layer in layers:
        table = tables[layer]
        for method in ("deconvnet", "guided", "gradient"):
            _, auto = unit_views(model, source, table, layer, [0, 1], ProjectionOptions(method, crop="auto"))
            _, whole = unit_views(model, source, table, layer, [0, 1], ProjectionOptions(method, crop="off"))
            peak = np.abs(whole).max()
            assert peak > 0
            np.testing.assert_allclose(auto, whole, rtol=0, atol=1e-5 * peak)
    if crops is not None:
        assert _CROP_OK[model][(layers[0], SIZE, SIZE)] is crops


@pytest.mark.slow
def test_one_channel_fields_equal_the_full_copy():
    from zf.net.modules import minable_layers
    from zf.net.linearised import linearised, one_channel
    from zf.net.receptive import _fields

    for build in (_timm("tf_efficientnet_lite0"), _tv("googlenet")):
        model = build().eval()
        paths = [p for p, _ in minable_layers(model, 32)][::3]
        assert _fields(one_channel(linearised(model)), (32, 32), paths) == _fields(linearised(model), (32, 32),
                                                                                     paths)


def test_forced_crops_are_wrong_under_conv2d_same_and_auto_refuses_them(images):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    rows = torch.tensor([[0, 0, 8, 8]])
    crop = project_graph(model, x, rows, "bn1.act", "deconvnet", "one", crop=True)
    whole = project_graph(model, x, rows, "bn1.act", "deconvnet", "one", crop="off")
    assert whole.abs().max() > 0
    assert (crop - whole).abs().max() > 1e-2 * whole.abs().max()  # the bug the check prevents
    auto = project_graph(model, x, rows, "bn1.act", "deconvnet", "one", crop="auto")
    torch.testing.assert_close(auto, whole, rtol=0, atol=0)


class _PadBySize(nn.Module):
    """A 3x3 stride-2 conv padded by an amount computed from its input's size (as timm's Conv2dSame does), under a
    name no static list knows."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, 2)

    def forward(self, x):
        p = x.shape[-1] // 32  # 2 px on the whole 64 px image, none on a crop of the field
        return F.relu(self.conv(F.pad(x, (p, p, p, p))))


def test_crop_check_compares_where_no_static_rule_applies(capsys):
    from zf.net.receptive import graph_receptive_fields

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), _PadBySize(), nn.Conv2d(4, 4, 3, padding=1))
    x = torch.randn(1, 3, 64, 64)
    rf = graph_receptive_fields(net, (64, 64), ["3"])["3"]
    assert crop_check(net, x, "3", rf) is False
    # the crop's map is smaller than the whole image's (the padding moved the grid), or its projection differs
    assert "projections of 3 at 64x64: whole images (a crop's" in capsys.readouterr().out
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, padding=1))
    rf = graph_receptive_fields(plain, (64, 64), ["2"])["2"]
    assert crop_check(plain, x, "2", rf) is True
    assert "receptive-field crops" in capsys.readouterr().out


def test_image_dependence_is_one_without_switches():
    from zf.projection.api import project_windows
    from zf.projection.dependence import image_dependence, max_pool_before

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(5, 3, 48, 48)
    rows = torch.tensor([[i, 3, 5 + i, 9 - i] for i in range(5)])  # interior units, five images
    win, _ = project_windows(net, x, rows, "5", "deconvnet", crop="off")
    assert image_dependence(win[None].numpy()) == pytest.approx(1.0, abs=1e-6)
    gwin, _ = project_windows(net, x, rows, "5", "guided", crop="off")
    assert image_dependence(gwin[None].numpy()) < 0.9
    assert not max_pool_before(net, "5", 48)
    assert max_pool_before(torchvision.models.resnet18(), "layer1", 64)
    # only the pools that run before the layer count, not those after it in the same forward
    assert not max_pool_before(torchvision.models.resnet18(), "relu", 64)
    vgg = torchvision.models.vgg11()
    assert [max_pool_before(vgg, p, 64) for p in ("features.1", "features.3")] == [False, True]
    # and how many convolutions run up to the layer: at the first, a projection is the unit's filter (no warning)
    from zf.projection.dependence import dependence_warning, reverse_context
    assert [reverse_context(vgg, p, 64) for p in ("features.1", "features.3", "features.4")] == \
        [(False, 1), (True, 2), (True, 2)]
    assert dependence_warning("features.1", "deconvnet", 1.0, 0.95, False, 1) is None
    assert "no max pool" in dependence_warning("features.4", "deconvnet", 1.0, 0.95, False, 2)
    assert dependence_warning("features.4", "guided", 0.5, 0.95, True, 2) is None


def test_image_dependence_of_vgg16_deconvnet_is_well_below_one(shared_models, imagenette_val):
    from zf.projection.api import activations, project_windows
    from zf.projection.dependence import image_dependence
    from zf.net.models import vgg16

    model = vgg16(weights=shared_models / "vgg16_imagenet_features.pth").eval()
    ds = ImageDataset(imagenette_val, size=96, limit=4, subset_seed=0)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None] * 255
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None] * 255
    x = torch.stack([(ds[i][0].float() - mean) / std for i in range(len(ds))])
    acts = activations(model, x, "conv4_3")
    vals = []
    for unit in (0, 1, 2, 3):
        a = acts[:, unit].flatten(1)
        pos = a.argmax(1)
        w = acts.shape[-1]
        rows = torch.stack([torch.arange(len(x)), torch.full_like(pos, unit), pos // w, pos % w], 1)
        win, _ = project_windows(model, x, rows, "conv4_3", "deconvnet")
        vals.append(win.numpy())
    dep = image_dependence(np.stack(vals))
    assert dep < 0.5


def test_cache_serves_a_subset_of_its_layers_without_reading_images(tmp_path, images, monkeypatch):
    from zf.mining.cache import mine_cached

    model = timm.create_model("resnet18", pretrained=False).eval()
    spec = {"size": SIZE}
    first, folder = mine_cached(model, images, ["layer1", "layer2"], 2, tmp_path, spec, batch_size=4,
                                progress=False)
    reads = []
    orig = type(images).__getitem__
    monkeypatch.setattr(type(images), "__getitem__", lambda self, i: reads.append(i) or orig(self, i))
    again, folder2 = mine_cached(model, images, ["layer2"], 2, tmp_path, spec, batch_size=4, progress=False)
    assert reads == [] and folder2 == folder
    np.testing.assert_array_equal(again["layer2"].activation, first["layer2"].activation)
    _, folder3 = mine_cached(model, images, ["layer3"], 2, tmp_path, spec, batch_size=4, progress=False)
    assert reads and folder3 != folder  # a layer the pass did not mine: a new pass
