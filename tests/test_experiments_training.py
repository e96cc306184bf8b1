"""Experiments evolution (Fig. 4), filters (Fig. 6), ablation (Table 3), probe (beyond the paper, cf. Table 7) and
methods: configs compose, the ablation sweep builds the paper's models, each experiment runs tiny end to end on
fabricated models/snapshots/data, the probe's classifier separates what is separable and not what is not, and the
Table 3 collector reads fabricated sweep folders correctly.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import imagetree
import numpy as np
import pytest
import torch

from zf.net.models import count_parameters, zfnet
from zf.training.checkpoints import feature_state

ROOT = Path(__file__).resolve().parents[1]
RUN_EXPERIMENTS = ["evolution", "filters", "probe", "methods", "ablation_table"]
TRAIN_EXPERIMENTS = ["fig6_zf_small", "fig6_noclip", "fig6_alexnet_conv1", "ablation"]
TINY_ARCH = dict(num_classes=3, width=0.0625, fc=[64, 64])
TINY_RUN = ["data.size=80", "logger=none", "device=cpu", "progress=false", "batch_size=8", "num_workers=0"]


@pytest.fixture(autouse=True)
def _root(monkeypatch):
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    torch.set_num_threads(1)


def compose(config, overrides, out_dir=None, hydra_cfg=False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    extra = [f"paths.output_dir={out_dir}"] if out_dir is not None else []
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config, overrides=list(overrides) + extra, return_hydra_config=hydra_cfg)


def resolved(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def write_tree(root, **kw):
    """The shared tiny tree (tests/imagetree.py), 6 + 3 images per class of 80x88."""
    return imagetree.write_tree(root, **{"per_class": 6, "val_per_class": 3, "size": (80, 88), **kw})


def tiny_checkpoint(path, seed=0, history=None, **arch):
    """A zf training-style checkpoint of a tiny zfnet (model, arch, meta, history)."""
    torch.manual_seed(seed)
    m = zfnet(**{**TINY_ARCH, **arch})
    torch.save({"model": m.state_dict(), "arch": m.arch, "epoch": 2,
                "meta": {"classes": ["c0", "c1", "c2"], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                         "input_size": 64},
                "history": history or [{"epoch": 1, "train_top1": 0.4, "clipped_filters": 3},
                                       {"epoch": 2, "train_top1": 0.5, "clipped_filters": 1, "val_top1": 0.5}]},
               path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# configs


@pytest.mark.parametrize("name", RUN_EXPERIMENTS)
def test_run_experiment_configs_compose(name, tmp_path):
    cfg = resolved(compose("run", [f"experiment={name}"], tmp_path))
    assert cfg["task"]["_target_"] in (f"zf.edge.tasks.{name}", "zf.edge.tasks.experiment") and cfg["task_name"] == name
    assert cfg["paths"]["output_dir"] == str(tmp_path)
    import zf.edge.tasks

    assert callable(getattr(zf.edge.tasks, cfg["task"]["_target_"].rsplit(".", 1)[1]))


@pytest.mark.parametrize("name", TRAIN_EXPERIMENTS)
def test_train_experiment_configs_compose_and_never_export(name, tmp_path):
    from zf.training.train import TrainConfig

    cfg = compose("train", [f"experiment={name}"], tmp_path, hydra_cfg=True)
    r = resolved(compose("train", [f"experiment={name}"], tmp_path))
    assert r["export"] is None, "a reduced-budget run must never overwrite the shipped checkpoint"
    assert r["train"]["sizes"] is None and r["model"]["checkpoint"] is None
    TrainConfig(**r["train"])
    if name.startswith("fig6"):
        assert r["data"]["size"] == 128
        assert cfg.hydra.run.dir == str(ROOT / "outputs" / "train" / name)


def _without(cfg, *paths):
    for p in paths:
        d = cfg
        *head, last = p.split(".")
        for k in head:
            d = d[k]
        d.pop(last)
    return cfg


def test_fig6_runs_differ_in_one_thing_each(tmp_path):
    base = resolved(compose("train", ["experiment=fig6_zf_small"], tmp_path))
    noclip = resolved(compose("train", ["experiment=fig6_noclip"], tmp_path))
    alex = resolved(compose("train", ["experiment=fig6_alexnet_conv1"], tmp_path))
    assert (base["train"]["clip_radius"], noclip["train"]["clip_radius"]) == (0.1, None)
    assert alex["model"]["arch"]["conv1"] == [11, 4, 2] and base["model"]["arch"]["conv1"] == [7, 2, 1]
    common = ("task_name", "logger.group")
    assert _without(noclip, *common, "train.clip_radius") == _without(dict(base), *common, "train.clip_radius")
    base = resolved(compose("train", ["experiment=fig6_zf_small"], tmp_path))
    assert _without(alex, *common, "model.arch.conv1") == _without(base, *common, "model.arch.conv1")


def _sweep(tmp_path):
    cfg = compose("train", ["experiment=ablation"], tmp_path, hydra_cfg=True)
    return cfg, str(cfg.hydra.sweeper.params.ablation).split(",")


def test_ablation_sweep_builds_the_papers_models(tmp_path):
    from zf.experiments.ablation import VARIANTS

    cfg, names = _sweep(tmp_path)
    assert names == list(VARIANTS), "the collector's table order follows the sweep"
    assert "JoblibLauncher" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.n_jobs == 2
    assert cfg.train.threads == 1 and cfg.hydra.sweep.dir == str(ROOT / "outputs" / "ablation" / "sweep")
    models = {}
    for n in names:
        c = resolved(compose("train", ["experiment=ablation", f"ablation={n}"], tmp_path))
        assert c["ablation"]["name"] == n and c["export"] is None and c["data"]["size"] == 112
        models[n] = zfnet(num_classes=10, **c["model"]["arch"])
    mods = {n: dict(m.named_modules()) for n, m in models.items()}
    for n in ("no_conv34", "no_conv34_fc67"):
        assert not {"features.conv3", "features.conv4"} & set(mods[n])
        assert mods[n]["features.conv5"].in_channels == mods[n]["features.conv2"].out_channels == 64
    for n in ("no_fc7", "no_fc67", "no_conv34_fc67"):
        assert "classifier.fc7" not in mods[n]
    assert mods["no_fc7"]["classifier.fc8"].in_features == mods["no_fc7"]["classifier.fc6"].out_features == 1024
    assert "classifier.fc6" not in mods["no_fc67"]
    assert mods["no_fc67"]["classifier.fc8"].in_features == 64 * 36
    assert mods["no_conv34_fc67"]["classifier.fc8"].in_features == 64 * 36
    assert [mods[n]["classifier.fc6"].out_features for n in ("fc2048", "zf", "fc8192", "conv_wide_fc8192")] == \
        [512, 1024, 2048, 2048]
    for n in ("conv_wide", "conv_wide_fc8192"):
        assert [mods[n][f"features.conv{i}"].out_channels for i in (3, 4, 5)] == [128, 256, 128]
        assert mods[n]["classifier.fc6"].in_features == 128 * 36
    p = {n: count_parameters(m) for n, m in models.items()}
    assert p["fc2048"] < p["zf"] < p["fc8192"]
    assert p["zf"] < p["conv_wide"] < p["conv_wide_fc8192"]
    assert p["no_conv34_fc67"] < p["no_fc67"] < p["no_fc7"] < p["zf"]
    assert p["no_conv34"] < p["zf"]
    # the removed layers account for exactly their parameters
    fc7 = mods["zf"]["classifier.fc7"]
    assert p["zf"] - p["no_fc7"] == fc7.weight.numel() + fc7.bias.numel()


def test_slurm_launcher_is_composed_only_when_asked(tmp_path):
    import importlib.util

    from hydra.errors import MissingConfigException

    cfg, names = _sweep(tmp_path)  # the default sweep never touches submitit
    assert "submitit" not in cfg.hydra.launcher._target_
    slurm = ["experiment=ablation", "hydra/launcher=slurm"]
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        with pytest.raises(MissingConfigException, match="submitit_slurm"):
            compose("train", slurm, tmp_path, hydra_cfg=True)
        pytest.skip("hydra-submitit-launcher is not installed (pip install 'zf[slurm]'): only the error was checked")
    for launcher, target in (("slurm", "SlurmLauncher"), ("submitit_local", "LocalLauncher")):
        c = compose("train", ["experiment=ablation", f"hydra/launcher={launcher}"], tmp_path, hydra_cfg=True)
        assert c.hydra.launcher._target_.endswith(f"submitit_launcher.{target}")
        assert "n_jobs" not in c.hydra.launcher  # the joblib launcher's option stays with joblib2.yaml
        assert str(c.hydra.sweeper.params.ablation).split(",") == names and c.ablation.name == "zf"
    c = compose("train", slurm + ["hydra.launcher.partition=gpu"], tmp_path, hydra_cfg=True)
    assert (c.hydra.launcher.partition, c.hydra.launcher.timeout_min, c.hydra.launcher.array_parallelism) == \
        ("gpu", 240, 16)


@pytest.mark.slow
def test_ablation_sweep_end_to_end_through_submitit_local(tmp_path):
    """Two ablation jobs, 1 epoch on the tiny tree, through submitit's local launcher (the Slurm code path without
    Slurm): each job trains its own architecture and writes its history and checkpoint; the collector reads both.
    About 40 s on 2 cores."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'zf[slurm]'")
    from zf.experiments.ablation import collect

    data = write_tree(tmp_path / "data")
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "experiment=ablation",
         "hydra/launcher=submitit_local", "ablation=zf,no_fc7", f"data.root={data}", "train.epochs=1",
         "train.val_every=1", "model.arch.width=0.0625", "model.arch.fc=[64,64]", "data.size=56", "data.resize=64",
         "train.batch_size=4", "train.threads=1", "logger=none", f"hydra.sweep.dir={sweep}",
         "hydra.launcher.timeout_min=10"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "Submitit 'local' sweep" in r.stdout + r.stderr
    assert len([d for d in (sweep / ".submitit").iterdir() if d.name.isdigit()]) == 2  # two submitit jobs
    for name in ("zf", "no_fc7"):
        job = sweep / name
        assert f"ablation={name}" in (job / ".hydra" / "overrides.yaml").read_text()
        history = json.loads((job / "history.json").read_text())
        assert [h["epoch"] for h in history] == [1] and 0.0 <= history[-1]["val_top1"] <= 1.0
        state = torch.load(job / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        assert state["epoch"] == 1 and state["arch"]["remove"] == ([] if name == "zf" else ["fc7"])
        assert ("classifier.fc7.weight" in state["model"]) == (name == "zf")
        assert state["model"]["classifier.fc6.weight"].shape[0] == 64 // 16  # fc [64, 64] at width 1/16
        assert state["model"]["classifier.fc8.weight"].shape[0] == 3  # the tiny tree's classes
    rows = collect(sweep)
    assert sorted(r["name"] for r in rows) == ["no_fc7", "zf"] and all(r["finished"] for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# evolution (Fig. 4)


def test_evolution_runs_tiny_on_fabricated_snapshots(tmp_path):
    from zf.edge.tasks import evolution as evolution_task
    from zf.experiments.evolution import find_snapshots, load_snapshot

    data = write_tree(tmp_path / "data")
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    for epoch in (1, 3):
        torch.manual_seed(epoch)
        m = zfnet(**TINY_ARCH)
        torch.save({"features": feature_state(m), "arch": m.arch, "epoch": epoch},
                   snaps / f"features_epoch{epoch:03d}.pt")
    e, m = load_snapshot(snaps / "features_epoch003.pt")
    torch.manual_seed(3)
    assert e == 3 and torch.equal(m.features.conv1.weight, zfnet(**TINY_ARCH).features.conv1.weight.half().float())
    with pytest.raises(FileNotFoundError, match="epochs \\[2\\]"):
        find_snapshots(snaps, [1, 2])
    out = tmp_path / "out"
    cfg = compose("run", ["experiment=evolution", f"evolution.snapshots={snaps}", f"data.root={data}",
                          "evolution.layers=[1,2,3]", "evolution.units_per_layer=2", "evolution.images=8",
                          f"paths.cache_dir={tmp_path / 'cache'}", *TINY_RUN], out)
    evolution_task(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == [1, 3] and summary["images"] == 8
    assert set(summary["units"]) == {"relu1", "relu2", "relu3"} and all(len(v) == 2 for v in summary["units"].values())
    z = np.load(out / "evolution.npz")
    assert z["relu2_projections"].shape == (2, 2, 3, 27, 27)
    assert (out / "figures" / "evolution.png").is_file()
    lines = (out / "evolution.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 3 * 2 * 2
    # the top-1 image of each unit is really its strongest over the subset (epoch 3 = the loaded snapshot m)
    from zf.data import ImageDataset, Normalize
    from zf.mining.mine import mine_brute_force

    ds = ImageDataset(data / "train", size=80, limit=8, subset_seed=0)
    imgs = torch.stack([ds[i][0] for i in range(len(ds))])
    val, img, _ = mine_brute_force(m, imgs, "relu2", k=1, normalize=Normalize())
    for i, u in enumerate(summary["units"]["relu2"]):
        assert z["relu2_image"][i, 1] == img[u, 0]
        np.testing.assert_allclose(z["relu2_activation"][i, 1], val[u, 0], rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# filters (Fig. 6)


def test_filter_stats_on_hand_made_filters():
    from zf.experiments.filters import filter_stats

    k = 8
    yy, xx = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    smooth = torch.cos(2 * np.pi * xx / 64.0)[None].repeat(3, 1, 1)          # ~ 1/64 cycles/px: low
    checker = ((-1.0) ** (yy + xx))[None].repeat(3, 1, 1)                      # 0.5 cycles/px: high
    w = torch.stack([smooth, checker] + [0.01 * checker] * 6)
    s = filter_stats(w)
    assert s["n"] == 8 and s["dead_fraction"] == 0.0  # the six small filters are the median
    assert s["band_energy"]["high"] > 0.8             # 7 of 8 filters are checkerboards
    assert sum(s["band_energy"].values()) == pytest.approx(1.0)
    lone = filter_stats(smooth[None])
    assert lone["band_energy"]["low"] > 0.75 > lone["band_energy"]["high"] * 5  # (zero-padding leaks a little)
    dom = filter_stats(torch.cat([10 * checker[None], 0.1 * checker[None].repeat(9, 1, 1, 1)]))
    assert dom["top_energy_share"] > 0.9 and dom["rms_max_over_median"] == pytest.approx(100, rel=1e-6)
    flat = filter_stats(checker[None].repeat(4, 1, 1, 1))
    assert flat["top_energy_share"] == pytest.approx(0.25)


def test_filters_runs_tiny_and_names_the_missing_run(tmp_path):
    from zf.edge.tasks import filters as filters_task
    from zf.errors import CheckpointError

    data = write_tree(tmp_path / "data")
    ck = {k: tiny_checkpoint(tmp_path / f"{k}.pt", seed=i, **({"conv1": [11, 4, 2]} if k == "alexnet" else {}))
          for i, k in enumerate(("default", "zf_small", "noclip", "alexnet"))}
    base = ["experiment=filters", f"data.root={data}", "filters.images=6", "filters.layer2_units=4",
            f"paths.cache_dir={tmp_path / 'cache'}", *TINY_RUN]
    out = tmp_path / "out"
    filters_task(compose("run", base + [f"filters.{k}={v}" for k, v in ck.items()], out))
    for f in ("fig6_default_filters.png", "fig6_clipping.png", "fig6_alexnet_vs_zf.png"):
        assert (out / "figures" / f).is_file(), f
    rows = (out / "filters.csv").read_text().strip().splitlines()
    assert len(rows) == 5 and rows[0].startswith("model,")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["alexnet"]["arch"]["conv1"] == [11, 4, 2]
    assert summary["models"]["noclip"]["clipped_filters"] == 4 and len(summary["models"]["zf_small"]["layer2_units"]) == 4

    missing = tmp_path / "nope" / "last.pt"
    cfg = compose("run", base + [f"filters.default={ck['default']}", f"filters.zf_small={ck['zf_small']}",
                                 f"filters.alexnet={ck['alexnet']}", f"filters.noclip={missing}"], tmp_path / "o2")
    with pytest.raises(CheckpointError, match="python scripts/train.py experiment=fig6_noclip"):
        filters_task(cfg)


# ---------------------------------------------------------------------------------------------------------------
# probe (beyond the paper; Table 7's trend)


def test_softmax_probe_separates_separable_and_not_random_labels():
    from zf.experiments.probe import accuracy, fit_softmax, probe

    g = torch.Generator().manual_seed(0)
    n, d, c = 300, 20, 4
    centres = 4.0 * torch.randn(c, d, generator=g)
    y = torch.arange(n) % c
    x = centres[y] + torch.randn(n, d, generator=g)
    yv = torch.arange(200) % c
    xv = centres[yv] + torch.randn(200, d, generator=g)
    p = fit_softmax(x, y, c)
    assert accuracy(p, x, y) == 1.0 and accuracy(p, xv, yv) > 0.99
    # random labels on random features: fits the training set somewhat, held-out is chance
    xr, xrv = torch.randn(n, d, generator=g), torch.randn(2000, d, generator=g)
    yr = torch.randint(0, c, (n,), generator=g)
    yrv = torch.randint(0, c, (2000,), generator=g)
    rows = probe({"rand": xr}, yr, {"rand": xrv}, yrv, c)
    assert rows[0]["train_acc"] > 0.3 and abs(rows[0]["val_acc"] - 1 / c) < 0.05


def test_probe_runs_tiny(tmp_path):
    from zf.edge.tasks import probe as probe_task
    from zf.experiments.probe import probe_layers

    data = write_tree(tmp_path / "data")
    ck = tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    best = probe_task(compose("run", ["experiment=probe", f"model.checkpoint={ck}", f"data.root={data}",
                                      "probe.train_images=12", "probe.max_iter=20", *TINY_RUN], out))
    assert 0.0 <= best <= 1.0
    res = json.loads((out / "probe.json").read_text())
    assert [r["layer"] for r in res["rows"]] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert res["train_images"] == 12 and res["val_images"] == 9
    assert [r["dim"] for r in res["rows"]] == [6, 16, 24, 24, 16, 4, 4]  # fc sizes scale with width too
    assert res["rows"][0]["paper_caltech101"] == 44.8 and res["rows"][5]["paper_caltech101"] is None
    assert (out / "figures" / "probe.png").is_file() and (out / "probe.csv").is_file()
    assert probe_layers(zfnet(**TINY_ARCH))["conv1"] == "features.norm1"


# ---------------------------------------------------------------------------------------------------------------
# methods


def test_methods_runs_tiny(tmp_path):
    from zf.edge.tasks import methods as methods_task

    data = write_tree(tmp_path / "data")
    ck = tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    methods_task(compose("run", ["experiment=methods", f"model.checkpoint={ck}", f"data.root={data}", "layer=3",
                                 "k=4", "methods.n_units=3", "mine_layers=[3]", f"paths.cache_dir={tmp_path / 'c'}",
                                 *TINY_RUN], out))
    s = json.loads((out / "summary.json").read_text())
    assert s["layer"] == "relu3" and len(s["units"]) == 3 and s["images"] == 9
    z = np.load(out / "methods.npz")
    for m in ("deconvnet", "guided", "gradient"):
        assert z[m].shape[:3] == (3, 4, 3) and np.isfinite(z[m]).all()
    assert not np.array_equal(z["deconvnet"], z["gradient"])
    assert set(s["agreement_cosine"]) == {"deconvnet~guided", "deconvnet~gradient", "guided~gradient"}
    assert (out / "figures" / "methods_relu3.png").is_file()


# ---------------------------------------------------------------------------------------------------------------
# ablation table (Table 3)


def _job(sweep, name, history, arch=None, finished=True):
    from omegaconf import OmegaConf

    d = sweep / name
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save({"ablation": {"name": name}, "train": {"epochs": 2},
                    "model": {"arch": {"width": 0.0625, "fc": [64, 64], **(arch or {})}}}, d / ".hydra" / "config.yaml")
    if finished:
        (d / "history.json").write_text(json.dumps(history))
    else:
        (d / "checkpoints").mkdir()
        torch.save({"history": history}, d / "checkpoints" / "last.pt")


def _fabricated_sweep(root):
    sweep = root / "sweep"
    h = lambda tr, v1, v5: [{"epoch": 1, "train_top1": 0.1, "seconds": 30.0},  # noqa: E731
                            {"epoch": 2, "train_top1": tr, "val_top1": v1, "val_top5": v5, "seconds": 30.0}]
    _job(sweep, "fc2048", h(0.60, 0.55, 0.90), {"fc": [32, 32]})
    _job(sweep, "zf", h(0.70, 0.60, 0.95))
    _job(sweep, "no_fc7", h(0.50, 0.52, 0.91)[:1] + [{"epoch": 2, "train_top1": 0.5, "seconds": 30.0}],
         {"remove": ["fc7"]}, finished=False)
    (sweep / "not_a_job").mkdir()
    return sweep


def test_ablation_collector_on_fabricated_sweep(tmp_path):
    from zf.experiments.ablation import collect, to_markdown

    rows = collect(_fabricated_sweep(tmp_path))
    assert [r["name"] for r in rows] == ["zf", "no_fc7", "fc2048"]
    zf_, nofc7, fc = rows
    assert (zf_["train_top1_err"], zf_["val_top1_err"], zf_["val_top5_err"]) == (30.0, 40.0, 5.0)
    assert (fc["train_top1_err"], fc["val_top1_err"], fc["val_top5_err"]) == (40.0, 45.0, 10.0)
    assert fc["delta_val_top1"] == 5.0 and zf_["delta_val_top1"] == 0.0
    assert (fc["paper_row"], fc["paper_val_top1_err"], fc["paper_delta_val_top1"]) == ("ZF, fc6/fc7 2048", 40.2, 1.8)
    assert nofc7["paper_row"] == "AlexNet - layer 7" and nofc7["paper_delta_val_top1"] == -0.5
    assert not nofc7["finished"] and nofc7["val_top1_err"] is None and nofc7["train_top1_err"] == 50.0
    assert nofc7["parameters"] < zf_["parameters"] and fc["parameters"] < zf_["parameters"]
    assert zf_["parameters"] == count_parameters(zfnet(num_classes=10, width=0.0625, fc=[64, 64]))
    md = to_markdown(rows)
    assert md.count("\n") == 2 + 3
    assert "| ZF, fc6/fc7 2048 | " in md and "| 40.0 | 45.0 | 10.0 | +5.0 | ZF, fc6/fc7 2048 | 38.2 | 40.2 | 17.6 | +1.8 |" in md
    assert "ZF - layer 7 (unfinished)" in md
    with pytest.raises(FileNotFoundError, match="experiment=ablation"):
        collect(tmp_path / "missing")


def test_ablation_table_through_scripts_run(tmp_path):
    sweep = _fabricated_sweep(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), "experiment=ablation_table",
                        f"sweep_dir={sweep}", "logger=none", f"hydra.run.dir={out}"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ("ablation_table.csv", "ablation_table.md", "ablation_table.json", "figures/ablation.png"):
        assert (out / f).is_file(), f
    lines = (out / "ablation_table.csv").read_text().strip().splitlines()
    assert len(lines) == 4 and lines[1].startswith("ZF model,zf,2,")


def test_generic_experiment_task_builds_what_the_yaml_asks_for(tmp_path):
    """``zf.edge.tasks.experiment`` runs an experiment's ``run`` from the config alone: the probe here, with the model,
    both splits, the normalisation and the device built from the config, and its arguments passed through."""
    from omegaconf import OmegaConf

    from zf.edge.tasks import experiment
    from zf.errors import ConfigError

    data = write_tree(tmp_path / "data")
    cfg = compose("run", ["model.checkpoint=null", "model.arch.width=0.0625", f"data.root={data}", *TINY_RUN],
                  tmp_path / "out")
    cfg.task = OmegaConf.create({
        "_target_": "zf.edge.tasks.experiment", "run": "zf.experiments.probe.run",
        "inputs": {"model": "model", "train_set": "dataset:train", "val_set": "dataset:val", "normalize": "normalize",
                   "device": "device"},
        "args": {"max_iter": 5, "dpi": 40}})
    best = experiment(cfg)
    rows = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert rows["train_images"] == 18 and rows["val_images"] == 9 and best == max(r["val_acc"] for r in rows["rows"])
    cfg.task.inputs = {"model": "modle"}
    with pytest.raises(ConfigError, match="task.inputs.model='modle'"):
        experiment(cfg)
