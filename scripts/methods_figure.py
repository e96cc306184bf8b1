"""Fig. 2's layout for several layers, methods side by side, from a finished main-job run (no model, no data):
``python scripts/methods_figure.py <run> [--layers relu2_2 relu5_3] [--methods deconvnet guided] [--out file.png]``.
Writes ``<run>/figures/methods_overview.png`` unless ``--out`` says otherwise."""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the scripts write figures to files; the library never picks a backend

from zf.views.render import methods_overview  # noqa: E402
from zf.views.results import save_figure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", help="a run directory of scripts/run.py with the methods computed (compare_methods=true)")
    ap.add_argument("--layers", nargs="*", default=None)
    ap.add_argument("--methods", nargs="*", default=["deconvnet", "guided"])
    ap.add_argument("--units", type=int, default=4, help="units per layer")
    ap.add_argument("--tile", type=int, default=64, help="tile side in pixels (antialiased)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    fig, _ = methods_overview(args.run, args.layers, args.methods, args.units, args.tile)
    print(save_figure(fig, args.out or Path(args.run) / "figures" / "methods_overview.png", dpi=100))


if __name__ == "__main__":
    main()
