"""The model-parameter randomisation test of Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), for
the deconvnet, guided backpropagation and the gradient on the top-k rows of one layer.

A projection method that explains what a unit has learned must change when the weights that unit depends on are
destroyed.  For the same mined rows (image, channel, position) the projections are computed

- with the trained weights,
- ``cascade``: with the weights re-drawn cumulatively from the top down: the target layer's own weights first, then
  also the layer below, and so on down to conv1 (step i randomises the i topmost weighted layers),
- ``independent``: with one layer's weights re-drawn at a time, the others trained,

and each is compared with the trained projection of the same row by the two measures of that paper (its section 3
and Fig. 2): the Spearman rank correlation of the absolute values, and the structural similarity (SSIM) of the
normalised absolute maps.  Deconvnet and guided backpropagation are reported to barely change when upper layers
are randomised (Adebayo et al.; Nie et al., ICML 2018, explain it as partial image recovery: the backward ReLU
rectification plus the switches reconstruct image edges whatever the upper weights are); the gradient changes.

Choices (the papers are silent on unit projections; each is an argument, ``configs/experiment/sanity.yaml``):

- Weighted layers: every module with its own weight of 2 or more dimensions (Conv2d, Linear and their kin) that runs
  before the target in the forward pass, in forward order.  Normalisation layers (batch norm affine parameters and
  running statistics) and parameter-free modules are left as trained.
- Randomisation (``init``): ``"default"`` re-draws the layer with its own ``reset_parameters`` (PyTorch's default
  init: Kaiming-uniform weights, uniform biases), ``"normal"`` draws weights from N(0, ``std``) (the paper's
  section 3 init with ``std=1e-2``) and zeroes biases.  Each layer's draw is seeded from (``seed``, the layer's
  path), on the CPU, so a layer gets the same random weights in every cascade step and in the independent mode,
  on any device.
- Target (``tap``, ``seed_mode``): by default each row is projected from the layer's convolution output (``tap=
  "conv"``) seeded with 1 (``seed_mode="one"``).  For the trained net this is Fig. 2's projection up to a positive
  scale (a mined row's activation is positive, so its ReLU passes it); a randomised net's pre-activation at the
  mined position can be negative or zero, and a ReLU tap would then make the gradient and guided maps zero.  Maps
  that are zero everywhere are counted (``zero_maps``) and their similarity is NaN, left out of the medians.
- The maps: a projection (3, h, w) in the unit's receptive-field view becomes the per-pixel magnitude summed over
  colour channels (h, w), as Adebayo et al.'s absolute grayscale maps.  Spearman is computed on these values;
  SSIM on the same maps scaled to [0, 1] by (value - min) / (99th percentile - min), clipped (their normalisation),
  with the Gaussian-window SSIM of Wang et al. (2004): sigma 1.5, window 11, K1 0.01, K2 0.03, data range 1,
  means over the map without the 5-pixel border the window does not cover (``zf.experiments.similarity.ssim``;
  maps of 11 pixels or fewer on a side keep the border).  The figures: ``zf.experiments.sanity_figures``.

    python scripts/run.py experiment=sanity layer=4
"""
from __future__ import annotations

import copy
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from zf.data import Normalize
from zf.errors import ConfigError
from zf.mining.table import TopK
from zf.net.layers import TAPS, is_stack, layer_table, resolve_layer
from zf.net.modules import capture, eval_mode, find_module, module_paths
from zf.projection import stack
from zf.projection.api import project_windows
from zf.projection.reversible import fast_path
from zf.projection.rules import METHODS, SEED_MODES
from zf.experiments.sanity_figures import curves_figure, sanity_figure
from zf.experiments.similarity import abs_map, normalise_map, similarity, ssim  # noqa: F401
from zf.views.results import save_figure, write_csv
from zf.views.visualize import crop_boxes, image_hw, in_boxes, load_items, view_boxes, view_shape

MODES = ("cascade", "independent")
INITS = ("default", "normal")


# --- which layers, and how they are randomised --------------------------------------------------------------------


def _weighted(m: nn.Module) -> bool:
    w = m._parameters.get("weight")
    return isinstance(w, torch.Tensor) and w.dim() >= 2


