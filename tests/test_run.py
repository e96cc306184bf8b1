"""The main job end to end (``scripts/run.py``), tiny on the CPU: every layer, a flat folder of odd images, a sweep,
W&B offline logging, clear errors for bad input, and every Hydra config composing."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from PIL import Image

from zf.data import default_data_root

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
VAL = default_data_root() / "val"
TINY = ["model.checkpoint=null", "model.weights=random", "model.arch.width=0.125", "logger=none", "progress=false",
        "num_workers=0", "batch_size=8"]


def run(args: list[str], cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "run.py"), *args], cwd=cwd, capture_output=True,
                       text=True, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"run.py failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def five_layer_run(tmp_path_factory, imagenette):
    out = tmp_path_factory.mktemp("run5")
    cache = tmp_path_factory.mktemp("cache")
    p = run(["layer=[1,2,3,4,5]", "data.limit=14", "k=3", "overview_units=4", f"hydra.run.dir={out}",
             f"paths.cache_dir={cache}", "logger=wandb", "logger.mode=offline", *TINY[:3], *TINY[4:]])
    assert "W&B failed" not in p.stderr, p.stderr[-2000:]
    assert "relu1 (deconvnet)" not in p.stderr  # no image-dependence warning at the first convolution
    return out, cache, p.stdout


def test_every_layer_writes_tables_figures_units_and_gallery(five_layer_run):
    out, cache, stdout = five_layer_run
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["layers"]) == ["relu1", "relu2", "relu3", "relu4", "relu5"]
    assert summary["n_images"] == 14 and summary["k"] == 3 and summary["methods"] == ["deconvnet"]
    assert summary["transform"]["center_crop"] == 224
    images = json.loads((out / "images.json").read_text())
    rf = {"relu1": 7, "relu2": 27, "relu3": 75, "relu4": 107, "relu5": 139}
    for layer, info in summary["layers"].items():
        d = out / "layers" / layer
        z = np.load(d / "topk.npz")
        channels = info["channels"]
        assert z["activation"].shape == (channels, 3) and info["units"] == channels
        # 3 different images per unit, sorted by activation
        assert all(len(set(r)) == 3 for r in z["image"])
        assert (np.diff(z["activation"], axis=1) <= 0).all()
        assert (z["box"][..., 1] - z["box"][..., 0] == rf[layer]).all()
        rows = list(csv.DictReader(open(d / "topk.csv")))
        assert len(rows) == channels * 3
        r0 = rows[0]
        assert r0["path"] == images[int(r0["image"])]
        assert float(r0["activation"]) == pytest.approx(float(z["activation"][0, 0]), rel=1e-5)
        proj = np.load(d / "deconvnet.npy")
        assert proj.shape == (channels, 3, 3, rf[layer], rf[layer]) and np.isfinite(proj).all()
        assert len(list((d / "patches").glob("*.png"))) == channels * 3
        assert len(list((d / "deconvnet").glob("*.png"))) == channels * 3
        assert len(list((d / "units").glob("*.png"))) == channels
        assert Image.open(d / "patches" / "u0000_r0.png").size == (rf[layer], rf[layer])
        assert (out / "figures" / f"{layer}_deconvnet.png").is_file()
        assert f"figure (deconvnet): {out / 'figures' / f'{layer}_deconvnet.png'}" in stdout
    used = np.unique(np.concatenate([np.load(out / "layers" / l / "topk.npz")["image"].ravel()
                                     for l in summary["layers"]]))
    assert sorted(int(p.stem) for p in (out / "sources").glob("*.jpg")) == used.tolist()
    assert (out / "gallery" / "index.html").is_file()
    # layer 1's projections are the units' filters for every image: said once in the log, not warned about
    assert "relu1: the first convolution" in stdout
    # W&B offline run inside the run directory, with the table and the artifact
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert sorted(p.name for p in runs[0].glob("files/media/table/*")) == list(summary["layers"])


def test_patch_pixels_are_the_receptive_field_of_the_source(five_layer_run):
    out, _, _ = five_layer_run
    z = np.load(out / "layers" / "relu3" / "topk.npz")
    images = json.loads((out / "images.json").read_text())
    u, r = 5, 0
    y0, y1, x0, x1 = z["box"][u, r]
    src = np.asarray(Image.open(images[z["image"][u, r]]).convert("RGB"))  # imagenette val is already 224
    patch = np.asarray(Image.open(out / "layers" / "relu3" / "patches" / f"u{u:04d}_r{r}.png"))
    cy0, cx0 = max(y0, 0), max(x0, 0)
    inside = src[cy0:min(y1, 224), cx0:min(x1, 224)]
    np.testing.assert_array_equal(patch[cy0 - y0:cy0 - y0 + inside.shape[0], cx0 - x0:cx0 - x0 + inside.shape[1]],
                                  inside)
    # rows / columns outside the image are the grey fill, not shifted image content
    if y0 < 0:
        assert (patch[: -y0] == 128).all()
    if x0 < 0:
        assert (patch[:, : -x0] == 128).all()


def test_a_run_re_renders_from_its_arrays(five_layer_run, tmp_path):
    out, _, _ = five_layer_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("wandb"))
    d = copy / "layers" / "relu3"
    shutil.rmtree(d / "deconvnet")
    shutil.rmtree(d / "units")
    shutil.rmtree(copy / "figures")
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "render.py"), str(copy)], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (copy / "figures" / "relu3_deconvnet.png").is_file()
    for f in sorted((out / "layers" / "relu3" / "deconvnet").glob("*.png")):  # the same pictures, byte for byte
        assert (d / "deconvnet" / f.name).read_bytes() == f.read_bytes()
    assert len(list((d / "units").glob("*.png"))) == len(list((out / "layers" / "relu3" / "units").glob("*.png")))


def test_second_layer_reuses_the_mining_cache(five_layer_run, tmp_path):
    out, cache, _ = five_layer_run
    before = sorted(p.name for p in cache.iterdir())
    run(["layer=conv2", "data.limit=14", "k=3", "units=[0,3]", "overview_units=1", "unit_figures=false",
         f"hydra.run.dir={tmp_path}", f"paths.cache_dir={cache}", *TINY])
    assert sorted(p.name for p in cache.iterdir()) == before
    a = np.load(out / "layers" / "relu2" / "topk.npz")
    b = np.load(tmp_path / "layers" / "relu2" / "topk.npz")
    np.testing.assert_array_equal(b["units"], [0, 3])
    np.testing.assert_array_equal(b["image"], a["image"][[0, 3]])
    # both listed units are rendered; the overview figure shows the first overview_units of them; no unit images
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["layers"]["relu2"]["overview_units"] == [0] and summary["layers"]["relu2"]["units"] == 2
    assert len(list((tmp_path / "layers" / "relu2" / "deconvnet").glob("u0003_r*.png"))) == 3
    assert not (tmp_path / "layers" / "relu2" / "units").exists() and summary["unit_figures"] is False
    on_disk = sum(f.stat().st_size for f in (tmp_path / "layers" / "relu2").rglob("*") if f.is_file())
    assert summary["layers"]["relu2"]["disk_mb"] == round(on_disk / 1e6, 1)


def test_flat_folder_of_odd_images_and_all_methods(tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 180, 3), np.uint8)).save(data / "tall.jpg")
    Image.fromarray(rng.integers(0, 255, (90, 400, 3), np.uint8)).save(data / "wide.png")
    Image.fromarray(rng.integers(0, 255, (256, 256), np.uint8), "L").save(data / "grey.bmp")
    Image.fromarray(rng.integers(0, 255, (240, 240, 4), np.uint8), "RGBA").save(data / "alpha.webp")
    (data / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    p = run(["data=folder", f"data.root={data}", "layer=3", "units=[1,2]", "k=2", "compare_methods=true",
             f"hydra.run.dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", *TINY])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 5
    assert summary["skipped"] == [str(data / "broken.jpg")]
    assert "1 unreadable images skipped" in p.stdout
    assert summary["methods"] == ["deconvnet", "guided", "gradient"]
    d = out / "layers" / "relu3"
    for m in summary["methods"]:
        assert len(list((d / m).glob("*.png"))) == 4
        assert (out / "figures" / f"relu3_{m}.png").is_file()
    z = np.load(d / "topk.npz")
    broken = json.loads((out / "images.json").read_text()).index(str(data / "broken.jpg"))
    assert (z["image"] != broken).all() and (z["image"] >= 0).all()
    dec, grad = np.load(d / "deconvnet.npy"), np.load(d / "gradient.npy")
    assert not np.allclose(dec, grad)


@pytest.mark.parametrize("model, layer, rf", [("alexnet", "2", 51), ("vgg16", "conv2_1", 10)])
def test_torchvision_models_run_end_to_end(tmp_path, model, layer, rf, imagenette):
    run([f"model={model}", "model.weights=random", f"layer={layer}", "units=[0,1]", "data.limit=4", "k=2", "data.size=96",
         f"hydra.run.dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", *TINY[3:]])
    summary = json.loads((tmp_path / "summary.json").read_text())
    (name, info), = summary["layers"].items()
    assert summary["model"] == model and info["rf"] == rf and info["units"] == 2
    assert np.load(tmp_path / "layers" / name / "deconvnet.npy").shape == (2, 2, 3, rf, rf)


def test_sweep_gives_one_run_directory_per_job(tmp_path, imagenette):
    run(["-m", "layer=1,2", "data.limit=6", "k=2", "units=[0]", "gallery=false", f"hydra.sweep.dir={tmp_path}",
         f"paths.cache_dir={tmp_path / 'cache'}", *TINY])
    dirs = sorted(p for p in tmp_path.iterdir() if (p / "summary.json").is_file())
    assert len(dirs) == 2
    assert [list(json.loads((d / "summary.json").read_text())["layers"]) for d in dirs] == [["relu1"], ["relu2"]]


@pytest.mark.parametrize("override, message", [
    ("layer=conv9", "layer 'conv9' does not exist"),
    ("data.root=/nonexistent/folder", "does not exist"),
    ("model.checkpoint=BAD", "does not fit"),
    ("model.checkpoint=CORRUPT", "is not a PyTorch checkpoint"),
    ("k=0", "k=0: the number of top images per unit must be at least 1"),
    ("k=-1", "k=-1: the number of top images per unit must be at least 1"),
    ("method=foo", "method='foo': use one of deconvnet, guided, gradient"),
    ("display=foo", "display='foo': use one of symmetric, minmax"),
    ("unit_figures=maybe", "unit_figures='maybe': use true or false"),
    ("units=[0,9999]", "units=[9999]: relu4 has units 0.."),
    ("model=vgg16", "model.weights=random"),
    ("hydra.run.dir=/proc/zf-cannot-write", "cannot write the run directory /proc/zf-cannot-write"),
])
def test_bad_input_fails_with_one_clear_line_before_any_data_pass(tmp_path, override, message, request):
    """Each user mistake ends the program with exit status 2 and one line on stderr naming it, no traceback, and
    before the mining pass starts (no mining cache folder is made)."""
    if not override.startswith("data.root"):
        request.getfixturevalue("imagenette")
    args = [override, "data.limit=4", f"hydra.run.dir={tmp_path / 'o'}", f"paths.cache_dir={tmp_path / 'c'}",
            *TINY]
    if override.startswith("hydra.run.dir"):
        args = [a for a in args if not a.startswith("hydra.run.dir=") or a == override]
    if override.endswith(("BAD", "CORRUPT")):
        from zf.net.models import zfnet

        bad = tmp_path / "other.pt"
        if override.endswith("BAD"):
            torch.save(zfnet(num_classes=3, width=0.0625).state_dict(), bad)
        else:
            bad.write_bytes(b"PK\x03\x04 truncated")
        args = [a for a in args if a not in ("model.checkpoint=null", "model.weights=random")]
        args[0] = f"model.checkpoint={bad}"
    if override == "model=vgg16":
        args = [a for a in args if not a.startswith(("model.checkpoint", "model.weights", "model.arch"))]
    p = run(args, check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [l for l in p.stderr.splitlines() if l.strip() and "Warning" not in l and "warnings.warn" not in l]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "weights_only=False" not in p.stderr
    assert not list((tmp_path / "c").glob("mine-*"))  # found before the data pass
    if "conv9" in override:
        assert "conv4" in p.stderr  # the error lists the layers that exist


def _primary(path: Path) -> str:
    text = yaml.safe_load(path.read_text()) or {}
    return "train" if "train" in text or "export" in text else "run"


@pytest.mark.parametrize("path", sorted((CONFIGS / "experiment").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_config_composes(path):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(_primary(path), overrides=[f"experiment={path.stem}"])
    assert cfg.paths.cache_dir
    if "task" in cfg:
        from hydra.utils import get_method

        assert callable(get_method(cfg.task._target_)) and cfg.task._target_.startswith("zf.edge.tasks.")


@pytest.mark.parametrize("model", ["zfnet", "alexnet", "vgg16"])
@pytest.mark.parametrize("data", ["imagenette", "folder"])
def test_model_and_data_groups_compose(model, data):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("run", overrides=[f"model={model}", f"data={data}", "data.root=/x"])
        assert cfg.model.name == model
        cfg = compose("train", overrides=[f"model={model}"])
        assert cfg.train.epochs > 0


@pytest.mark.parametrize("model", ["resnet18", "vgg16_trunk"])
def test_main_job_on_graph_and_real_weights(tmp_path, model, imagenette, request):
    """The main job end to end, tiny, on a ResNet-18 (no ``features`` stack: module paths, graph engine) and on the
    real ImageNet VGG-16 trunk (activations in the hundreds): every stored projection finite, nothing saturated to
    inf, figures and gallery written, and what stayed random recorded."""
    if model == "resnet18":
        args = ["model=torchvision", "model.arch_name=resnet18", "model.weights=random",
                "layer=[layer1.1.relu,layer2]", "data.size=64"]
        layers = ["layer1.1.relu", "layer2"]
    else:
        weights = request.getfixturevalue("shared_models") / "vgg16_imagenet_features.pth"
        args = ["model=vgg16", f"model.weights={weights}", "layer=[conv2_2,conv5_3]", "data.size=64"]
        layers = ["relu2_2", "relu5_3"]
    run(args + ["mine_layers=[]", "units=[0,1]", "data.limit=4", "k=2", "compare_methods=true",
                f"hydra.run.dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none",
                "progress=false", "num_workers=0", "batch_size=4"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["layers"]) == layers
    if model == "vgg16_trunk":
        assert summary["weights_random"] and all(k.startswith("classifier.") for k in summary["weights_random"])
        peak = max(float(np.load(tmp_path / "layers" / l / "deconvnet_scale.npy").max()) for l in layers)
        assert peak > 100   # real activation scale reaches the projections
    for layer in layers:
        d = tmp_path / "layers" / layer
        for m in ("deconvnet", "guided", "gradient"):
            proj = np.load(d / f"{m}.npy").astype(np.float32) * np.load(d / f"{m}_scale.npy")[..., None, None, None]
            assert proj.shape[:3] == (2, 2, 3) and np.isfinite(proj).all() and np.abs(proj).max() > 0
            if layer == "relu5_3":  # its 196 px fields on 64 px images are stored cut to the image
                assert proj.shape[3:] == (64, 64)
            assert (tmp_path / "figures" / f"{layer}_{m}.png").is_file()
        assert len(list((d / "deconvnet").glob("*.png"))) == 4
    assert (tmp_path / "gallery" / f"layer_{layers[1]}.html").is_file()
