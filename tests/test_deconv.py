"""zf.projection.stack: a hand-computed tiny network, agreement with captum / autograd, crop == full image,
receptive-field containment, and the errors."""
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

from zf.net.layers import resolve_layer
from zf.net.models import alexnet, vgg16, zfnet
from zf.net.receptive import receptive_fields, unit_box
from zf.projection.api import NotInvertibleError, activations, check_invertible, project, project_windows

METHODS = ("deconvnet", "guided", "gradient")


# ---------------------------------------------------------------------------------------------------------------
# exact: a tiny net with hand-set weights


class Tiny(nn.Module):
    """conv1 2x2 (bias -1) -> relu1 -> pool1 3x3/2 (overlapping) -> conv2 2x2 -> relu2, on 1 x 6 x 6 inputs."""

    def __init__(self, w2, b2):
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(1, 1, 2), relu1=nn.ReLU(), pool1=nn.MaxPool2d(3, 2),
            conv2=nn.Conv2d(1, 1, 2), relu2=nn.ReLU()))
        with torch.no_grad():
            self.features.conv1.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2))
            self.features.conv1.bias.fill_(-1.0)
            self.features.conv2.weight.copy_(torch.tensor(w2).view(1, 1, 2, 2))
            self.features.conv2.bias.fill_(b2)


def tiny_image():
    # one bright pixel at (3, 3): conv1 gives 3 at (2, 2), 2 at (2, 3), 1 at (3, 2), 0 at (3, 3), -1 elsewhere, so
    # all four (overlapping) pool windows pick the same switch, (2, 2); the pool output is 3 everywhere (2 x 2).
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 3, 3] = 1.0
    return x


def at22(block):
    out = torch.zeros(1, 1, 6, 6)
    out[0, 0, 2:4, 2:4] = torch.tensor(block)
    return out


@pytest.mark.parametrize("crop", [True, False])
def test_tiny_overlapping_switches_sum(crop):
    # conv2 = 3 * (1 - 2 + 3 + 0.5) - 1 = 6.5 (the seed).  Transposed conv2 sends 6.5 * w2 to the four pool outputs,
    # all unpool to (2, 2) and add up: 6.5 * 2.5 = 16.25 (an overwriting unpool keeps only one of 6.5, -13, 19.5,
    # 3.25).  Transposed conv1 spreads 16.25 * w1 over pixels (2..3, 2..3).  Every ReLU sees positive signal where
    # the forward was positive, so the three methods agree.
    model, x, rows = Tiny([1.0, -2.0, 3.0, 0.5], -1.0), tiny_image(), torch.tensor([[0, 0, 0, 0]])
    assert activations(model, x, 2).item() == 6.5
    expected = at22([[16.25, 32.5], [48.75, 65.0]])
    for method in METHODS:
        torch.testing.assert_close(project(model, x, rows, 2, method=method, crop=crop), expected, rtol=0, atol=0)
        one = project(model, x, rows, 2, method=method, seed_mode="one", crop=crop)
        torch.testing.assert_close(one, expected / 6.5, rtol=1e-6, atol=0)


@pytest.mark.parametrize("crop", [True, False])
def test_tiny_rectify_after_summing(crop):
    # w2 sums to -3.5: conv2 = 3 * -3.5 + 20 = 9.5; at the shared switch 9.5 * (1 - 2 - 3 + 0.5) = -33.25.  The
    # gradient passes it (relu1's input there is 3 > 0): -33.25 * w1.  Deconvnet and guided rectify the SUM to 0
    # (rectifying before summing would have kept 9.5 + 4.75 = 14.25).
    model, x, rows = Tiny([1.0, -2.0, -3.0, 0.5], 20.0), tiny_image(), torch.tensor([[0, 0, 0, 0]])
    grad = project(model, x, rows, 2, method="gradient", crop=crop)
    torch.testing.assert_close(grad, at22([[-33.25, -66.5], [-99.75, -133.0]]), rtol=0, atol=0)
    for method in ("deconvnet", "guided"):
        assert project(model, x, rows, 2, method=method, crop=crop).abs().max() == 0


