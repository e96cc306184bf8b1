"""Readable names for class ids (wnids) in figures and tables."""
from __future__ import annotations

from typing import Sequence

#: The ten Imagenette classes.
IMAGENETTE = {"n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
              "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
              "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
              "n03888257": "parachute"}


def readable(wnids: Sequence[str], names: dict | None = None) -> list[str]:
    """``names`` (default ``IMAGENETTE``) of each wnid, the wnid itself where unknown."""
    names = IMAGENETTE if names is None else names
    return [names.get(w, w) for w in wnids]
