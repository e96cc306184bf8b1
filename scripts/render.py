"""Re-render a main-job run from its saved arrays (no model, no data): ``python scripts/render.py <run dir>
[--display minmax] [--dpi 150]``.  Rewrites the projection PNGs, per-unit images, overview figures and gallery."""
import argparse

from zf.errors import script_main
from zf.views.render import render_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", help="a run directory of scripts/run.py (holds summary.json)")
    ap.add_argument("--display", default="symmetric", choices=["symmetric", "minmax"])
    ap.add_argument("--dpi", type=int, default=110)
    ap.add_argument("--no-gallery", action="store_true")
    args = ap.parse_args()
    for f in render_run(args.run, args.display, args.dpi, gallery=not args.no_gallery):
        print(f)


if __name__ == "__main__":
    script_main(main)  # a user error: one line, exit status 2
