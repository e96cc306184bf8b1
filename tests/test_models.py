"""Model factories: shapes, no NaNs, gradients for every parameter, map sizes, layer names; any torchvision/timm/own
model; the weights policy (file, cache, random; partial state dicts recorded) and its one-line errors."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from zf.errors import CheckpointError, ConfigError
from zf.net.layers import resolve_layer
from zf.net.models import alexnet, build_model, load_state_dict, load_weights, load_zfnet, require_loaded, vgg16, zfnet

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


def test_one_architecture_has_one_set_of_names_whichever_family_built_it():
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ours, tv, tm = vgg16(), torchvision.models.vgg16(), timm.create_model("vgg16", pretrained=False)
        tv19 = torchvision.models.vgg19()
    for m in (ours, tv, tm):  # layer=4 is the last conv of block 4 and its ReLU, however the VGG was built
        assert (resolve_layer(m, 4).name, resolve_layer(m, 4).path) == ("relu4_3", "features.22")
        assert resolve_layer(m, "conv2_2", tap="conv").path == "features.7"
    assert resolve_layer(tv19, 5).name == "relu5_4"
    tv.layer_naming = "sequential"  # a model can ask for the numbering of every conv
    assert resolve_layer(tv, 4).name == "relu4" and resolve_layer(tv, 4).path == "features.8"
    with torch.device("meta"):
        alex = torchvision.models.alexnet()  # AlexNet keeps the paper's conv1..conv5
    assert resolve_layer(alex, 5).name == "relu5"


@pytest.mark.parametrize("factory", [alexnet, pytest.param(vgg16, marks=pytest.mark.slow)], ids=["alexnet", "vgg16"])
def test_torchvision_weights_from_file(factory, tmp_path):
    torch.manual_seed(0)
    src = factory(num_classes=10)
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    dst = factory(num_classes=10, weights=path)
    for (n, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), n
    assert dst.zf_weights == str(path) and dst.zf_missing == []
    with pytest.raises(CheckpointError, match=r"weights.pth does not fit .*classifier.6.weight \(10, 4096\)"):
        factory(num_classes=1000, weights=path)  # 10 classes do not fit a 1000-class model
    with pytest.raises(CheckpointError, match="missing.pth does not exist.*model.weights=random"):
        factory(weights=tmp_path / "missing.pth")


def test_cache_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match=f"{tmp_path}.*alexnet-owt-7be5be79.pth"):
        alexnet(weights="cache")


def test_cache_finds_the_file_torchvision_would_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    src = torchvision.models.resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(src.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")  # IMAGENET1K_V1's name
    m = build_model("torchvision", arch_name="resnet18", weights="cache")
    assert m.zf_weights.endswith("resnet18-f37072fd.pth") and torch.equal(m.fc.weight, src.fc.weight)


# ---------------------------------------------------------------------------------------------------------------
# any model, and the weights policy


def _tiny_module_file(folder):
    (folder / "tiny_zf_net.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "class TinyNet(nn.Module):\n"
        "    def __init__(self, num_classes=2, hidden=4):\n"
        "        super().__init__()\n"
        "        self.features = nn.Sequential(nn.Conv2d(3, hidden, 3), nn.ReLU(), nn.MaxPool2d(2))\n"
        "        self.classifier = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n"
        "    def forward(self, x):\n"
        "        return self.classifier(self.features(x).mean((2, 3), keepdim=True))\n")


def test_custom_module_by_target(tmp_path, monkeypatch):
    _tiny_module_file(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3)
    fc = torch.nn.Linear(5, 3)
    state = {"features.0.weight": conv.weight.detach(), "features.0.bias": conv.bias.detach(),
             "classifier.1.weight": fc.weight.detach(), "classifier.1.bias": fc.bias.detach()}
    torch.save({"state_dict": state}, tmp_path / "tiny.pt")  # a Lightning-style checkpoint
    m = build_model("custom", target="tiny_zf_net.TinyNet", weights=str(tmp_path / "tiny.pt"), num_classes=3,
                    hidden=5)
    assert type(m).__name__ == "TinyNet" and m.zf_missing == [] and not m.training
    assert torch.equal(m.features[0].weight, conv.weight) and torch.equal(m.classifier[1].bias, fc.bias)
    x = torch.randn(2, 3, 8, 8)
    pooled = torch.nn.functional.max_pool2d(torch.relu(conv(x)), 2).mean((2, 3))
    assert torch.allclose(m(x), pooled @ fc.weight.T + fc.bias, atol=1e-6)
    # a Hydra-style block: arch={"_target_": ...}
    m2 = build_model("custom", weights="random", num_classes=3, **{"_target_": "tiny_zf_net.TinyNet", "hidden": 6})
    assert m2.features[0].out_channels == 6 and m2.zf_weights == "random"
    with pytest.raises(ConfigError, match="model.target=no_such_pkg.Net: cannot import no_such_pkg.*PYTHONPATH"):
        build_model("custom", target="no_such_pkg.Net", weights="random")
    with pytest.raises(ConfigError, match="tiny_zf_net has no 'Nope'"):
        build_model("custom", target="tiny_zf_net.Nope", weights="random")
    with pytest.raises(ConfigError, match="model=custom needs model.target"):
        build_model("custom", weights="random")


def test_torchvision_by_name_random_and_from_file(tmp_path):
    torch.manual_seed(0)
    m = build_model("torchvision", arch_name="resnet18", weights="random", num_classes=7)
    assert type(m).__name__ == "ResNet" and m.fc.out_features == 7 and m.zf_weights == "random"
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    torch.save({"module." + k: v for k, v in m.state_dict().items()}, tmp_path / "dp.pth")  # DataParallel's prefix
    m2 = build_model("torchvision", arch_name="resnet18", weights=str(tmp_path / "dp.pth"), num_classes=7)
    for (n, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    with pytest.raises(ConfigError, match="'resnet5' is not a torchvision classification model.*resnet50"):
        build_model("torchvision", arch_name="resnet5", weights="random")
    with pytest.raises(ConfigError, match="model=torchvision needs model.arch_name"):
        build_model("torchvision", weights="random")
    with pytest.raises(ConfigError, match="model.name='resnet18' is not a model family.*arch_name=resnet18"):
        build_model("resnet18", weights="random")


def test_timm_by_name_or_how_to_install(monkeypatch, tmp_path):
    if importlib.util.find_spec("timm") is not None:
        from safetensors.torch import save_file

        torch.manual_seed(0)
        m = build_model("timm", arch_name="resnet18", weights="random", num_classes=4)
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 4) and m.zf_weights == "random"
        save_file(m.state_dict(), str(tmp_path / "model.safetensors"))  # the file timm's hub folders hold
        m2 = build_model("timm", arch_name="resnet18", weights=str(tmp_path / "model.safetensors"), num_classes=4)
        assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
        (tmp_path / "bad.safetensors").write_bytes(b"garbage")
        with pytest.raises(CheckpointError, match="bad.safetensors is not a readable safetensors file"):
            build_model("timm", arch_name="resnet18", weights=str(tmp_path / "bad.safetensors"))
    monkeypatch.setitem(sys.modules, "timm", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'zf\[timm\]'"):
        build_model("timm", arch_name="resnet18", weights="random")


def test_no_weights_is_an_error_that_names_the_options():
    for name, kw in (("alexnet", {}), ("vgg16", {}), ("torchvision", {"arch_name": "resnet18"}),
                     ("custom", {"target": "torch.nn.Identity"})):
        with pytest.raises(CheckpointError, match="no weights given.*model.weights=cache.*model.weights=random"):
            build_model(name, **kw)


def test_bad_files_are_named(tmp_path):
    good = torch.nn.Linear(2, 2).state_dict()
    torch.save(good, tmp_path / "good.pt")
    blob = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "text.pt").write_text("hello, not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("truncated.pt", "text.pt", "empty.pt"):
        with pytest.raises(CheckpointError, match=f"{name} is not a PyTorch checkpoint") as e:
            load_state_dict(tmp_path / name)
        assert "weights_only=False" not in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(CheckpointError, match=f"{name} is not a PyTorch checkpoint"):
            load_zfnet(tmp_path / name)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match=r"module.pt holds pickled Python objects .*Linear.*state_dict\(\)") as e:
        load_state_dict(tmp_path / "module.pt")
    assert "weights_only=False" not in str(e.value)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt holds a list, not a state dict"):
        load_state_dict(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        load_zfnet(tmp_path / "nope.pt")


def test_keys_that_do_not_fit_are_errors(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    with pytest.raises(CheckpointError, match=r"x.pt does not fit Sequential: it has 1 keys the model lacks \(extra\)"):
        load_weights(m, {**m.state_dict(), "extra": torch.zeros(1)}, "x.pt")
    with pytest.raises(CheckpointError, match=r"y.pt does not fit Sequential: 0.weight \(4, 2\) vs the model's \(3, 2\)"):
        load_weights(m, {**m.state_dict(), "0.weight": torch.zeros(4, 2)}, "y.pt")
    with pytest.raises(CheckpointError, match="z.pt has none of Sequential's weights"):
        load_weights(m, {}, "z.pt")
    with pytest.raises(CheckpointError, match="w.pt lacks 2.\\* of Sequential"):
        load_weights(m, {k: v for k, v in m.state_dict().items() if k.startswith("0.")}, "w.pt", partial=False)


def test_partial_state_dict_records_what_stayed_random():
    torch.manual_seed(0)
    src = zfnet(num_classes=3, width=0.0625, fc=[8, 8])
    dst = zfnet(num_classes=3, width=0.0625, fc=[8, 8])
    features_only = src.features.state_dict()  # keys "conv1.weight", ...: the prefix "features." is added
    with pytest.warns(UserWarning, match=r"f.pt holds only part of ZFNet: classifier.\* stayed random") as w:
        load_weights(dst, features_only, "f.pt")
    assert len(w) == 1
    assert torch.equal(dst.features.conv5.weight, src.features.conv5.weight)
    assert not torch.equal(dst.classifier.fc8.weight, src.classifier.fc8.weight)
    assert dst.zf_missing == [k for k in dst.state_dict() if k.startswith("classifier.")]
    require_loaded(dst, "features.", "deconvnet")  # the trunk is there
    with pytest.raises(CheckpointError, match=r"occlusion needs the classifier \(classifier.\*\), which stayed "
                                              r"random: f.pt has no classifier.\*"):
        require_loaded(dst, "classifier.", "occlusion")


def test_real_vgg16_trunk_loads_with_the_classifier_random(shared_models):
    VGG_TRUNK = shared_models / "vgg16_imagenet_features.pth"
    state = torch.load(VGG_TRUNK, map_location="cpu", weights_only=True)
    with pytest.warns(UserWarning, match="classifier.\\* stayed random"):
        m = build_model("vgg16", weights=str(VGG_TRUNK))
    assert m.zf_missing == [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    for k, v in state.items():
        assert torch.equal(m.state_dict()[k], v.float()), k
    assert m.layer_naming == "block"
    with pytest.raises(CheckpointError, match="occlusion needs the classifier.*vgg16_imagenet_features.pth"):
        require_loaded(m, "classifier.", "occlusion")


@pytest.mark.parametrize("overrides", [
    ["model=torchvision", "model.arch_name=resnet18", "model.weights=random"],
    ["model=custom", "model.target=torch.nn.Identity", "model.weights=random"],
    ["model=vgg16", "model.weights=random"],
], ids=["torchvision", "custom", "vgg16"])
def test_model_configs_compose_into_build_model(overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        m = OmegaConf.to_container(compose("run", overrides=overrides).model, resolve=True)
    # the keys the config layer passes to build_model
    with torch.device("meta"):
        model = build_model(name=m["name"], checkpoint=m["checkpoint"], weights=m["weights"],
                            num_classes=m.get("num_classes"), arch_name=m.get("arch_name"), target=m.get("target"),
                            **m["arch"])
    assert model.zf_weights == "random"