@pytest.mark.parametrize("crop", [True, False])
def test_tiny_deconvnet_ignores_forward_relu(crop):
    # relu1 at (0, 0): conv1 = -1 (dead).  Seed 1: the deconvnet passes max(1, 0) = 1 whatever the forward, so the
    # projection is w1 at pixels (0..1, 0..1); guided and gradient mask it out; seed "activation" is 0.
    model, x, rows = Tiny([1.0, -2.0, 3.0, 0.5], -1.0), tiny_image(), torch.tensor([[0, 0, 0, 0]])
    expected = torch.zeros(1, 1, 6, 6)
    expected[0, 0, :2, :2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(project(model, x, rows, "relu1", seed_mode="one", crop=crop), expected, rtol=0, atol=0)
    for method in ("guided", "gradient"):
        assert project(model, x, rows, "relu1", method=method, seed_mode="one", crop=crop).abs().max() == 0
    assert project(model, x, rows, "relu1", crop=crop).abs().max() == 0


# ---------------------------------------------------------------------------------------------------------------
# reference: captum and autograd


def _rows(acts, n_random, gen):
    """Rows (R, 4) at corners (image borders) and random positions, for acts (N, C, h, w)."""
    n, c, h, w = acts.shape
    rows = [[0, 0, 0, 0], [n - 1, c - 1, h - 1, w - 1], [0, c // 2, 0, w - 1]]
    for _ in range(n_random):
        rows.append([int(torch.randint(0, k, (1,), generator=gen)) for k in (n, c, h, w)])
    return torch.tensor(rows)


def _no_inplace(model):
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False  # captum's ReLU hooks and autograd.grad on a tap want out-of-place ReLUs
    return model.eval()


def _autograd(model, x, layer, row):
    """d activation(row) / d input, by plain autograd: (1, 3, H, W)."""
    t = resolve_layer(model, layer)
    xi = x[row[0]:row[0] + 1].clone().requires_grad_(True)
    out = model.features[:t.index + 1](xi)
    return torch.autograd.grad(out[0, row[1], row[2], row[3]], xi)[0]


def _close(a, b):
    scale = b.abs().max()
    assert scale > 0
    assert (a - b).abs().max() <= 1e-5 * scale, float((a - b).abs().max() / scale)


CASES = {
    "alexnet": (lambda: alexnet(), 96, ("conv2", "pool5")),
    "vgg16": (lambda: vgg16(), 32, ("conv3_1", "pool4")),
    "zfnet": (lambda: zfnet(width=0.25, norm="none"), 224, (2, "pool5")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_agrees_with_captum_and_autograd(name):
    from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop

    torch.manual_seed(0)
    factory, size, layers = CASES[name]
    model = _no_inplace(factory())
    x = torch.randn(2, 3, size, size)
    gen = torch.Generator().manual_seed(1)
    for layer in layers:
        module = resolve_layer(model, layer).module
        acts = activations(model, x, layer)
        rows = _rows(acts, 1, gen)
        for method, ref in (("deconvnet", NeuronDeconvolution), ("guided", NeuronGuidedBackprop), ("gradient", None)):
            ours = project(model, x, rows, layer, method=method, seed_mode="one")
            for r, row in enumerate(rows.tolist()):
                if ref is None:
                    expected = _autograd(model, x, layer, row)
                else:
                    expected = ref(model, module).attribute(x[row[0]:row[0] + 1], neuron_selector=tuple(row[1:]))
                if expected.abs().max() == 0:  # a dead unit: the gradient and guided maps are 0
                    assert ours[r].abs().max() == 0
                    continue
                _close(ours[r:r + 1], expected)
            # seed "activation" scales each projection by the activation
            value = acts[rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]]
            scaled = project(model, x, rows, layer, method=method)
            _close(scaled, ours * value[:, None, None, None])


@pytest.mark.parametrize("norm", ["identity", "gradient"])
def test_crop_equals_full_image_with_lrn(norm):
    torch.manual_seed(0)
    model = zfnet(width=0.25).eval()  # with LRN after pool1 and pool2
    x = torch.randn(2, 3, 224, 224)
    gen = torch.Generator().manual_seed(2)
    for layer in (2, "pool5"):
        rows = _rows(activations(model, x, layer), 1, gen)
        for method in METHODS:
            crop = project(model, x, rows, layer, method=method, norm=norm)
            full = project(model, x, rows, layer, method=method, norm=norm, crop=False)
            _close(crop, full)
    if norm == "gradient":  # the true gradient through LRN
        for row in rows.tolist():
            ours = project(model, x, torch.tensor([row]), "pool5", method="gradient", seed_mode="one", norm=norm)
            expected = _autograd(model, x, "pool5", row)
            if expected.abs().max() == 0:  # a dead unit
                assert ours.abs().max() == 0
            else:
                _close(ours, expected)
    else:  # skipping LRN is not its gradient
        acts = activations(model, x, "pool5")
        c, yx = divmod(int(acts[0].argmax()), acts.shape[2] * acts.shape[3])
        row = [0, c, *divmod(yx, acts.shape[3])]
        a = project(model, x, torch.tensor([row]), "pool5", method="gradient", seed_mode="one")
        assert (a - _autograd(model, x, "pool5", row)).abs().max() > 1e-3 * a.abs().max()


@pytest.mark.parametrize("name", list(CASES))
def test_projection_inside_receptive_field(name):
    torch.manual_seed(3)
    factory, size, layers = CASES[name]
    model = factory().eval()
    x = torch.randn(2, 3, size, size)
    gen = torch.Generator().manual_seed(4)
    rfs = receptive_fields(model, size)
    for layer in layers:
        lay = resolve_layer(model, layer)
        rows = _rows(activations(model, x, layer), 2, gen)
        p = project(model, x, rows, layer, seed_mode="one")
        win, corners = project_windows(model, x, rows, layer, seed_mode="one")
        rf = rfs[lay.name]
        assert win.shape[-1] == min(rf.size, size)  # windows larger than the image are cut to it
        for r, (_, _, y, xx) in enumerate(rows.tolist()):
            box = unit_box(rf, y, xx, size)
            if rf.size <= size:
                assert (corners[r, 0], corners[r, 1]) == (box.y0, box.x0)
            outside = p[r].clone()
            outside[:, box.cy0:box.cy1, box.cx0:box.cx1] = 0
            assert outside.abs().max() == 0 and p[r].abs().max() > 0


def test_fc_targets_use_the_full_image():
    torch.manual_seed(0)
    model = _no_inplace(zfnet(num_classes=10, width=0.25, norm="none"))
    x = torch.randn(2, 3, 224, 224)
    acts = activations(model, x, "fc6")
    assert acts.shape == (2, 1024, 1, 1)
    rows = torch.tensor([[0, int(acts[0, :, 0, 0].argmax()), 0, 0], [1, 7, 0, 0]])
    g = project(model, x, rows, "fc6", method="gradient", seed_mode="one")
    xi = x[:1].clone().requires_grad_(True)
    h = model.classifier.relu6(model.classifier.fc6(torch.flatten(model.avgpool(model.features(xi)), 1)))
    _close(g[:1], torch.autograd.grad(h[0, rows[0, 1]], xi)[0])
    with pytest.raises(ValueError, match="classifier"):
        project_windows(model, x, rows, "fc6")


class DilatedStack(nn.Module):
    """A ``features`` stack that zf.projection.stack's own reverse pass does not cover: a dilated conv, a 3x5 kernel and
    an average pool."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(),
                                      nn.Conv2d(8, 8, (3, 5), padding=(1, 2)), nn.ReLU(), nn.AvgPool2d(2),
                                      nn.Conv2d(8, 6, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(6 * 8 * 8, 4))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def test_stack_with_dilation_rectangles_and_avg_pool_goes_through_the_graph_engine():
    from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop

    from zf.projection.api import fast_path

    torch.manual_seed(0)
    model = DilatedStack().eval()
    with pytest.warns(UserWarning, match=r"features\.3 \(Conv2d\): dilation"):
        assert not fast_path(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per model
        assert not fast_path(model)
    rfs = receptive_fields(model, 32)  # by hand: 3; pool 2/2 -> 4; dilation 2 -> +2*2*2 = 12; 3x5 -> 16 x 20
    assert (rfs["relu3"].size_hw, rfs["relu3"].stride_hw) == ((16, 20), (2, 2))
    assert (rfs["relu4"].size_hw, rfs["relu4"].stride_hw) == ((18 + 2 * 4, 22 + 2 * 4), (4, 4))
    x = torch.randn(2, 3, 32, 32)
    gen = torch.Generator().manual_seed(1)
    for layer in ("relu3", 4):
        module = resolve_layer(model, layer).module
        acts = activations(model, x, layer)
        torch.testing.assert_close(acts, model.features[:7 if layer == "relu3" else 10](x))
        rows = _rows(acts, 3, gen)
        for method, ref in (("deconvnet", NeuronDeconvolution), ("guided", NeuronGuidedBackprop)):
            ours = project(model, x, rows, layer, method=method, seed_mode="one")
            expected = torch.cat([ref(model, module).attribute(x[r[0]:r[0] + 1], neuron_selector=tuple(r[1:]))
                                  for r in rows.tolist()])
            assert expected.abs().max() > 0
            _close(ours, expected)
    assert check_invertible(model, 4).path == "features.9"
    with pytest.raises(NotInvertibleError, match=r"fc6 is in the classifier.*features\.3 \(Conv2d\)"):
        project(model, x, torch.zeros(1, 4, dtype=torch.long), "fc6")


def test_errors():
    model = zfnet(width=0.25)
    x = torch.zeros(1, 3, 224, 224)
    with pytest.raises(IndexError, match="channel"):
        project(model, x, torch.tensor([[0, 999, 0, 0]]), 4)
    with pytest.raises(IndexError, match="image"):
        project(model, x, torch.tensor([[1, 0, 0, 0]]), 4)
    with pytest.raises(ValueError, match="method"):
        project(model, x, torch.tensor([[0, 0, 0, 0]]), 4, method="lrp")
    with pytest.raises(KeyError):
        project(model, x, torch.tensor([[0, 0, 0, 0]]), "conv9")
