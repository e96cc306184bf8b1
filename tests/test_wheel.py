"""The installed package (a wheel, not an editable install) carries the shipped checkpoint and the Hydra configs:
build the wheel, install it into a folder outside the checkout, and from a cwd outside the checkout load the default
model and check its output on a fixed input equals the checkout's; then run the ``zf`` command it installs (``zf
run`` on Imagenette downloaded on first use from a local server, ``zf render``, ``zf gallery``, ``zf stats``,
``zf train``).
About 12 s for the wheel, 50 s for the commands (``-m slow``) (pip builds and installs offline, no dependencies)."""
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from zf.net.models import load_zfnet

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys, torch
import zf, zf.net.models
assert not zf.__file__.startswith({root!r}), zf.__file__
m = zf.net.models.load_zfnet()
torch.manual_seed(0)
x = torch.randn(2, 3, 224, 224)
with torch.no_grad():
    torch.save({{"out": m(x), "file": str(zf.net.models.DEFAULT_CHECKPOINT),
                "snapshots": sorted(p.name for p in zf.net.models.EVOLUTION_SNAPSHOTS.glob("*.pt"))}}, sys.argv[1])
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(site folder the wheel is installed into, the wheel)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    src = tmp_path / "src"  # build from a copy, so the checkout gets no build/ or egg-info
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # zf/configs links to configs/: copytree follows it, as a wheel built from an sdist or a clone would see it
    shutil.copytree(ROOT / "zf", src / "zf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("zf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"zf/weights/zfnet_imagenette.pt", "zf/weights/zfnet_imagenette.json", "zf/weights/MODEL_CARD.md",
            "zf/weights/evolution/features_epoch050.pt", "zf/explore/static/index.html",
            "zf/explore/static/explore.js", "zf/explore/static/explore.css"} <= names
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp_path)
    shutil.rmtree(src)  # nothing may come from the source copy
    assert "zf/configs/run.yaml" in names and "zf/configs/hydra/default.yaml" in names
    return site, wheel


def test_wheel_ships_the_default_checkpoint(tmp_path, installed):
    site, _ = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    script = elsewhere / "probe.py"
    script.write_text(PROBE.format(root=str(ROOT)))
    subprocess.run([sys.executable, str(script), str(tmp_path / "out.pt")], check=True, cwd=elsewhere, env=env)
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert got["file"].startswith(str(site))
    assert got["snapshots"] == [f"features_epoch{e:03d}.pt" for e in (1, 2, 5, 10, 20, 50)]
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = load_zfnet()(x)
    assert torch.equal(got["out"], want)


@pytest.mark.slow  # 50 s: five commands, each importing torch
def test_zf_command_from_the_wheel_outside_the_checkout(tmp_path, installed):
    """``zf run`` from the installed wheel, in an empty folder without ``../shared``: Imagenette comes from a local
    server into ``ZF_HOME`` (once), outputs land under ``./outputs``; then ``zf render``, ``zf gallery`` and a tiny
    ``zf train`` on the same data, and an unknown command is one line."""
    from httpserve import Server, imagenette_tarball

    site, _ = installed
    tgz = imagenette_tarball()
    server = Server({"/imagenette2-320.tgz": tgz})
    home = tmp_path / "somewhere"  # no ../shared beside it
    home.mkdir()
    env = {"PATH": f"{site / 'bin'}:/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "1", "ZF_HOME": str(tmp_path / "zfhome"), "MPLBACKEND": "Agg", "WANDB_SILENT": "true"}
    data = [f"data.url={server.url}/imagenette2-320.tgz", f"data.md5={hashlib.md5(tgz).hexdigest()}"]

    def zf(*args, check=True):
        p = subprocess.run(["zf", *args], cwd=home, env=env, capture_output=True, text=True, timeout=300)
        if check:
            assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        return p

    try:
        assert "render" in zf("--help").stdout
        zf("run", "layer=2", "units=[0,1]", "k=2", "logger=none", "progress=false", "num_workers=0", *data)
        (run,) = (home / "outputs" / "run").iterdir()
        summary = json.loads((run / "summary.json").read_text())
        assert summary["n_images"] == 4 and list(summary["layers"]) == ["relu2"]
        assert (tmp_path / "zfhome" / "imagenette2-320" / "val").is_dir() and server.gets() == 2
        assert "relu2" in zf("render", str(run), "--no-gallery").stdout
        assert zf("gallery", str(run)).stdout.strip().endswith("index.html")
        assert "| relu2 | deconvnet |" in zf("stats", str(run)).stdout
        zf("train", "train.epochs=1", "model.arch.width=0.0625", "data.size=64", "data.resize=64", "logger=none",
           "train.batch_size=4", "train.progress=false", "train.snapshot_epochs=[]", *data)
        (trained,) = (home / "outputs" / "train").iterdir()
        assert (trained / "checkpoints" / "last.pt").is_file()
        assert server.gets() == 2  # the data came from the cache the first command filled
        p = zf("rnu", check=False)
        assert p.returncode == 2 and p.stderr.strip() == (
            "error: zf rnu: no such command (did you mean run?); commands: run, train, render, gallery, stats, "
            "explore")
    finally:
        server.close()
