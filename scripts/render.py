"""Re-render a main-job run from its saved arrays (no model, no data): ``python scripts/render.py <run dir>
[--display minmax] [--dpi 150]``.  Rewrites the projection PNGs, per-unit images, overview figures and gallery.
The same as ``zf render <run dir>`` (``zf.edge.command.render``)."""
from zf.edge.command import render

if __name__ == "__main__":
    render()
