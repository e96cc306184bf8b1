"""The Hydra edge: each task reads a composed config and calls the library; only this module and ``zf.edge.runtime`` see
a config.

A config names its task by ``task._target_`` (``configs/run.yaml``: ``zf.edge.tasks.topk``; ``configs/train.yaml``:
``zf.edge.tasks.train``; each ``configs/experiment/<name>.yaml`` its own), and the scripts call it through
``zf.edge.runtime.dispatch``.  A task is a few lines: build the model and data the config names (``zf.edge.runtime``'s
``model_from_cfg``, ``dataset_from_cfg``, ``normalize_from_cfg``) and call one library function, which computes and
writes its outputs.
"""
from __future__ import annotations

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

# the scripts call cli and dispatch from here
from zf.edge.runtime import Context, cli, dataset_from_cfg, dispatch, flag, hydra_main, miner  # noqa: F401
from zf.data import ImageSource
from zf.edge.runtime import data_root_from_cfg, mine_layers_from_cfg, model_from_cfg, model_info, normalize_from_cfg
from zf.edge.runtime import plain, task, topk_request_from_cfg
from zf.errors import ConfigError
from zf.experiments import correspondence as correspondence_xp
from zf.experiments import evolution as evolution_xp
from zf.experiments import filters as filters_xp
from zf.experiments import invariance as invariance_xp
from zf.experiments import methods as methods_xp
from zf.experiments import occlusion as occlusion_xp
from zf.experiments import probe as probe_xp
from zf.experiments import sanity as sanity_xp
from zf.experiments.features import grey_fill, load_images
from zf.jobs.topk import topk_job
from zf.net.layers import resolve_layer
from zf.net.listing import format_layers, list_layers
from zf.net.models import EVOLUTION_SNAPSHOTS, require_loaded
from zf.training.config import TrainConfig, check_resume
from zf.training.train import fit_task

# --- the tasks ---------------------------------------------------------------------------------------------------


@task("run")
def topk(cfg: DictConfig, ctx: Context) -> float:
    """The main job (``configs/run.yaml``); returns the mean top-1 activation of the last layer (for sweepers)."""
    model = model_from_cfg(cfg).eval().to(ctx.device)
    if flag(cfg, "list_layers"):
        print(format_layers(list_layers(model, int(cfg.data.size))))
        return 0.0
    normalize, transform = normalize_from_cfg(cfg, model)
    request = topk_request_from_cfg(cfg, model)
    dataset = dataset_from_cfg(cfg, cfg.get("split"))
    source = ImageSource(dataset, normalize.to(ctx.device), transform, ctx.device)
    summary = topk_job(model, source, request, ctx.out, cfg.paths.cache_dir, ctx.tracker, model_info(cfg, model))
    return 0.0 if summary is None else list(summary["layers"].values())[-1]["mean_top1_activation"]


@task("train")
def train(cfg: DictConfig, ctx: Context) -> float:
    """Train a model (``configs/train.yaml``); returns the best validation top-1 accuracy."""
    d = data_root_from_cfg(cfg)  # data.root=null resolved (and recorded) first: a resume compares the real folder
    if cfg.resume:  # a changed config would resume at the old settings while recording the new ones
        check_resume(ctx.out / "checkpoints" / "last.pt", plain(cfg))
    store = int(d.resize or d.size)
    train_set = dataset_from_cfg(cfg, "train", size=store, resize=store)
    if not train_set.classes:
        raise ConfigError(f"{train_set.files.root} is a flat folder: training needs class sub-folders (ImageFolder)")
    val_set = dataset_from_cfg(cfg, "val") if d.val_split else None
    model = model_from_cfg(cfg, num_classes=len(train_set.classes))
    meta = {"classes": train_set.classes, "mean": list(d.mean), "std": list(d.std), "input_size": int(d.size),
            "data": str(train_set.files.root)}
    return fit_task(model, train_set, val_set, ctx.out, TrainConfig(**plain(cfg.train)), int(d.size), meta=meta,
                    tracker=ctx.tracker, resume=cfg.resume, config=plain(cfg), export=cfg.get("export"),
                    rank=ctx.rank)


def _experiment_images(cfg: DictConfig, ctx: Context, rel_paths):
    """An image experiment's model (eval, on the device; random weights get as many classes as the val split),
    class names, ``Normalize`` on the device, images (uint8) and labels (paths relative to the val split)."""
    val = dataset_from_cfg(cfg, "val", limit=None)
    val_root, classes = val.files.root, val.classes
    model = model_from_cfg(cfg, None if cfg.model.get("checkpoint") else len(classes)).eval().to(ctx.device)
    classes = list((getattr(model, "meta", {}) or {}).get("classes") or classes)
    normalize = normalize_from_cfg(cfg, model)[0].to(ctx.device)
    raw, labels = load_images(val_root, [str(p) for p in rel_paths], int(cfg.data.size), classes)
    return model, classes, normalize, raw, labels


