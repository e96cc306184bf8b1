"""A fault-injection point for tests: the fault battery (``tests/test_faults.py``) makes a process wait at a named
point so that its ``kill -9`` lands there for certain, then checks that a rerun equals a clean run.

With ``ZF_PAUSE_AT=<name>`` and ``ZF_PAUSE_FILE=<path>`` in the environment, ``pause_point(name)`` writes the
process id to that file and waits until the file is removed (or the process is killed).  Without them it does
nothing.  Points: ``train:<epoch>:<step>`` (``zf.training.train.fit``), ``render:<layer>`` (``zf.views.render``, after
the first unit's PNGs of a layer), ``gallery`` (``zf.views.gallery.build_gallery``, after the first layer's pages).
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def pause_point(name: str) -> None:
    """Wait here if the environment asks to (see the module docstring)."""
    if os.environ.get("ZF_PAUSE_AT") != name or not os.environ.get("ZF_PAUSE_FILE"):
        return
    marker = Path(os.environ["ZF_PAUSE_FILE"])
    marker.write_text(str(os.getpid()))
    while marker.exists():
        time.sleep(0.05)
