"""The ``zf`` command (``[project.scripts]`` in pyproject.toml): one entry point for the scripts of the checkout,
with the same Hydra configs, from an installed wheel as from a checkout.

    zf run layer=4                    # = python scripts/run.py layer=4 (any Hydra override, -m for sweeps)
    zf train experiment=default_model # = python scripts/train.py ...
    zf render RUN [--display minmax]  # = python scripts/render.py RUN ...
    zf gallery RUN                    # = python scripts/gallery.py RUN
    zf stats RUN                      # = python scripts/projection_stats.py RUN

Each subcommand is one line of ``COMMANDS``: its name, the ``module:function`` that takes the rest of the command
line as a list of strings, and a one-line help.  The module is imported when its subcommand runs.  The
Hydra configs are the checkout's ``configs/``, which the wheel carries as ``zf/configs`` (``config_dir``).  Run
outputs go under ``./outputs`` of the current folder (``PROJECT_ROOT`` overrides it, as for the scripts).
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from pathlib import Path
from typing import Sequence

import hydra
import matplotlib

from zf.edge.tasks import cli, dispatch
from zf.errors import script_main
from zf.views.gallery import build_gallery
from zf.views.render import render_run
from zf.views.stats import projection_stats, stats_table

#: subcommand -> ("module:function" called with the remaining arguments, help line)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("zf.edge.command:run", "the main job or an experiment (configs/run.yaml): zf run layer=4"),
    "train": ("zf.edge.command:train", "train a model (configs/train.yaml): zf train experiment=default_model"),
    "render": ("zf.edge.command:render", "re-render a run from its arrays: zf render RUN [--display minmax]"),
    "gallery": ("zf.edge.command:gallery", "rebuild a run's gallery: zf gallery RUN"),
    "stats": ("zf.edge.command:stats", "how readable a run's projections are: zf stats RUN [--layers L ...]"),
    "explore": ("zf.explore:main", "the live explorer of a run in the browser: zf explore RUN [port=8000]"),
}


def config_dir() -> Path:
    """The Hydra configs: ``zf/configs`` (in a wheel, or the link to ``configs/`` in a checkout), else the
    checkout's ``configs/`` beside the package."""
    here = Path(__file__).resolve().parent.parent
    for d in (here / "configs", here.parent / "configs"):
        if (d / "run.yaml").is_file():
            return d
    raise FileNotFoundError(f"zf's Hydra configs are missing (looked in {here / 'configs'} and "
                            f"{here.parent / 'configs'}); reinstall zf")


def _hydra(config_name: str, argv: Sequence[str]) -> None:
    sys.argv = [f"zf {config_name}", *argv]  # Hydra reads its overrides from sys.argv

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def main(cfg):
        return cli(dispatch, cfg)

    main()


def run(argv: Sequence[str]) -> None:
    """``zf run ...``: ``scripts/run.py``."""
    _hydra("run", argv)


def train(argv: Sequence[str]) -> None:
    """``zf train ...``: ``scripts/train.py``."""
    _hydra("train", argv)


def render(argv: Sequence[str] | None = None) -> None:
    """``zf render RUN``: re-render a main-job run from its saved arrays (no model, no data); rewrites the projection
    PNGs, per-unit images, overview figures and gallery."""
    ap = argparse.ArgumentParser(prog="zf render", description=render.__doc__.split(";")[0])
    ap.add_argument("run", help="a run directory of zf run / scripts/run.py (holds summary.json)")
    ap.add_argument("--display", default="symmetric", choices=["symmetric", "minmax"])
    ap.add_argument("--dpi", type=int, default=110)
    ap.add_argument("--no-gallery", action="store_true")
    args = ap.parse_args(argv)
    for f in render_run(args.run, args.display, args.dpi, gallery=not args.no_gallery):
        print(f)


def gallery(argv: Sequence[str] | None = None) -> None:
    """``zf gallery RUN``: rebuild the static unit gallery of a main-job run from its saved arrays and PNGs (no
    model, no recomputing); open the printed index.html in a browser (file:// works)."""
    ap = argparse.ArgumentParser(prog="zf gallery", description="rebuild the unit gallery of a run")
    ap.add_argument("run_dir", help="run directory of zf run / scripts/run.py (holds summary.json and layers/)")
    ap.add_argument("--layers", nargs="+", help="only these layers (default: every mined layer)")
    args = ap.parse_args(argv)
    print(build_gallery(args.run_dir, layers=args.layers))


def stats(argv: Sequence[str] | None = None) -> None:
    """``zf stats RUN``: per layer and method of a main-job run, the image dependence of its projections and their
    edge alignment with their own patches against the chance level (``zf.views.stats``), as a markdown table."""
    ap = argparse.ArgumentParser(prog="zf stats", description=stats.__doc__.split(", as a")[0])
    ap.add_argument("run", help="a run directory of zf run / scripts/run.py (holds summary.json)")
    ap.add_argument("--layers", nargs="+", help="only these layers (default: every layer of the run)")
    ap.add_argument("--methods", nargs="+", help="only these methods (default: every method the run stored)")
    ap.add_argument("--sigma", type=float, default=2.0, help="blur in pixels before correlating (default 2)")
    args = ap.parse_args(argv)
    print(stats_table(projection_stats(args.run, args.layers, args.methods, args.sigma)))


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: zf COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``zf COMMAND ARGS...``: look the command up in ``COMMANDS`` and call its function with ``ARGS``."""
    matplotlib.use("Agg")  # the command, as the scripts, writes figures to files; the library never picks a backend
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        print(f"error: zf {name}: no such command{f' (did you mean {close[0]}?)' if close else ''}; "
              f"commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module, _, function = COMMANDS[name][0].partition(":")
    command = getattr(importlib.import_module(module), function)
    status = []
    script_main(lambda: status.append(command(rest)))  # a user error: one line, exit status 2
    if isinstance(status[0], int) and status[0]:
        sys.exit(status[0])


if __name__ == "__main__":
    main()
