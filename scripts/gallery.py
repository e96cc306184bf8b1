"""Rebuild the static unit gallery of a main-job run from its saved arrays and PNGs (no model, no recomputing).

    python scripts/gallery.py outputs/2024-05-01/12-00-00 [--layers conv1 conv5]

Open the printed index.html in a browser (file:// works; no server needed).  See zf.views.gallery.
"""
import argparse

from zf.errors import script_main
from zf.views.gallery import build_gallery


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="run directory of scripts/run.py (holds summary.json and layers/)")
    p.add_argument("--layers", nargs="+", help="only these layers (default: every mined layer)")
    args = p.parse_args()
    print(build_gallery(args.run_dir, layers=args.layers))


if __name__ == "__main__":
    script_main(main)  # a user error: one line, exit status 2
