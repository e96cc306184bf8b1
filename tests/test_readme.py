"""Every ``python scripts/...`` command in the README's code blocks runs as written, apart from arguments that make it
small, which ``RUNS`` lists per command (keyed by the command as the README writes it).  A README command without an
entry fails ``test_every_readme_command_has_an_entry``, and an entry without a README command fails it too: whoever
adds a command to the README adds its entry here.

The commands run in a project folder of their own (``PROJECT_ROOT``; ``scripts/`` and ``configs/`` linked in) with no
``../shared`` beside it, so the data comes from a local HTTP server (a tiny Imagenette-shaped tarball, downloaded
once into ``ZF_HOME``) and ``model.weights=download`` from a local server too, through torchvision's weights entry
(changed in a ``sitecustomize``).  Weights files the README names as a user's own become ``random`` or a small file
written here, and the torch hub cache (``TORCH_HOME``) holds the small files ``model.weights=cache`` reads.

Each entry: ``add`` (arguments appended), ``sub`` (replacements of words of the command: a user's file, a
placeholder such as ``<date>``), ``slow`` (runs only with ``-m slow``).  Placeholders: ``<date>`` is a main-job run,
``<run>`` a training run (made by the README's own first commands of each script).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from httpserve import Server, imagenette_tarball

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["logger=none", "progress=false", "num_workers=0", "batch_size=4"]
RUN = SMALL + ["units=[0,1]", "k=2"]
TRAIN = ["logger=none", "train.epochs=1", "model.arch.width=0.0625", "data.size=64", "data.resize=64",
         "train.batch_size=4", "train.progress=false", "train.snapshot_epochs=[]", "train.sizes=null"]

#: README command -> how it is made small.  ``{tmp}`` is the test's folder.
RUNS: dict[str, dict] = {
    "python scripts/run.py layer=4": {"add": RUN, "slow": False},
    "python scripts/run.py layer=[1,2,3,4,5]": {"add": RUN},
    "python scripts/run.py -m layer=1,2,3,4,5": {"add": RUN},
    "python scripts/run.py layer=3 units=[0,5,7] k=16 method=guided": {"add": SMALL},
    "python scripts/run.py layer=5 compare_methods=true": {"add": RUN},
    "python scripts/run.py layer=5 units=overview": {"add": SMALL + ["k=2", "overview_units=2"]},
    "python scripts/run.py list_layers=true model=...": {"sub": {"model=...": "model=alexnet model.weights=random"},
                                                         "add": SMALL + ["data.size=64"]},
    "python scripts/run.py data=folder data.root=~/photos layer=2": {"sub": {"~/photos": "{tmp}/photos"}, "add": RUN},
    "python scripts/run.py model=vgg16 model.weights=~/vgg16-397923af.pth layer=5": {
        "sub": {"~/vgg16-397923af.pth": "random"}, "add": RUN},
    "python scripts/run.py model=alexnet model.weights=cache layer=2": {"add": RUN},
    "python scripts/run.py model=vgg16 model.weights=../shared/models/vgg16_imagenet_features.pth layer=5": {
        "sub": {"../shared/models/vgg16_imagenet_features.pth": "{tmp}/vgg16_features.pth"}, "add": RUN},
    "python scripts/run.py model=torchvision model.arch_name=vgg19 model.weights=cache layer=5": {"add": RUN},
    "python scripts/run.py model=timm model.arch_name=vgg16 model.weights=model.safetensors layer=5": {
        "sub": {"model.safetensors": "random"}, "add": RUN},
    "python scripts/run.py model=custom model.target=my_pkg.nets.MyNet model.weights=my_net.pth layer=block2": {
        "sub": {"my_net.pth": "{tmp}/my_net.pth"}, "add": RUN},
    "python scripts/run.py model.checkpoint=outputs/train/<run>/checkpoints/last.pt layer=4": {"add": RUN},
    "python scripts/render.py outputs/run/<date> --display minmax": {},
    "python scripts/gallery.py outputs/run/<date>": {},
    "python scripts/projection_stats.py outputs/run/<date>": {},
    "python scripts/run.py model=torchvision model.arch_name=resnet50 model.weights=download list_layers=true": {
        "add": SMALL + ["data.size=64"]},
    "python scripts/run.py model=torchvision model.arch_name=resnet50 model.weights=~/resnet50.pth "
    "layer=[layer2,layer3]": {"sub": {"~/resnet50.pth": "random"}, "add": RUN + ["data.size=64"]},
    "python scripts/run.py model=vgg16 model.weights=../shared/models/vgg16_imagenet_features.pth "
    "layer=[conv2_2,conv3_3,conv4_3,conv5_3] units=overview compare_methods=true": {
        "sub": {"../shared/models/vgg16_imagenet_features.pth": "{tmp}/vgg16_features.pth"},
        "add": SMALL + ["k=2", "overview_units=2", "data.size=64"]},
    "python scripts/run.py model=timm model.arch_name=convnext_tiny model.weights=model.safetensors layer=stages.2": {
        "sub": {"model.safetensors": "random"}, "add": RUN + ["data.size=64"]},
    "python scripts/run.py model=timm model.arch_name=tf_efficientnet_lite0 model.weights=random list_layers=true": {
        "add": SMALL + ["data.size=64"]},
    "python scripts/run.py model=custom model.target=my_pkg.nets.MyNet model.weights=my_net.pth layer=block3.relu": {
        "sub": {"my_net.pth": "{tmp}/my_net.pth"}, "add": RUN},
    "python scripts/run.py layer=[2,5] units=[0,1,2,3,4,5,6,7] data.limit=200 hydra.run.dir=outputs/run/demo": {
        "sub": {"data.limit=200": "data.limit=12", "units=[0,1,2,3,4,5,6,7]": "units=[0,1]"},
        "add": SMALL + ["k=2"]},
    # the explorer serves until stopped: the test waits for its address, reads the page, then stops it
    "python scripts/explore.py run=outputs/run/demo": {"add": ["port=0"], "serve": True},
    "python scripts/explore.py run=outputs/run port=9000": {"sub": {"port=9000": "port=0"}, "serve": True},
    "python scripts/run.py experiment=sanity layer=4 sanity.n_units=4": {
        "sub": {"sanity.n_units=4": "sanity.n_units=2"}, "add": SMALL + ["k=2", "data.limit=12"]},
    "python scripts/run.py experiment=sanity model=vgg16 model.weights=../shared/models/vgg16_imagenet_features.pth "
    "layer=conv4_3 mine_layers=[] data.limit=300 sanity.modes=[cascade]": {
        "sub": {"../shared/models/vgg16_imagenet_features.pth": "{tmp}/vgg16_features.pth", "data.limit=300":
                "data.limit=6", "sanity.n_units=4": "sanity.n_units=2"},
        "add": SMALL + ["k=2", "data.size=64", "sanity.n_units=2"]},
    "python scripts/train.py": {"add": TRAIN},
    "python scripts/train.py experiment=default_model": {"add": TRAIN},
    "python scripts/train.py hydra.run.dir=outputs/train/<run>": {"add": TRAIN},
}

MY_NET = '''
from collections import OrderedDict
from torch import nn


def block(cin, cout):
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, 3, padding=1), relu=nn.ReLU(), pool=nn.MaxPool2d(2)))


class MyNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.block1, self.block2, self.block3 = block(3, 8), block(8, 16), block(16, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(x)))
        return self.head(x.mean((2, 3)))
'''


def readme_commands(text: str | None = None) -> list[str]:
    """The ``python scripts/...`` commands of the README's fenced code blocks, in order, each once: continuation
    lines joined, comments dropped, whitespace collapsed (``.venv/bin/python`` counts as ``python``)."""
    text = (ROOT / "README.md").read_text() if text is None else text
    found = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0]
            for m in re.finditer(r"(?:^|[\s;&|])(?:\S*/)?python3? (scripts/\S+\.py.*?)(?=$|&&|;|\|)", line):
                cmd = " ".join(("python " + m.group(1)).split())
                if cmd not in found:
                    found.append(cmd)
    return found


def test_every_readme_command_has_an_entry():
    commands = readme_commands()
    assert len(commands) >= 20
    assert [c for c in commands if c not in RUNS] == [], "README commands with no entry in tests/test_readme.RUNS"
    assert [c for c in RUNS if c not in commands] == [], "RUNS entries for commands no longer in the README"


def test_readme_commands_are_parsed_as_written():
    text = "```bash\nbash scripts/setup.sh && .venv/bin/python scripts/run.py layer=4    # set up\n" \
           "python scripts/run.py a=1 \\\n    b=2  # note\npython benchmarks/x.py\n```\n`python scripts/inline.py`\n"
    assert readme_commands(text) == ["python scripts/run.py layer=4", "python scripts/run.py a=1 b=2"]


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder without ../shared, the servers, the environment and the small files the commands use."""
    import torchvision.models as tvm

    tmp = tmp_path_factory.mktemp("readme")
    proj = tmp / "project"
    proj.mkdir()
    for name in ("scripts", "configs"):
        (proj / name).symlink_to(ROOT / name)
    tgz = imagenette_tarball()
    files = {"/imagenette2-320.tgz": tgz}
    # model.weights=download for resnet50: a small state dict (conv1 only) named with its SHA-256 prefix
    data = _saved({"conv1.weight": torch.randn(64, 3, 7, 7)})
    files[f"/resnet50-{hashlib.sha256(data).hexdigest()[:8]}.pth"] = data
    server = Server(files)
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import torchvision.models as m\n"
        f"m.ResNet50_Weights.DEFAULT.value.url = {server.url + list(files)[1]!r}\n")
    (site / "my_pkg").mkdir()
    (site / "my_pkg" / "__init__.py").write_text("")
    (site / "my_pkg" / "nets.py").write_text(MY_NET)
    sys.path.insert(0, str(site))
    try:
        from my_pkg.nets import MyNet
    finally:
        sys.path.remove(str(site))
    torch.save(MyNet().state_dict(), tmp / "my_net.pth")
    features = tvm.vgg16().features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, tmp / "vgg16_features.pth")
    hub = tmp / "torch" / "hub" / "checkpoints"  # what model.weights=cache finds: a part of each model, small
    hub.mkdir(parents=True)
    torch.save({"features.0.weight": torch.randn(64, 3, 11, 11)}, hub / Path(tvm.AlexNet_Weights.DEFAULT.url).name)
    torch.save({"features.0.weight": torch.randn(64, 3, 3, 3)}, hub / Path(tvm.VGG19_Weights.DEFAULT.url).name)
    photos = tmp / "photos"
    photos.mkdir()
    from PIL import Image
    for i, size in enumerate([(300, 200), (120, 160), (224, 224)]):
        Image.new("RGB", size, (60 * i, 100, 30)).save(photos / f"p{i}.png")
    env = {**os.environ, "PROJECT_ROOT": str(proj), "ZF_HOME": str(tmp / "zfhome"), "TORCH_HOME": str(tmp / "torch"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]), "MPLBACKEND": "Agg", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "2"}
    env.pop("ZF_DATA", None)
    net = [f"data.url={server.url}/imagenette2-320.tgz", f"data.md5={hashlib.md5(tgz).hexdigest()}"]
    yield {"tmp": tmp, "proj": proj, "env": env, "server": server, "net": net, "made": {}}
    server.close()