def weighted_layers(model: nn.Module, layer, tap: str = "relu", input_size: int | tuple[int, int] = 224
                    ) -> list[tuple[str, str]]:
    """(name, module path) of every weighted layer (a module whose own ``weight`` has 2 or more dimensions) that
    runs before ``layer``'s output (``zf.net.layers.resolve_layer(model, layer, tap)``), in forward order (bottom
    first).  Names are ``zf.net.layers``'s (``conv1``, ``conv5_3``) for ``features`` stacks, module paths otherwise.
    One forward on zeros of ``input_size``, stopped at the target."""

    target = target_layer(model, layer, tap).path
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    p0 = next(model.parameters())
    x = torch.zeros(1, 3, h, w, device=p0.device, dtype=p0.dtype)
    order: list[str] = []
    with eval_mode(model), torch.no_grad():
        capture(model, x, [target], clone=False)  # counts the calls once (cached), so the next forward stops early
        hooks = [m.register_forward_pre_hook(lambda *_, p=p: order.append(p) if p not in order else None)
                 for p, m in module_paths(model).items() if _weighted(m)]
        try:
            capture(model, x, [target], clone=False)
        finally:
            for hk in hooks:
                hk.remove()
    names = {l.path: l.name for l in layer_table(model).values()} if is_stack(model) else {}
    return [(names.get(p, p), p) for p in order]


def target_layer(model: nn.Module, layer, tap: str = "conv"):
    """The ``zf.net.layers.Layer`` the projections start from: ``resolve_layer(model, layer, tap)``, except that for a
    ``features`` stack and ``tap="conv"`` a name past the convolution (``relu4``, the mined table's name) walks
    back to it (``conv4``): same channels and positions.  Other models: the module ``layer`` names."""

    lay = resolve_layer(model, layer, tap)
    if tap != "conv" or not is_stack(model) or isinstance(lay.module, (nn.Conv2d, nn.Linear)):
        return lay
    table = list(layer_table(model).values())
    i = next(j for j, l in enumerate(table) if l.path == lay.path)
    while i > 0 and not isinstance(table[i].module, (nn.Conv2d, nn.Linear)):
        i -= 1
    return table[i]


def layer_seed(seed: int, path: str) -> int:
    """The seed of one layer's draw: from the run's ``seed`` and the layer's module path (stable across runs)."""
    return (int(seed) * 1_000_003 + zlib.crc32(path.encode())) % (2 ** 63)


def randomize_(model: nn.Module, paths: Sequence[str], init: str = "default", seed: int = 0,
               std: float = 1e-2) -> nn.Module:
    """Re-draw, in place, the parameters of the modules at ``paths`` (their own parameters: ``weight`` and
    ``bias``), each from its seed (``layer_seed``) on the CPU; every other parameter and buffer is untouched.
    ``init``: ``"default"`` (the module's ``reset_parameters``) or ``"normal"`` (weights N(0, ``std``), biases 0).
    Returns ``model``."""

    if init not in INITS:
        raise ConfigError(f"sanity.init={init!r}: use one of {INITS}")
    for p in paths:
        m = find_module(model, p)
        gen = torch.Generator().manual_seed(layer_seed(seed, p))
        with torch.no_grad():
            if init == "default":
                if not hasattr(m, "reset_parameters"):
                    raise ConfigError(f"{p} ({type(m).__name__}) has no reset_parameters: use sanity.init=normal")
                cpu = copy.deepcopy(m).cpu()
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.set_state(gen.get_state())
                    cpu.reset_parameters()
                new = dict(cpu.named_parameters(recurse=False))
            else:
                new = {n: (torch.randn(q.shape, generator=gen, dtype=torch.float64) * std if n == "weight"
                           else torch.zeros(q.shape, dtype=torch.float64))
                       for n, q in m.named_parameters(recurse=False)}
            for n, q in m.named_parameters(recurse=False):
                q.copy_(new[n].to(q.dtype))
    return model