@task("occlusion")
def occlusion(cfg: DictConfig, ctx: Context) -> float:
    """Fig. 7 (``experiment=occlusion``)."""
    o = cfg.occlusion
    model, classes, normalize, raw, labels = _experiment_images(cfg, ctx, o.images)
    require_loaded(model, "", "occlusion (panels (d) and (e) are class probabilities)")
    others = {}
    if o.others:  # panel (c): the unit's mined top-k over the val split, through the main job's mining cache
        dataset, mine = dataset_from_cfg(cfg, "val"), miner(cfg, ctx, normalize_from_cfg(cfg, model)[1], normalize,
                                                            int(cfg.k), cfg.tap)
        extra = mine_layers_from_cfg(cfg, model)
        others = {"dataset": dataset, "mine_fn": lambda ls: mine(model, dataset, extra + ls)}
    return occlusion_xp.run(model, raw, labels, list(o.images), classes, normalize, ctx.out, layer=o.layer,
                            tap=cfg.tap, size=int(o.size), stride=int(o.stride), grey=o.grey,
                            batch_size=int(o.batch_size), method=cfg.method, norm=cfg.norm, display_mode=cfg.display,
                            device=ctx.device, dpi=int(cfg.dpi), tracker=ctx.tracker, progress=cfg.progress, **others)


@task("invariance")
def invariance(cfg: DictConfig, ctx: Context) -> float:
    """Fig. 5 (``experiment=invariance``)."""
    v = cfg.invariance
    model, classes, normalize, raw, labels = _experiment_images(cfg, ctx, v.images)
    if getattr(model, "zf_missing", None):  # no trained classifier: distances only, p(true class) is NaN
        print("invariance: part of the model stayed random (summary.json); p(true class) is not computed")
        labels = [-1] * len(labels)
    return invariance_xp.run(model, normalize(raw.to(ctx.device)), labels, list(v.images), classes, ctx.out,
                             {k: v.get(k) for k in invariance_xp.KINDS}, [tuple(l) for l in v.layers],
                             batch_size=int(v.batch_size), dpi=int(cfg.dpi), tracker=ctx.tracker)


@task("correspondence")
def correspondence(cfg: DictConfig, ctx: Context) -> float:
    """Table 1 / Fig. 8 (``experiment=correspondence``)."""
    c = cfg.correspondence
    model, _, normalize, raw, _ = _experiment_images(cfg, ctx, c.images)
    for layer, tap in c.layers:
        path = resolve_layer(model, layer, tap).path
        require_loaded(model, path.split(".")[0] + ".", f"correspondence at {path} (correspondence.layers)")
    return correspondence_xp.run(model, normalize(raw.to(ctx.device)), raw, list(c.images), plain(c.parts), ctx.out,
                                 size=int(c.size), layers=[tuple(l) for l in c.layers], n_random=int(c.n_random),
                                 jitter=int(c.jitter), seed=int(cfg.seed), value=grey_fill(c.grey, normalize),
                                 batch_size=int(c.batch_size), dpi=int(cfg.dpi), tracker=ctx.tracker)


@task("evolution")
def evolution(cfg: DictConfig, ctx: Context) -> float:
    """Fig. 4 (``experiment=evolution``)."""
    e = cfg.evolution
    folder = EVOLUTION_SNAPSHOTS if str(e.snapshots) == "default" else e.snapshots  # the shipped ones, installed
    found = evolution_xp.find_snapshots(folder, list(e.epochs) if e.get("epochs") is not None else None)
    snaps = [(epoch, m.to(ctx.device)) for epoch, m in (evolution_xp.load_snapshot(p) for _, p in found)]
    normalize, transform = normalize_from_cfg(cfg)
    return evolution_xp.run(snaps, [p for _, p in found], dataset_from_cfg(cfg, e.split, limit=e.images), ctx.out,
                            layers=list(e.layers), n_units=int(e.units_per_layer),
                            units={k: list(u) for k, u in plain(e.units).items()} if e.get("units") else None,
                            seed=int(cfg.seed), method=e.method, normalize=normalize, transform=transform,
                            device=ctx.device, mine_fn=miner(cfg, ctx, transform, normalize, 1), split=e.split,
                            dpi=int(cfg.dpi), tracker=ctx.tracker)


@task("filters")
def filters(cfg: DictConfig, ctx: Context) -> float:
    """Fig. 6 (``experiment=filters``)."""
    f = cfg.filters
    normalize, transform = normalize_from_cfg(cfg)
    return filters_xp.run({k: f.get(k) for k in filters_xp.FIG6_COMMANDS}, ctx.out,
                          dataset=dataset_from_cfg(cfg, f.split, f.images),
                          layer2_units=int(f.layer2_units), seed=int(cfg.seed), normalize=normalize,
                          mine_fn=miner(cfg, ctx, transform, normalize, 1), device=ctx.device, dpi=int(cfg.dpi),
                          tracker=ctx.tracker)


