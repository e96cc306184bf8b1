"""zf.projection.graph on networks that are not features stacks: captum agreement (ResNet-18, DenseNet-121, the real
VGG-16 trunk), functional rectifiers and other activations against an fx-rewritten reference, receptive fields against a
brute-force perturbation measurement, containment, capture and layer errors."""
from pathlib import Path

import pytest
import torch
import torch.fx
import torch.nn.functional as F
import torchvision
from torch import nn

from zf.errors import ConfigError, LayerError
from zf.net.layers import resolve_layer
from zf.net.listing import list_layers
from zf.net.modules import capture
from zf.net.receptive import graph_receptive_fields, receptive_fields, unit_box
from zf.projection.api import activations, project, project_windows
from zf.projection.graph import _crops, project_graph


def _no_inplace(model):
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False  # captum's ReLU hooks want out-of-place ReLUs (the math is the same)
    return model.eval()


def _rows(acts, n, gen):
    """n rows (image, channel, y, x) at strongly active units of acts (N, C, h, w)."""
    N, C, h, w = acts.shape
    flat = acts.flatten(1)
    out = []
    for k in range(n):
        i = k % N
        j = int(torch.topk(flat[i], 50).indices[torch.randint(50, (1,), generator=gen)])
        out.append([i, j // (h * w), (j // w) % h, j % w])
    return torch.tensor(out)


def _captum(model, module, images, rows, method):
    from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop

    attr = (NeuronDeconvolution if method == "deconvnet" else NeuronGuidedBackprop)(model, module)
    return torch.cat([attr.attribute(images[i:i + 1].clone().requires_grad_(True), neuron_selector=(c, y, x))
                      .detach() for i, c, y, x in rows.tolist()])


def _vgg(request):
    weights = request.getfixturevalue("shared_models") / "vgg16_imagenet_features.pth"
    model = torchvision.models.vgg16(weights=None)
    missing, _ = model.load_state_dict(torch.load(weights, weights_only=True), strict=False)
    assert all(k.startswith("classifier.") for k in missing)
    return model


def _real_images(root: Path, n, size):
    files = sorted((root / "val").rglob("*.JPEG"))[:n]
    x = torch.stack([torchvision.io.decode_image(str(f), mode=torchvision.io.ImageReadMode.RGB) for f in files])
    x = F.interpolate(x.float() / 255, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x - mean[:, None, None]) / std[:, None, None]


CASES = {  # factory, input size, layers (a crop-path layer first where the field is small)
    "resnet18": (lambda _: torchvision.models.resnet18(), 96, ["layer1", "layer2.0.relu", "layer3"]),
    "densenet121": (lambda _: torchvision.models.densenet121(), 64, ["features.denseblock1", "features.transition2"]),
    "vgg16_real": (_vgg, 64, ["features.8", "features.22"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_agrees_with_captum(name, request):
    torch.manual_seed(0)
    factory, size, layers = CASES[name]
    model = _no_inplace(factory(request))
    images = (_real_images(request.getfixturevalue("imagenette"), 2, size) if name == "vgg16_real"
              else torch.randn(2, 3, size, size))
    gen = torch.Generator().manual_seed(1)
    for layer in layers:
        acts = capture(model, images, [layer])[layer]
        rows = _rows(acts, 2, gen)
        module = resolve_layer(model, layer).module
        for method in ("deconvnet", "guided"):
            ours = project_graph(model, images, rows, layer, method, seed_mode="one")
            ref = _captum(model, module, images, rows, method)
            scale = ref.abs().max()
            assert scale > 0
            assert (ours - ref).abs().max() <= 1e-5 * scale, (layer, method)
            assert ours.dtype == torch.float32 and ours.shape == (2, 3, size, size)


def test_crop_path_equals_full_path_and_deconv_dispatches():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = torch.randn(2, 3, 96, 96)
    rows = torch.tensor([[0, 3, 0, 0], [1, 7, 11, 5], [1, 60, 23, 23], [0, 2, 12, 12]])
    for method in ("deconvnet", "guided", "gradient"):
        a = project_graph(model, images, rows, "layer1", method, crop=True, chunk=3)
        b = project_graph(model, images, rows, "layer1", method, crop=False, chunk=3)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * float(b.abs().max()))
        torch.testing.assert_close(project(model, images, rows, "layer1", method=method), a)
    # project_windows: the same projections cut to the receptive-field boxes
    win, corners = project_windows(model, images, rows, "layer1", seed_mode="one")
    full = project_graph(model, images, rows, "layer1", seed_mode="one")
    rf = graph_receptive_fields(model, 96, ["layer1"])["layer1"]
    assert win.shape == (4, 3, 43, 43) and rf.size_hw == (43, 43)
    for j, (y0, x0) in enumerate(corners.tolist()):
        canvas = torch.zeros(3, 96 + 86, 96 + 86)
        canvas[:, 43 + y0:43 + y0 + 43, 43 + x0:43 + x0 + 43] = win[j]
        torch.testing.assert_close(canvas[:, 43:139, 43:139], full[j])
    torch.testing.assert_close(activations(model, images, "layer2"), model.layer2(model.layer1(
        model.maxpool(model.relu(model.bn1(model.conv1(images)))))))


# ---------------------------------------------------------------------------------------------------------------
# functional rectifiers and other activations against an fx-rewritten reference


class RefRule(torch.autograd.Function):
    """Reference rules written from their definitions: deconvnet max(g, 0); guided max(g, 0) * f'(x), with f'
    from the closed forms below."""

    @staticmethod
    def forward(ctx, x, kind, method):
        ctx.kind, ctx.method = kind, method
        ctx.save_for_backward(x)
        return {"relu": torch.relu, "relu6": lambda v: v.clamp(0, 6), "gelu": F.gelu, "silu": F.silu,
                "leaky": lambda v: torch.where(v > 0, v, 0.1 * v)}[kind](x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        g = g.clamp_min(0)
        if ctx.method == "guided":
            phi = torch.exp(-x * x / 2) / (2 * torch.pi) ** 0.5
            cdf = 0.5 * (1 + torch.erf(x / 2 ** 0.5))
            s = torch.sigmoid(x)
            d = {"relu": (x > 0).double(), "relu6": ((x > 0) & (x < 6)).double(), "gelu": cdf + x * phi,
                 "silu": s * (1 + x * (1 - s)), "leaky": torch.where(x > 0, 1.0, 0.1).double()}[ctx.kind]
            g = g * d.to(g.dtype)
        return g, None, None


def ref_act(x, kind, method):
    return RefRule.apply(x, kind, method)


def reference(model, method):
    """fx-trace model and route every activation (functional call, method or module) through RefRule."""
    import copy

    gm = torch.fx.symbolic_trace(copy.deepcopy(model))
    kinds = {F.relu: "relu", torch.relu: "relu", "relu": "relu", nn.ReLU: "relu", nn.ReLU6: "relu6",
             nn.GELU: "gelu", nn.SiLU: "silu", nn.LeakyReLU: "leaky"}
    mods = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        key = node.target if node.op in ("call_function", "call_method") else \
            type(mods[node.target]) if node.op == "call_module" else None
        if key in kinds:
            with gm.graph.inserting_after(node):
                new = gm.graph.call_function(ref_act, (node.args[0], kinds[key], method))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def ref_project(model, images, rows, method):
    gm = reference(model, method).double()
    out = []
    for i, c, y, x in rows.tolist():
        xi = images[i:i + 1].double().requires_grad_(True)
        a = gm(xi)
        out.append(torch.autograd.grad(a[0, c, y, x], xi)[0])
    return torch.cat(out).float()


class Functional(nn.Module):
    """Rectifiers as functional calls only: F.relu (in place), torch.relu, Tensor.relu; a residual add and a
    functional max pool."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 6, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x), inplace=True), 2)
        x = (torch.relu(self.c2(x)) + x).relu()
        return self.c3(x)


class Acts(nn.Module):
    """ReLU6, GELU, SiLU and LeakyReLU modules (MobileNetV2, ConvNeXt, EfficientNet style) with a max pool."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3), nn.SiLU(),
                                  nn.Conv2d(8, 6, 3), nn.LeakyReLU(0.1))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("net", [Functional, Acts])
@pytest.mark.parametrize("method", ["deconvnet", "guided"])
def test_activations_against_fx_reference(net, method):
    torch.manual_seed(0)
    model = net().eval()
    images = torch.randn(2, 3, 20, 20) * 3
    layer = "c3" if net is Functional else "body.8"
    rows = torch.tensor([[0, 1, 3, 3], [1, 4, 0, 5], [0, 5, 5, 0]])
    ours = project_graph(model, images, rows, layer, method, seed_mode="one", crop=False)
    ref = ref_project(model, images, rows, method)
    assert ref.abs().max() > 0
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_zf_rectifies_functional_relu_where_captum_does_not():
    torch.manual_seed(0)
    model = Functional().eval()
    images = torch.randn(2, 3, 20, 20)
    rows = torch.tensor([[0, 1, 3, 3], [1, 4, 2, 5]])
    ours = project_graph(model, images, rows, "c3", "deconvnet", seed_mode="one")
    ref = ref_project(model, images, rows, "deconvnet")
    theirs = _captum(model, model.c3, images, rows, "deconvnet")
    gradient = project_graph(model, images, rows, "c3", "gradient", seed_mode="one")
    scale = ref.abs().max()
    assert (ours - ref).abs().max() <= 1e-5 * scale
    assert (theirs - ref).abs().max() > 1e-2 * scale  # captum hooks nn.ReLU modules only: F.relu gets its gradient
    assert (theirs - gradient).abs().max() <= 1e-5 * scale


# ---------------------------------------------------------------------------------------------------------------
# receptive fields: brute force by perturbing whole input rows / columns


def brute_changes(model, layers, size):
    """Per layer and axis, a bool (n, C, h, w): whether pushing input row (column) r up or down by 1e3 changes each
    unit, from one batched float64 forward per axis of a random image; rectifiers are the identity so that no path
    is cut by a dead unit."""
    m = _swap_relu(model).double().eval()
    base = torch.rand(1, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = {l: [] for l in layers}
    for ax in (0, 1):
        n = size[ax]
        xs = base.repeat(2 * n, 1, 1, 1)
        for r in range(n):
            for s, sign in enumerate((1e3, -1e3)):
                if ax == 0:
                    xs[2 * r + s, :, r, :] += sign
                else:
                    xs[2 * r + s, :, :, r] += sign
        with torch.no_grad():
            acts = capture(m, torch.cat([base, xs]), layers, stop=False)
        for l in layers:
            a = acts[l]
            d = (a[1:] - a[:1]).abs() > 1e-9 * a.abs().max()
            out[l].append(d.view(n, 2, *a.shape[1:]).any(1))
    return out


def brute_extent(changes, y, x):
    """((first row, end), (first column, end)) of the input lines that change unit (y, x) in some channel."""
    out = []
    for ax in (0, 1):
        nz = torch.nonzero(changes[ax][:, :, y, x].any(1)).flatten()
        out.append((int(nz[0]), int(nz[-1]) + 1))
    return tuple(out)


def _swap_relu(model):
    import copy

    m = copy.deepcopy(model)
    for parent in m.modules():
        for k, c in parent.named_children():
            if isinstance(c, nn.ReLU):
                setattr(parent, k, nn.Identity())
    return m


class Rect(nn.Module):
    """Rectangular kernels, strides and pools, and a dilated conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, (3, 5), stride=(1, 2), padding=(1, 0))
        self.pool = nn.MaxPool2d((2, 3), stride=(2, 1), padding=(0, 1))
        self.b = nn.Conv2d(4, 4, 3, dilation=(2, 3), padding=(2, 1))
        self.c = nn.Conv2d(4, 4, (1, 3), stride=(2, 1))

    def forward(self, x):
        return self.c(F.relu(self.b(self.pool(F.relu(self.a(x))))))


@pytest.mark.parametrize("net, size, layers", [
    (lambda: torchvision.models.resnet18(), (64, 64), ["maxpool", "layer1.0.conv2", "layer1", "layer2.0", "layer2"]),
    (Rect, (30, 41), ["a", "pool", "b", "c"]),  # sizes where every input pixel reaches the last layer
], ids=["resnet18", "rect_dilated"])
def test_receptive_fields_match_brute_force(net, size, layers):
    torch.manual_seed(0)
    model = net().eval()
    rfs = graph_receptive_fields(model, size, layers)
    changes = brute_changes(model, layers, size)
    checked = 0
    for layer in layers:
        rf = rfs[layer]
        h, w = rf.out_hw
        for y, x in ((0, 0), (1, 1), (h // 2, w // 2), (h - 1, w - 1)):
            b = unit_box(rf, y, x, size)
            (y0, y1), (x0, x1) = brute_extent(changes[layer], y, x)
            # inside the clipped box, and equal to the box on every side that lies inside the image (a dilated
            # kernel's taps can skip the first pixels past a clipped side)
            assert b.cy0 <= y0 < y1 <= b.cy1 and b.cx0 <= x0 < x1 <= b.cx1, (layer, y, x, rf)
            for got, edge, inside in ((y0, b.y0, b.y0 >= 0), (y1, b.y1, b.y1 <= size[0]), (x0, b.x0, b.x0 >= 0),
                                      (x1, b.x1, b.x1 <= size[1])):
                assert not inside or got == edge, (layer, y, x, rf)
            checked += sum((b.y0 >= 0, b.y1 <= size[0], b.x0 >= 0, b.x1 <= size[1]))
    assert checked >= 4 * len(layers)
    if "layer2" in rfs:
        assert (rfs["layer2"].size_hw, rfs["layer2"].stride_hw) == ((99, 99), (8, 8))  # published for ResNet-18
    if net is Rect:
        assert rfs["b"].size_hw != (rfs["b"].size_hw[0],) * 2  # rectangular indeed


def test_projection_inside_receptive_field():
    torch.manual_seed(0)
    for model, size, layer in ((torchvision.models.resnet18().eval(), 64, "layer1"), (Rect().eval(), (30, 41), "b")):
        hw = (size, size) if isinstance(size, int) else size
        images = torch.randn(2, 3, *hw)
        acts = capture(model, images, [layer])[layer]
        rows = _rows(acts, 6, torch.Generator().manual_seed(0))
        rf = receptive_fields(model, hw)[layer]
        p = project_graph(model, images, rows, layer, "deconvnet")
        for j, (_, _, y, x) in enumerate(rows.tolist()):
            b = unit_box(rf, y, x, hw)
            inside = torch.zeros(hw, dtype=torch.bool)
            inside[b.cy0:b.cy1, b.cx0:b.cx1] = True
            assert p[j].abs().sum(0)[inside].sum() > 0
            assert (~inside).any() and p[j].abs().sum(0)[~inside].sum() == 0


# ---------------------------------------------------------------------------------------------------------------
# capture, names, errors


def test_capture_clones_stops_early_and_reads_last_call():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()  # in-place ReLUs; layer1.0.relu runs twice per block
    calls = []
    x = torch.randn(1, 3, 64, 64)
    capture(model, x, ["layer3"])  # the first call on a model probes how often each module runs (whole forward)
    h = model.fc.register_forward_hook(lambda *a: calls.append("fc"))
    out = capture(model, x, ["layer1.0.bn2", "layer3", "layer1.0.relu"])
    h.remove()
    assert calls == []  # stopped after layer3
    assert out["layer1.0.bn2"].min() < 0  # cloned before the in-place ReLU that follows the add
    torch.testing.assert_close(out["layer1.0.relu"], model.layer1[0](model.maxpool(model.relu(model.bn1(
        model.conv1(x))))))  # the block's output: the ReLU's last call
    assert capture(model, x, "layer3")["layer3"].shape == (1, 256, 4, 4)


def test_layer_names_and_errors():
    model = torchvision.models.resnet18()
    assert resolve_layer(model, "layer3.1.relu").path == "layer3.1.relu"
    assert resolve_layer(model, "layer3").index is None
    with pytest.raises(LayerError, match=r"layer33.*close matches: layer3.*list_layers=true"):
        resolve_layer(model, "layer33")
    with pytest.raises(KeyError):  # LayerError is a KeyError
        project_graph(model, torch.zeros(1, 3, 32, 32), [[0, 0, 0, 0]], "fc2")
    with pytest.raises(ConfigError, match="method='deconv'"):
        project_graph(model, torch.zeros(1, 3, 32, 32), [[0, 0, 0, 0]], "layer1", method="deconv")
    with pytest.raises(IndexError, match="channel out of range for layer1"):
        project_graph(model, torch.zeros(1, 3, 32, 32), [[0, 64, 0, 0]], "layer1", crop=False)
    dense = torchvision.models.densenet121()
    assert resolve_layer(dense, "denseblock3").path == "features.denseblock3"
    from zf.net.models import zfnet

    assert resolve_layer(zfnet(), 4).name == "relu4"  # the sequential names are unchanged
    with pytest.raises(LayerError, match="conv4"):
        resolve_layer(zfnet(), "conv44")


def test_list_layers_small():
    model = Rect().eval()
    rows = {r.path: r for r in list_layers(model, (30, 41))}
    assert list(rows) == ["a", "pool", "b", "c"]
    assert rows["a"].shape == (4, 30, 19) and rows["a"].rf_size == (3, 5) and rows["a"].rf_stride == (1, 2)
    assert rows["pool"].rf_size == (4, 9) and rows["pool"].rf_stride == (2, 2)


class Ceil(nn.Module):
    """GoogLeNet-style ceil-mode max pools, a 1x1 stride-2 shortcut, and a clamp (Hardtanh(-1, 1)) that must not cut
    the receptive field."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(6, 6, 1, stride=2)
        self.c = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.a(x)), 3, 2, ceil_mode=True)
        x = F.hardtanh(F.relu(self.b(x)) + self.skip(x), -1.0, 1.0)
        return F.max_pool2d(self.c(x), 3, 2, ceil_mode=True)


def test_rows_sharing_crops_share_forwards_and_equal_the_whole_image_path():
    """Many rows on few crops (several per crop, uneven counts, crops split over chunks), on a non-square image
    whose far edges need their own crops: every row equals its whole-image projection."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = torch.randn(2, 3, 112, 80)
    gen = torch.Generator().manual_seed(3)
    n = 40
    pos = torch.tensor([[0, 0], [3, 4], [27, 19], [6, 9], [25, 0]])[torch.randint(0, 5, (n,), generator=gen)]
    rows = torch.stack([torch.randint(0, 2, (n,), generator=gen), torch.randint(0, 64, (n,), generator=gen),
                        pos[:, 0], pos[:, 1]], 1)
    rf = graph_receptive_fields(model, (112, 80), ["layer1"])["layer1"]
    (ay, ey), (ax, ex) = _crops(rf, rows, 112, 80)
    key = torch.stack([rows[:, 0], ay, ax], 1)
    counts = torch.unique(key, dim=0, return_counts=True)[1]
    assert len(counts) < n // 3 and counts.max() > counts.min() and len(torch.unique(ey - ay)) == 2
    assert ((ey == 112) & (ay % 4 == 0)).any() and ((ex == 80) & (ax % 4 == 0)).any()
    for method in ("deconvnet", "guided"):
        a = project_graph(model, images, rows, "layer1", method, seed_mode="one", crop=True, chunk=3)
        b = project_graph(model, images, rows, "layer1", method, seed_mode="one", crop=False, chunk=8)
        live = b.flatten(1).abs().amax(1) > 0  # guided: zero where the unit is off
        assert live.all() if method == "deconvnet" else live.sum() > n // 2
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * float(b.abs().max()))


def test_crop_exact_with_ceil_mode_pools_and_clamps():
    torch.manual_seed(0)
    model = Ceil().eval()
    images = torch.randn(2, 3, 61, 61)  # odd sizes: ceil-mode windows hang over the maps' right edges
    rf = graph_receptive_fields(model, (61, 61), ["c"])["c"]
    assert rf.size_hw == (17, 17) and rf.stride_hw == (4, 4)  # conv 3, pool 3/2, conv 3/2 (and the 1x1 path), conv 3
    acts = capture(model, images, ["c"])["c"]
    h, w = acts.shape[2:]
    rows = torch.tensor([[0, 1, 0, 0], [1, 2, h - 1, w - 1], [0, 3, h // 2, w - 1], [1, 0, h - 1, 1]])
    for method in ("deconvnet", "guided", "gradient"):
        a = project_graph(model, images, rows, "c", method, crop=True)
        b = project_graph(model, images, rows, "c", method, crop=False)
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * float(b.abs().max()))