def cascade_steps(layers: Sequence[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The cascade, top-down: step i (1-based) randomises the i topmost of ``layers`` (given bottom first), so the
    last step randomises every one.  Each step is listed top first."""
    top_first = list(layers)[::-1]
    return [top_first[:i] for i in range(1, len(top_first) + 1)]


# --- projections of the same rows under several weight sets ---------------------------------------------------------


@dataclass
class Rows:
    """The rows of a ``TopK`` ready to project under any weights: normalised images, (image, channel, y, x) rows,
    where each goes in the (U, k) grid, the views (``zf.views.visualize.view_boxes``) and their shape."""

    x: torch.Tensor
    rows: torch.Tensor
    uu: np.ndarray
    rr: np.ndarray
    views: np.ndarray
    shape: tuple[int, int]
    grid: tuple[int, int]
    patches: np.ndarray  # uint8 (U, k, h, w, 3)


def prepare_rows(dataset, table: TopK, units: Sequence[int], normalize=None, device="cpu", fill: int = 128
                 ) -> Rows:
    """Load the images of ``units``' rows of ``table`` once (as ``zf.views.visualize.unit_views`` does)."""

    sub = table.select([int(u) for u in units])
    img = sub.image
    valid = img >= 0
    ids = np.unique(img[valid])
    if len(ids) == 0:
        raise ConfigError("sanity: the chosen units have no mined rows (empty data set?)")
    raw = load_items(dataset, ids)
    local = {int(g): i for i, g in enumerate(ids)}
    uu, rr = np.nonzero(valid)
    rows = torch.tensor(np.stack([[local[int(g)] for g in img[uu, rr]], sub.units[uu], sub.y[uu, rr],
                                  sub.x[uu, rr]], 1), dtype=torch.long)
    sh, sw = view_shape(sub, image_hw(dataset))
    boxes = torch.as_tensor(sub.box[uu, rr])
    views = view_boxes(boxes, *raw.shape[2:])
    patches = np.zeros((len(sub.units), sub.k, sh, sw, 3), np.uint8)
    patches[uu, rr] = crop_boxes(raw[rows[:, 0]], views, fill, inside=boxes).permute(0, 2, 3, 1).numpy()
    with torch.no_grad():
        x = (normalize or Normalize()).to(device)(raw.to(device))
    return Rows(x, rows.to(device), uu, rr, views.numpy(), (sh, sw), (len(sub.units), sub.k), patches)


def project_rows(model: nn.Module, prep: Rows, layer, method: str, tap: str = "conv", seed_mode: str = "one"
                 ) -> np.ndarray:
    """float32 (U, k, 3, h, w): each row of ``prep`` projected with ``method`` through ``model`` (any weights),
    in its view (zero for empty ranks)."""

    win, corners = project_windows(model, prep.x, prep.rows, layer, method=method, seed_mode=seed_mode, tap=tap)
    out = np.zeros((*prep.grid, 3, *prep.shape), np.float32)
    out[prep.uu, prep.rr] = in_boxes(win.detach().cpu().float().numpy(), corners.cpu().numpy(), prep.views,
                                      prep.shape)
    return out


def project_rows_methods(model: nn.Module, prep: Rows, layer, methods: Sequence[str], tap: str = "conv",
                         seed_mode: str = "one") -> dict[str, np.ndarray]:
    """{method: ``project_rows(model, prep, layer, method, ...)``} with one forward pass for all methods on a
    ``features`` stack that the stack engine reverses (the forward, which records the switches and ReLU masks, is
    the same for the three: about half the cost of a projection at relu4); other models: one call per method."""
    t = stack.target(model, layer, tap) if fast_path(model) else None
    if t is None or t.head is not None or len(methods) < 2:
        return {m: project_rows(model, prep, layer, m, tap, seed_mode) for m in methods}
    wins, corners = stack.windows(model, t, prep.x, prep.rows, list(methods), seed_mode, "identity", None)
    out = {}
    for m in methods:
        o = np.zeros((*prep.grid, 3, *prep.shape), np.float32)
        o[prep.uu, prep.rr] = in_boxes(wins[m].cpu().float().numpy(), corners.cpu().numpy(), prep.views, prep.shape)
        out[m] = o
    return out


def sanity_projections(model: nn.Module, prep: Rows, layer, layers: Sequence[tuple[str, str]],
                       methods: Sequence[str] = METHODS, modes: Sequence[str] = MODES, init: str = "default",
                       seed: int = 0, std: float = 1e-2, tap: str = "conv", seed_mode: str = "one",
                       progress: bool = False) -> list[dict]:
    """Every projection of the test: a list of steps, each {mode, step, randomised (names, top first), down_to,
    projections {method: (U, k, 3, h, w)}}; the first is the trained net (mode ``trained``, step 0).  ``model`` is
    never changed (the randomised nets are copies)."""

    for m in modes:
        if m not in MODES:
            raise ConfigError(f"sanity.modes: {m!r} is not one of {MODES}")
    plan = [("trained", 0, [])]
    if "cascade" in modes:
        plan += [("cascade", i + 1, s) for i, s in enumerate(cascade_steps(layers))]
    if "independent" in modes:
        plan += [("independent", i + 1, [l]) for i, l in enumerate(list(layers)[::-1])]
    base = copy.deepcopy(model).eval()
    trained = {k: v.clone() for k, v in base.state_dict().items()}
    out, current = [], None
    for mode, step, rand in tqdm(plan, desc="sanity", disable=not progress):
        paths = [p for _, p in rand]
        if mode == "cascade" and current is not None and current[0] == "cascade":
            randomize_(base, [paths[-1]], init, seed, std)  # one more layer than the previous step
        else:
            base.load_state_dict(trained)
            randomize_(base, paths, init, seed, std)
        current = (mode, step)
        out.append({"mode": mode, "step": step, "randomised": [n for n, _ in rand],
                    "down_to": rand[-1][0] if rand else "",
                    "projections": project_rows_methods(base, prep, layer, methods, tap, seed_mode)})
    return out


def similarity_rows(steps: list[dict], units: Sequence[int], image_ids: np.ndarray) -> list[dict]:
    """One dict per method x mode x step x row: its Spearman and SSIM against the trained projection."""
    trained = steps[0]["projections"]
    rows = []
    for s in steps:
        for m, proj in s["projections"].items():
            for i, u in enumerate(units):
                for r in range(proj.shape[1]):
                    if image_ids[i, r] < 0:
                        continue
                    rho, ss = similarity(trained[m][i, r], proj[i, r])
                    rows.append({"method": m, "mode": s["mode"], "step": s["step"], "down_to": s["down_to"],
                                 "randomised": "+".join(s["randomised"]), "unit": int(u), "rank": r,
                                 "image": int(image_ids[i, r]), "spearman_abs": rho, "ssim": ss})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Medians per method x mode x step (NaNs, from zero maps, left out and counted)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["mode"], r["step"]), []).append(r)
    out = []
    for (m, mode, step), g in groups.items():
        rho = np.array([r["spearman_abs"] for r in g], float)
        ss = np.array([r["ssim"] for r in g], float)
        ok = np.isfinite(rho)
        out.append({"method": m, "mode": mode, "step": step, "down_to": g[0]["down_to"],
                    "randomised": g[0]["randomised"], "rows": len(g), "zero_maps": int((~ok).sum()),
                    "median_spearman_abs": float(np.median(rho[ok])) if ok.any() else float("nan"),
                    "median_ssim": float(np.median(ss[ok])) if ok.any() else float("nan")})
    return out