def run_readme(project, command: str) -> subprocess.CompletedProcess:
    entry = RUNS[command]
    made = project["made"]
    if "<run>" in command and "<run>" not in made:
        run_readme(project, "python scripts/train.py")
    if "<date>" in command and "<date>" not in made:
        run_readme(project, "python scripts/run.py layer=4")
    words = shlex.split(command)
    subs = {**entry.get("sub", {}), **made}
    words = [w for word in words for w in _sub(word, subs, project["tmp"]).split(" ")]
    script = words[1]
    args = words[2:] + list(entry.get("add", []))
    if script in ("scripts/run.py", "scripts/train.py") and not any(a.startswith("data=folder") for a in args):
        args += project["net"]  # the data's URL: the local server
    if entry.get("serve"):
        return serve_readme(project, command, script, args)
    before = {p: set((project["proj"] / "outputs" / p).glob("*")) for p in ("run", "train")}
    p = subprocess.run([sys.executable, script, *args], cwd=project["proj"], env=project["env"], capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, f"{command}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    for kind, key in (("run", "<date>"), ("train", "<run>")):
        new = set((project["proj"] / "outputs" / kind).glob("*")) - before[kind] - {project["proj"] / "outputs" /
                                                                                    kind / "multirun"}
        if new and key not in made:
            made[key] = max(new).name
    return p


def serve_readme(project, command: str, script: str, args: list) -> subprocess.CompletedProcess:
    """A command that serves until stopped (the explorer): wait for the address it prints, read its page, stop it."""
    import urllib.request

    if "run=outputs/run/demo" in command and not (project["proj"] / "outputs" / "run" / "demo").is_dir():
        run_readme(project, next(c for c in RUNS if "hydra.run.dir=outputs/run/demo" in c))
    p = subprocess.Popen([sys.executable, script, *args], cwd=project["proj"], env=project["env"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [p.stdout.readline() for _ in range(2)]
        assert lines[1].startswith("zf explorer: http://127.0.0.1:"), f"{command}\n{lines}\n{p.stderr.read()[-3000:]}"
        with urllib.request.urlopen(lines[1].split()[2] + "/", timeout=60) as r:
            assert r.status == 200 and b"/static/explore.js" in r.read()
    finally:
        p.terminate()
        p.wait(30)
        p.stdout.close()
        p.stderr.close()
    return subprocess.CompletedProcess(p.args, 0, "".join(lines), "")


def _sub(word: str, subs: dict, tmp: Path) -> str:
    for old, new in subs.items():
        word = word.replace(old, new.replace("{tmp}", str(tmp)))
    return word


@pytest.mark.parametrize("command", [pytest.param(c, marks=[pytest.mark.slow] if RUNS.get(c, {}).get("slow", True)
                                                  else [], id=c[7:]) for c in readme_commands()])
def test_readme_command_runs(project, command):
    if command not in RUNS:
        pytest.fail(f"no entry in RUNS for the README command {command!r}")
    p = run_readme(project, command)
    if command == "python scripts/run.py layer=4":  # the quick start: data downloaded once, without ../shared
        assert (project["tmp"] / "zfhome" / "imagenette2-320" / "val").is_dir()
        assert project["server"].gets("/imagenette2-320.tgz") == 2
        assert "summary" in p.stdout or "gallery" in p.stdout
    if "model.weights=download" in command:
        assert list((project["tmp"] / "torch" / "hub" / "checkpoints").glob("resnet50-*.pth"))
