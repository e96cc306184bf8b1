"""The installed package (a wheel, not an editable install) carries the shipped checkpoint: build the wheel, install
it into a folder outside the checkout, and from a cwd outside the checkout load the default model and check its
output on a fixed input equals the checkout's.  About 12 s (pip builds and installs offline, no dependencies)."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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


def test_wheel_ships_the_default_checkpoint(tmp_path):
    src = tmp_path / "src"  # build from a copy, so the checkout gets no build/ or egg-info
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
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
