"""The bad inputs and faults of issue 17 (an outside tester's list), one parametrised test per group.

Most cases run in-process: the config is composed with Hydra's compose API and run through ``zf.edge.runtime.cli`` (what
``scripts/run.py`` and ``scripts/train.py`` call), so that a case costs no interpreter start.  Only what happens in
Hydra's own ``main`` (a misspelt key, a missing config group, a sweep) starts a subprocess.  Every refused case
asserts the exit status, one ``error:`` line on stderr naming the offending key or file, no traceback, and that no
mining-cache entry and no output file was left.  The odd images are made here.
"""
from __future__ import annotations

import errno
import json
import os
import runpy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from zf import data as zdata
from zf.edge.runtime import cli, dispatch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
#: A tiny random ZF net at 64 px: enough for every check, about a second per mining pass of 20 images.
TINY = ["model.checkpoint=null", "model.weights=random", "model.arch.width=0.0625", "model.arch.fc=[32,32]",
        "data.size=64", "logger=none", "progress=false", "num_workers=0", "batch_size=8", "gallery=false",
        "unit_figures=false", "mine_layers=[]", "layer=1", "units=[0]", "k=3"]
TRAIN_TINY = ["model.arch.width=0.0625", "model.arch.fc=[32,32]", "data.size=56", "data.resize=64", "logger=none",
              "train.batch_size=4", "train.epochs=1", "train.progress=false", "train.snapshot_epochs=[]"]


def jpegs(folder: Path, n: int = 20, size=(40, 48), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i:02d}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    """20 small JPEGs, no sub-folders."""
    return jpegs(tmp_path_factory.mktemp("flat") / "imgs")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """root/{train,val}/c{0,1}/*.jpg, 4 + 2 images per class."""
    root = tmp_path_factory.mktemp("tree")
    for split, n in (("train", 4), ("val", 2)):
        for c in range(2):
            jpegs(root / split / f"c{c}", n, size=(64, 64), seed=c)
    return root


