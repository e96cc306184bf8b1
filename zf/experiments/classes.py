"""Readable names for class ids (wnids) in figures and tables."""
from __future__ import annotations

from typing import Sequence

#: The ten Imagenette classes.
IMAGENETTE = {"n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
              "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
              "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
              "n03888257": "parachute"}


def imagenet_names() -> dict:
    """wnid -> the first of its ImageNet names (``n01443537``: ``goldfish``) from timm's ``ImageNetInfo`` where timm
    is installed (the optional extra ``zf[timm]``), else ``{}``."""
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return {w: info.label_name_to_description(w).split(",")[0] for w in info.label_names()}
    except Exception:  # noqa: BLE001  (no timm, or a timm without ImageNetInfo: wnids stay as they are)
        return {}


def readable(wnids: Sequence[str], names: dict | None = None) -> list[str]:
    """``names`` (default ``IMAGENETTE``, then the ImageNet names of ``imagenet_names``) of each wnid, the wnid
    itself where unknown (a class folder that is not an ImageNet wnid keeps its name)."""
    if names is None:
        names = IMAGENETTE
        if any(w not in names for w in wnids):
            names = {**imagenet_names(), **IMAGENETTE}
    return [names.get(w, w) for w in wnids]
