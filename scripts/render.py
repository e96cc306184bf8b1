"""Re-render a main-job run from its saved arrays (no model, no data): ``python scripts/render.py <run dir>
[--display minmax] [--dpi 150]``.  Rewrites the projection PNGs, per-unit images, overview figures and gallery.
The same as ``zf render <run dir>`` (``zf.edge.command.render``)."""
import matplotlib

matplotlib.use("Agg")  # the scripts write figures to files; the library never picks a backend

from zf.edge.command import render  # noqa: E402
from zf.errors import script_main  # noqa: E402

if __name__ == "__main__":
    script_main(render)  # a user error: one line, exit status 2