@task("experiment")
def experiment(cfg: DictConfig, ctx: Context) -> float:
    """A figure or table from its YAML alone: ``task.run`` names the experiment's ``run`` function, called with
    ``out`` and ``tracker``, the values of ``task.args`` as they are, and what ``task.inputs`` asks to be built from
    the config: ``model`` (eval, on the device), ``normalize``, ``transform``, ``device``, ``dataset`` (the config's
    split) or ``dataset:<split>``.  ``configs/experiment/ablation_table.yaml`` is one."""
    t, built, model = cfg.task, {}, None
    for name, what in plain(t.get("inputs") or {}).items():
        if what == "model":
            model = built[name] = model or model_from_cfg(cfg).eval().to(ctx.device)
        elif what in ("normalize", "transform"):
            norm, spec = normalize_from_cfg(cfg, model)
            built[name] = norm.to(ctx.device) if what == "normalize" else spec
        elif what == "device":
            built[name] = ctx.device
        elif what.split(":")[0] == "dataset":
            built[name] = dataset_from_cfg(cfg, what.partition(":")[2] or cfg.get("split"))
        else:
            raise ConfigError(f"task.inputs.{name}={what!r}: use model, normalize, transform, device, dataset or "
                              "dataset:<split>")
    return get_method(t.run)(**built, **plain(t.get("args") or {}), out=ctx.out, tracker=ctx.tracker)


@task("probe")
def probe(cfg: DictConfig, ctx: Context) -> float:
    """A linear probe per layer (``experiment=probe``)."""
    model = model_from_cfg(cfg).eval().to(ctx.device)
    normalize, transform = normalize_from_cfg(cfg, model)
    p = cfg.probe
    return probe_xp.run(model, dataset_from_cfg(cfg, "train", p.train_images),
                        dataset_from_cfg(cfg, "val", p.val_images), ctx.out, normalize=normalize, l2=float(p.l2),
                        max_iter=int(p.max_iter),
                        batch_size=int(cfg.batch_size), device=ctx.device, transform=transform, progress=cfg.progress,
                        dpi=int(cfg.dpi), tracker=ctx.tracker)


def _one_layer(cfg: DictConfig, ctx: Context):
    """An experiment on one layer's top-k rows: the model (eval, on the device), ``Normalize``, the transform spec,
    the data set of ``split`` and the layer's name."""
    model = model_from_cfg(cfg).eval().to(ctx.device)
    normalize, transform = normalize_from_cfg(cfg, model)
    return model, normalize, transform, dataset_from_cfg(cfg, cfg.split), resolve_layer(model, cfg.layer, cfg.tap).name


def _mined_table(cfg: DictConfig, ctx: Context, model, dataset, layer: str, transform, normalize):
    """``layer``'s top-k table, mined with ``mine_layers`` through the main job's cache."""
    return miner(cfg, ctx, transform, normalize, int(cfg.k), cfg.tap)(
        model, dataset, mine_layers_from_cfg(cfg, model) + [layer])[layer]


@task("methods")
def methods(cfg: DictConfig, ctx: Context) -> float:
    """Deconvnet vs guided backpropagation vs gradient on the same rows (``experiment=methods``)."""
    model, normalize, transform, dataset, layer = _one_layer(cfg, ctx)
    table = _mined_table(cfg, ctx, model, dataset, layer, transform, normalize)
    m = cfg.methods
    return methods_xp.run(model, dataset, table, layer, ctx.out, units=list(m.units) if m.get("units") else None,
                          n_units=int(m.n_units), methods=list(m.compare), normalize=normalize, tap=cfg.tap,
                          seed=int(cfg.seed), display_mode=cfg.display, device=ctx.device, dpi=int(cfg.dpi),
                          tracker=ctx.tracker)


@task("sanity")
def sanity(cfg: DictConfig, ctx: Context) -> float:
    """The model-parameter randomisation test of Adebayo et al. on one layer's top-k rows (``experiment=sanity``)."""
    model, normalize, transform, dataset, layer = _one_layer(cfg, ctx)
    s = cfg.sanity
    for key in ("methods", "modes"):
        if not OmegaConf.is_list(s[key]):
            raise ConfigError(f"sanity.{key}={s[key]!r}: give a list, e.g. sanity.{key}=[{s[key]}]")
    sanity_xp.check_args(list(s.methods), list(s.modes), s.init, s.tap, s.seed_mode)  # before the mining pass
    table = _mined_table(cfg, ctx, model, dataset, layer, transform, normalize)
    return sanity_xp.run(model, dataset, table, layer, ctx.out, units=list(s.units) if s.get("units") else None,
                         n_units=int(s.n_units), methods=list(s.methods), modes=list(s.modes), init=s.init,
                         std=float(s.std), seed=int(s.seed), tap=s.tap, seed_mode=s.seed_mode,
                         show_units=int(s.show_units), normalize=normalize, display_mode=cfg.display,
                         device=ctx.device, dpi=int(cfg.dpi), tracker=ctx.tracker, info=model_info(cfg, model),
                         progress=flag(cfg, "progress", True))
