"""Rebuild the static unit gallery of a main-job run from its saved arrays and PNGs (no model, no recomputing).

    python scripts/gallery.py outputs/2024-05-01/12-00-00 [--layers conv1 conv5]

Open the printed index.html in a browser (file:// works; no server needed).  See zf.views.gallery.  The same as
``zf gallery <run dir>`` (``zf.edge.command.gallery``).
"""
from zf.edge.command import gallery
from zf.errors import script_main

if __name__ == "__main__":
    script_main(gallery)  # a user error: one line, exit status 2
