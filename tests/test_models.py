"""Model factories: shapes, no NaNs, gradients for every parameter, map sizes, layer names, weight loading."""
import pytest
import torch

from zf.layers import resolve_layer
from zf.models import alexnet, vgg16, zfnet

FACTORIES = {
    "zfnet-0.25": (lambda: zfnet(num_classes=10, width=0.25), 224),
    "zfnet-no-conv3-conv4": (lambda: zfnet(num_classes=10, width=0.25, remove=["conv3", "conv4"]), 224),
    "zfnet-no-fc7": (lambda: zfnet(num_classes=10, width=0.25, remove=["fc7"]), 224),
    "zfnet-no-fc6-fc7": (lambda: zfnet(num_classes=10, width=0.25, remove=["fc6", "fc7"]), 224),
    "zfnet-conv1-11-4": (lambda: zfnet(num_classes=10, width=0.25, conv1=(11, 4, 2)), 224),
    "alexnet": (lambda: alexnet(num_classes=10), 96),
    "vgg16": pytest.param((lambda: vgg16(num_classes=10), 32), marks=pytest.mark.slow),  # 138M parameters
}


@pytest.mark.parametrize("case", list(FACTORIES.values()), ids=list(FACTORIES))
def test_forward_backward(case):
    torch.manual_seed(0)
    factory, size = case
    model = factory().train()
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())


def test_zfnet_full_width_map_sizes():
    torch.manual_seed(0)
    model = zfnet().eval()
    sizes, x = {}, torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for name, m in model.features.named_children():
            x = m(x)
            sizes[name] = x.shape[-1]
        out = model(torch.randn(1, 3, 224, 224))
    assert [sizes[n] for n in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")] == \
           [110, 55, 26, 13, 13, 13, 13, 6]
    assert x.shape[1] == 256 and out.shape == (1, 1000) and torch.isfinite(out).all()


def test_ablations_keep_names():
    model = zfnet(width=0.25, remove=["conv3", "conv4"])
    assert resolve_layer(model, "conv5").name == "relu5"
    assert resolve_layer(model, 3).name == "relu5"  # the third conv that exists
    with pytest.raises(KeyError):
        resolve_layer(model, "conv3")
    assert not hasattr(zfnet(width=0.25, remove=["fc6", "fc7"]).classifier, "fc6")


def test_layer_names():
    model = zfnet(width=0.25)
    assert resolve_layer(model, 4).name == "relu4"
    assert resolve_layer(model, "conv4", tap="conv").name == "conv4"
    assert resolve_layer(model, 2, tap="output").name == "norm2"
    assert resolve_layer(model, "fc6").name == "relu6"
    with torch.device("meta"):
        vgg, alex = vgg16(), alexnet()
    assert resolve_layer(vgg, 5).name == "relu5_3" and resolve_layer(vgg, "pool4").path == "features.23"
    assert resolve_layer(alex, 1).path == "features.1"
    with pytest.raises(KeyError, match="conv4"):  # the message lists the names that exist
        resolve_layer(model, "conv9")


@pytest.mark.parametrize("factory", [alexnet, pytest.param(vgg16, marks=pytest.mark.slow)], ids=["alexnet", "vgg16"])
def test_torchvision_weights_from_file(factory, tmp_path):
    torch.manual_seed(0)
    src = factory(num_classes=10)
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    dst = factory(num_classes=10, weights=path)
    for (n, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), n
    with pytest.raises(RuntimeError, match="weights.pth"):  # 10 classes do not fit a 1000-class model
        factory(num_classes=1000, weights=path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        factory(weights=tmp_path / "missing.pth")


def test_cache_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        alexnet(weights="cache")