# --- the experiment ------------------------------------------------------------------------------------------------


def check_args(methods: Sequence[str], modes: Sequence[str], init: str, tap: str = "conv",
               seed_mode: str = "one") -> None:
    """One-line ``ConfigError``s for the experiment's options, before any pass over the data."""

    for key, vals, allowed in (("methods", methods, METHODS), ("modes", modes, MODES)):
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise ConfigError(f"sanity.{key}: {bad[0] if bad else 'empty'!r} is not a list of {allowed}")
    if init not in INITS:
        raise ConfigError(f"sanity.init={init!r}: use one of {INITS}")
    if tap not in TAPS:
        raise ConfigError(f"sanity.tap={tap!r}: use one of {TAPS}")
    if seed_mode not in SEED_MODES:
        raise ConfigError(f"sanity.seed_mode={seed_mode!r}: use one of {SEED_MODES}")


def run(model: nn.Module, dataset, table: TopK, layer: str, out, *, units: Sequence[int] | None = None,
        n_units: int = 16, methods: Sequence[str] = METHODS, modes: Sequence[str] = MODES, init: str = "default",
        std: float = 1e-2, seed: int = 0, tap: str = "conv", seed_mode: str = "one", show_units: int = 3,
        normalize=None, display_mode: str = "symmetric", device="cpu", dpi: int = 110, tracker=None,
        info: dict | None = None, progress: bool = False) -> float:
    """The randomisation test on ``layer``'s top-k rows (``table``, mined at the job's tap): ``sanity.csv`` (one row
    per method x mode x step x row), ``sanity_summary.csv`` (medians), ``sanity.npz`` (the projections of the
    shown units), ``summary.json`` and ``figures/sanity_<mode>_<layer>.png``, ``figures/sanity_curves_<layer>.png``
    under ``out``; logged to ``tracker``.  ``layer`` is the table's layer name; the projections start from
    ``resolve_layer(model, layer, tap)`` (same channels and positions).  Returns the deconvnet's median Spearman
    after the full cascade (NaN without it)."""


    check_args(methods, modes, init, tap, seed_mode)
    out = Path(out)
    units = [int(u) for u in units] if units else table.choose_units(n_units, seed)
    missing = sorted(set(units) - set(int(u) for u in table.units))
    if missing:
        raise ConfigError(f"sanity.units: {missing[:5]} are not units of {layer} (0..{len(table.units) - 1})")
    target = target_layer(model, layer, tap)
    size = getattr(dataset, "size", 224)
    layers = weighted_layers(model, target.path, "conv", size if isinstance(size, int) else 224)
    if not layers:
        raise ConfigError(f"sanity: no weighted layer runs before {target.name}")
    sub = table.select(units)
    prep = prepare_rows(dataset, sub, units, normalize, device)
    steps = sanity_projections(model, prep, target.path, layers, methods, modes, init, seed, std, tap, seed_mode,
                               progress)
    rows = similarity_rows(steps, units, sub.image)
    summary = summarise(rows)
    write_csv(out / "sanity.csv", rows)
    write_csv(out / "sanity_summary.csv", summary)
    show = list(range(min(int(show_units), len(units))))
    np.savez_compressed(out / "sanity.npz", units=np.array(units)[show], patches=prep.patches[show],
                        steps=np.array([f"{s['mode']}:{s['step']}:{s['down_to']}" for s in steps]),
                        **{m: np.stack([s["projections"][m][show] for s in steps]).astype(np.float16)
                           for m in methods})
    figs = {}
    for mode in [m for m in MODES if m in modes]:
        fig, _ = sanity_figure(steps, prep.patches, units, show, mode, target.name, display_mode=display_mode)
        figs[mode] = save_figure(fig, out / "figures" / f"sanity_{mode}_{target.name}.png", tracker,
                                 f"sanity_{mode}", dpi)
    if "cascade" in modes:
        fig, _ = curves_figure(summary, target.name)
        figs["curves"] = save_figure(fig, out / "figures" / f"sanity_curves_{target.name}.png", tracker,
                                     "sanity_curves", dpi)
    last = max((r["step"] for r in summary if r["mode"] == "cascade"), default=None)
    final = {r["method"]: r["median_spearman_abs"] for r in summary if r["mode"] == "cascade" and r["step"] == last}
    (out / "summary.json").write_text(json.dumps(
        {**(info or {}), "layer": target.name, "mined_layer": layer, "tap": tap, "seed_mode": seed_mode,
         "units": units, "k": table.k, "methods": list(methods), "modes": list(modes), "init": init,
         "std": std if init == "normal" else None, "seed": seed, "randomised_layers": [n for n, _ in layers],
         "images": len(dataset), "summary": summary, "figures": {k: str(v) for k, v in figs.items()}},
        indent=1, default=str))
    if tracker is not None:
        cols = list(summary[0])
        tracker.table("sanity_summary", cols, [[r[c] for c in cols] for r in summary])
        tracker.summary({f"sanity/{m}_cascade_spearman": v for m, v in final.items()})
    print(f"sanity: {target.name}, units {units}, {len(layers)} weighted layers; median Spearman after the full "
          f"cascade {({m: round(v, 3) for m, v in final.items()})}; {out / 'sanity_summary.csv'}")
    return float(final.get("deconvnet", float("nan")))