def job(config: str, overrides: list[str], tmp: Path, capsys) -> tuple[int, str, str]:
    """Compose ``config`` with ``overrides`` (plus an output and cache folder under ``tmp``) and run it as the
    script would: (exit status, stdout, stderr)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config, overrides=[f"paths.output_dir={tmp / 'out'}", f"paths.cache_dir={tmp / 'cache'}",
                                         *overrides])
    capsys.readouterr()
    code = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cli(dispatch, cfg)
        except SystemExit as e:
            code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(code: int, err: str, names: str, tmp: Path | None = None, status: int = 2) -> str:
    """The checks every refused case shares; returns the error line."""
    assert code == status, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(("error: ", "interrupted: ")), err[-2000:]
    assert names in lines[0], lines[0]
    if tmp is not None:
        assert not list((tmp / "cache").glob("mine-*/*.npz")) and not list((tmp / "cache").glob("mine-*/done.json"))
        assert not [p for p in (tmp / "out").rglob("*") if p.is_file()], list((tmp / "out").rglob("*"))
    return lines[0]


# --- 1. the main job's values: one line, exit 2, before any data pass ------------------------------------------

CONFIG_CASES = [
    ("k=1.5", "k=1.5"),
    ("data.limit=-5", "data.limit=-5"),
    ("data.limit=abc", "data.limit='abc'"),
    ("data.size=0", "data.size=0"),
    ("units=[]", "units=[]"),
    ("units=foo", "units='foo'"),
    ("units=[a,b]", "units=['a', 'b']"),
    ("units=overviews", "units='overviews'"),
    ("layer=[]", "layer=[]"),
    ("dpi=0", "dpi=0"),
    ("seed_mode=foo", "seed_mode='foo'"),
    ("device=cuda", "device=cuda"),
    ("paths.cache_dir=FILE", "paths.cache_dir="),
    ("paths.cache_dir=/proc/zf-no", "paths.cache_dir=/proc/zf-no"),
    ("split=foo", "split='foo'"),
    ("data.val_split=vall", "data.val_split=vall"),
    ("RESNET layer=fc", "layer=fc"),
    ("RESNET layer=layer1 mine_layers=[1,2]", "mine_layers="),
]


@pytest.mark.parametrize("override, names", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_main_job_refuses_bad_values_in_one_line(override, names, flat, tree, tmp_path, capsys):
    if override == "device=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = [*TINY, f"data.root={flat}", "data=folder"]
    if override == "paths.cache_dir=FILE":
        (tmp_path / "afile").write_text("x")
        override = f"paths.cache_dir={tmp_path / 'afile'}"
    if override.startswith(("split=", "data.val_split")):
        args = [a for a in args if not a.startswith(("data.root", "data="))] + ["data=imagenette",
                                                                               f"data.root={tree}"]
    if override.startswith("RESNET"):
        overrides = override.split()[1:]
        drop = ("model.", "units") + (("mine_layers",) if len(overrides) > 1 else ())
        args = [a for a in args if not a.startswith(drop)]
        args = ["model=torchvision", "model.arch_name=resnet18", "model.weights=random", *args]
    else:
        overrides = [override]
    code, _, err = job("run", [*args, *overrides], tmp_path, capsys)
    refused(code, err, names, None if "cache_dir" in override else tmp_path)


# --- 2. images, folders and what the job reads -------------------------------------------------------------------

def odd_images(folder: Path) -> dict[str, np.ndarray]:
    """Images PIL's ``convert("RGB")`` gets wrong or that are unusual, and the RGB each should read as."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    expect = {}
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(folder / "grey16.png")
    expect["grey16.png"] = np.round(ramp * 255)
    Image.fromarray(ramp.astype(np.float32)).save(folder / "float.tif")
    expect["float.tif"] = np.round(ramp * 255)
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(folder / "cmyk.tif")
    expect["cmyk.tif"] = np.array([255, 0, 0])
    pal = Image.new("P", (32, 32))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putdata([1] * (32 * 32))
    pal.save(folder / "palette.png")
    expect["palette.png"] = np.array([200, 100, 50])
    frames = [Image.new("RGB", (32, 32), (v, 0, 0)) for v in (255, 0, 0)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    expect["anim.gif"] = np.array([255, 0, 0])  # the first frame
    return expect


def test_odd_images_read_with_their_real_range(tmp_path):
    """16-bit greyscale read all white and float TIFFs all black: each reads as its real range scaled to 8 bits."""
    for name, want in odd_images(tmp_path).items():
        got = np.asarray(zdata.read_image(tmp_path / name)).astype(float)
        want = want[..., None] if want.ndim == 2 else want
        assert np.abs(got - want).max() <= 1, name


@pytest.mark.parametrize("case", ["loop", "loop_in_tree", "top_and_nested"])
def test_folder_structures(case, tmp_path, capsys):
    """A symlink loop lists every file once (by resolved path); images at the top and in sub-folders are refused,
    naming both, in one line before any pass."""
    root = tmp_path / "d"
    if case == "loop":
        jpegs(root, 20)
        (root / "self").symlink_to(".")
        files = zdata.list_images(root)
        assert len(files.paths) == 20 and files.classes == []  # not one class "self"
    elif case == "loop_in_tree":
        jpegs(root / "a", 10)
        jpegs(root / "b", 10, seed=1)
        (root / "self").symlink_to(".")
        files = zdata.list_images(root)
        assert len(files.paths) == 20 and files.classes == ["a", "b"]
    else:
        jpegs(root, 5)
        jpegs(root / "sub", 15, seed=1)
        code, _, err = job("run", [*TINY, "data=folder", f"data.root={root}"], tmp_path, capsys)
        line = refused(code, err, str(root), tmp_path)
        assert "5 images at its top" in line and "15 in sub-folders (sub)" in line


def test_odd_images_and_skipped_files_in_the_job_counts(tmp_path, capsys):
    """The job reads the odd images, and its summary line counts the images it read, not the skipped ones
    ("top 3 of 12" for 10 readable files and 2 broken ones)."""
    root = jpegs(tmp_path / "d", 5)
    odd_images(root)
    for name in ("bad1.jpg", "bad2.png"):
        (root / name).write_bytes(b"not an image")
    code, out, err = job("run", [*TINY, "data=folder", f"data.root={root}"], tmp_path, capsys)
    assert code == 0, err[-3000:]
    assert "top 3 of 10 images" in out, out


@pytest.mark.parametrize("k, shown", [(30, 20), (10000, 20)])
def test_k_larger_than_the_images_is_clamped_with_a_warning(k, shown, flat, tmp_path, capsys):
    """k=10000 on 20 images was accepted (memory grew with k until the kernel killed the run); "top 30 of 20" was
    printed for k=30.  k is clamped to the number of images, with a warning."""
    with pytest.warns(UserWarning, match=f"k={k} is more than the 20 images"):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("run", overrides=[f"paths.output_dir={tmp_path / 'out'}",
                                            f"paths.cache_dir={tmp_path / 'cache'}", *TINY, "data=folder",
                                            f"data.root={flat}", f"k={k}"])
        cli(dispatch, cfg)
    out = capsys.readouterr().out
    assert f"top {shown} of 20 images" in out, out
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["k"] == shown


def test_a_skipped_file_is_read_again_once_restored(tmp_path, capsys):
    """A file that failed to read stayed skipped after it was restored with the same size and time (the cache key
    did not change): a restored file is read, and the rerun's table equals a fresh run's."""
    root = jpegs(tmp_path / "d", 8)
    victim = root / "03.jpg"
    good, st = victim.read_bytes(), victim.stat()
    victim.write_bytes(b"\0" * len(good))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    args = [*TINY, "data=folder", f"data.root={root}"]
    code, out, err = job("run", args, tmp_path / "r1", capsys)
    assert code == 0 and "top 3 of 7" in out, err[-2000:]
    victim.write_bytes(good)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    args2 = [a if not a.startswith("paths.cache_dir") else a for a in args]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("run", overrides=[f"paths.output_dir={tmp_path / 'r2'}", f"paths.cache_dir={tmp_path / 'r1' / 'cache'}",
                                        *args2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli(dispatch, cfg)
    out = capsys.readouterr().out
    assert "top 3 of 8" in out, out
    fresh = job("run", args, tmp_path / "r3", capsys)
    assert fresh[0] == 0
    a, b = (np.load(tmp_path / r / "layers" / "relu1" / "topk.npz") for r in ("r2", "r3/out"))
    assert all(np.array_equal(a[f], b[f], equal_nan=True) for f in a.files)


# --- 3. models: random means random, and says so ----------------------------------------------------------------

@pytest.mark.parametrize("family", ["zfnet", "alexnet", "torchvision", "timm"])
def test_random_weights_are_random_and_said(family, capsys):
    from zf.edge.runtime import model_from_cfg

    over = {"zfnet": ["model=zfnet", "model.weights=random"],
            "alexnet": ["model=alexnet", "model.weights=random"],
            "torchvision": ["model=torchvision", "model.arch_name=resnet18", "model.weights=random"],
            "timm": ["model=timm", "model.arch_name=resnet18", "model.weights=random"]}[family]
    if family == "timm":
        pytest.importorskip("timm")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("run", overrides=over)
    model = model_from_cfg(cfg)
    assert model.zf_weights == "random"
    assert "random weights (model.weights=random)" in capsys.readouterr().out
    if family == "zfnet":  # it used to load the shipped checkpoint
        from zf.net.models import load_zfnet

        shipped = load_zfnet()
        assert not torch.equal(model.features[0].weight, shipped.features[0].weight)


def test_checkpoint_null_warns_and_timm_help_names_timm_files():
    from zf.edge.runtime import model_from_cfg
    from zf.errors import CheckpointError
    from zf.net.models import build_model

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("run", overrides=["model.checkpoint=null"])
    with pytest.warns(UserWarning, match="model.checkpoint=null: zfnet runs on random weights"):
        model_from_cfg(cfg)
    pytest.importorskip("timm")
    with pytest.raises(CheckpointError) as e:
        build_model("timm", arch_name="resnet18")
    assert "safetensors" in str(e.value) and "torchvision" not in str(e.value) and "cache" not in str(e.value)


# --- 4. training: its values before any data is read, resume with a changed config --------------------------

TRAIN_CASES = [("train.optimizer=foo", "train.optimizer='foo'"), ("train.schedule=foo", "train.schedule='foo'"),
               ("train.batch_size=0", "train.batch_size=0"), ("train.epochs=0", "train.epochs=0"),
               ("RESUME train.lr=0.5", "train.lr=0.5 (was 0.01)"),
               ("RESUME train.batch_size=8", "train.batch_size=8 (was 4)")]


@pytest.mark.parametrize("override, names", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_training_refuses_bad_values_before_reading_data(override, names, tree, tmp_path, capsys, monkeypatch):
    from zf.edge.runtime import plain

    def no_data(*a, **k):
        raise AssertionError("data was read before the config was checked")

    args = [*TRAIN_TINY, f"data.root={tree}"]
    if override.startswith("RESUME"):
        override = override.split()[1]
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            old = compose("train", overrides=[f"paths.output_dir={tmp_path / 'out'}",
                                              f"paths.cache_dir={tmp_path / 'cache'}", *args])
        (tmp_path / "out" / "checkpoints").mkdir(parents=True)
        torch.save({"config": plain(old), "epoch": 1}, tmp_path / "out" / "checkpoints" / "last.pt")
    monkeypatch.setattr(zdata, "list_images", no_data)
    code, _, err = job("train", [*args, override], tmp_path, capsys)
    line = refused(code, err, names)
    assert not (tmp_path / "out" / "history.json").exists()
    if "was" in names:
        assert "resume" in line


# --- 5. faults: full disk, Ctrl-C --------------------------------------------------------------------------------

@pytest.mark.parametrize("when", ["tables", "progress"])
def test_full_disk_is_one_line_and_leaves_no_truncated_table(when, flat, tmp_path, capsys, monkeypatch):
    """A full disk while the cache's tables are written (np.savez: OSError) or while the pass saves its progress
    (torch.save: RuntimeError) was an ENOSPC traceback with a truncated array left in the cache."""
    import zf.mining.mine
    from zf.mining.table import TopK

    def full(self, path):
        Path(str(path)).write_bytes(b"PK\x03\x04 half a table")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def full_save(obj, path):
        Path(str(path)).write_bytes(b"PK\x03\x04 half a state")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed (No space left on device)")

    if when == "tables":
        monkeypatch.setattr(TopK, "save", full)
    else:
        monkeypatch.setattr(zf.mining.mine.torch, "save", full_save)
    code, _, err = job("run", [*TINY, "data=folder", f"data.root={flat}"], tmp_path, capsys)
    line = refused(code, err, str(tmp_path / "cache"))
    assert "no space left" in line
    entry = next((tmp_path / "cache").glob("mine-*"))
    assert not list(entry.glob("*.npz")) and not (entry / "done.json").exists() and not list(entry.glob("*.tmp"))
    if when == "tables":
        assert "needs about" in line and (entry / "partial.pt").is_file()  # the pass is kept: a rerun resumes


def test_ctrl_c_is_one_line_saying_what_was_saved(flat, tmp_path, capsys, monkeypatch):
    import zf.mining.cache

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(zf.mining.cache, "mine", interrupted)
    code, _, err = job("run", [*TINY, "data=folder", f"data.root={flat}"], tmp_path, capsys)
    line = refused(code, err, "paths.cache_dir=", status=130)
    assert "resume" in line


# --- 6. the scripts outside Hydra: render.py and gallery.py ------------------------------------------------------

@pytest.mark.parametrize("script, case, names", [
    ("render.py", "missing", "does not exist"), ("render.py", "not_a_run", "not a run directory"),
    ("render.py", "deleted_array", "deconvnet.npy is missing"), ("gallery.py", "missing", "does not exist"),
    ("gallery.py", "not_a_run", "not a run directory"), ("gallery.py", "relu9", "--layers relu9"),
    ("gallery.py", "deleted_array", "topk.npz is missing")])
def test_render_and_gallery_refuse_in_one_line(script, case, names, tmp_path, capsys, monkeypatch):
    from zf.mining.table import TopK

    run = tmp_path / "run"
    if case != "missing":
        run.mkdir()
    if case in ("relu9", "deleted_array"):
        (run / "summary.json").write_text(json.dumps({"layers": {"relu1": {}}, "methods": ["deconvnet"], "k": 1}))
        (run / "layers" / "relu1").mkdir(parents=True)
        if not (case == "deleted_array" and script == "gallery.py"):
            TopK(units=np.arange(1), activation=np.ones((1, 1), np.float32), image=np.zeros((1, 1), np.int64),
                 y=np.zeros((1, 1), np.int64), x=np.zeros((1, 1), np.int64),
                 box=np.zeros((1, 1, 4), np.int64)).save(run / "layers" / "relu1" / "topk.npz")
    argv = [script, str(run)] + (["--layers", "relu9"] if case == "relu9" else []) + (
        ["--layers", "relu1"] if case == "deleted_array" and script == "gallery.py" else [])
    monkeypatch.setattr(sys, "argv", argv)
    code = 0
    try:
        runpy.run_path(str(REPO / "scripts" / script), run_name="__main__")
    except SystemExit as e:
        code = e.code
    refused(code, capsys.readouterr().err, names)


# --- 7. Hydra's own errors and sweeps (subprocesses: they happen in Hydra's main) --------------------------------

@pytest.mark.parametrize("args, names", [(["lyer=4"], "lyer"), (["model=foo"], "model"), (["k=1.5"], "k=1.5"),
                                          (["-m", "layer=4,99"], "sweep job 1 (layer=99)")])
def test_hydra_errors_exit_2_and_sweeps_check_every_job_first(args, names, flat, tmp_path, capsys, monkeypatch):
    """Hydra's own errors exit 2 as zf's do (they exited 1); a sweep checks every job before the first runs (job 0
    used to finish before job 1's layer=99 failed).  In-process: ``scripts/run.py`` run as ``__main__``."""
    monkeypatch.setattr(sys, "argv", ["run.py", *args, *TINY[:-3], "units=[0]", "data=folder", f"data.root={flat}",
                                      f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'out'}",
                                      f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    code = 0
    try:
        runpy.run_path(str(REPO / "scripts" / "run.py"), run_name="__main__")
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err and names in err, err[-3000:]
    assert not list(tmp_path.rglob("summary.json")) and not list(tmp_path.rglob("mine-*"))
    assert not (tmp_path / "out").exists()  # a refused run leaves no run directory (Hydra's .hydra/ included)


# --- 8. W&B without a network, one distributed set-up -------------------------------------------------------------

def test_wandb_online_without_network_goes_offline_at_once(tmp_path, capsys, monkeypatch):
    import zf.tracking as T

    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.setenv("WANDB_MODE", "")
    calls = {}

    class FakeWandb:  # wandb.init itself is not what is tested: the mode it is given is
        @staticmethod
        def init(**kw):
            calls.update(kw)
            return object()

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    T.Tracker(project="zf", dir=tmp_path, mode="online")
    assert calls["mode"] == "offline"
    assert "cannot be reached; logging offline" in capsys.readouterr().out


def test_every_task_sets_its_gpu_under_torchrun(monkeypatch):
    import zf.edge.runtime as E

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: seen.setdefault("set_device", i))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: "init" in seen)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda b: seen.setdefault("init", b))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    rank, device = E.distributed_setup(torch.device("cuda"))
    assert (rank, device, seen) == (1, torch.device("cuda", 1), {"set_device": 1, "init": "nccl"})
