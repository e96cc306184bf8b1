"""The top-k table of one layer (``TopK``): what mining produces, what the cache and ``topk.npz`` store, and what
the views draw from.  Plain numpy, so a run can be read back without the model."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

TOPK_FIELDS = ("units", "activation", "image", "y", "x", "box")


@dataclass
class TopK:
    """The top-k table of one layer.  ``units`` (U,); ``activation``, ``image``, ``y``, ``x`` (U, k); ``box``
    (U, k, 4) as y0, y1, x0, x1 (half-open, unclipped input pixels).  ``image`` = -1 where fewer than k images
    had a value (tiny data sets)."""

    units: np.ndarray
    activation: np.ndarray
    image: np.ndarray
    y: np.ndarray
    x: np.ndarray
    box: np.ndarray

    @property
    def k(self) -> int:
        return self.activation.shape[1]

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, **{f: getattr(self, f) for f in TOPK_FIELDS})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TopK":
        with np.load(path) as z:
            return cls(**{f: z[f] for f in TOPK_FIELDS})

    def select(self, units: Sequence[int], ranks: int | None = None) -> "TopK":
        """The rows of ``units`` (channel numbers, in that order), optionally only the first ``ranks`` ranks."""
        pos = {int(u): i for i, u in enumerate(self.units)}
        idx = np.array([pos[int(u)] for u in units], dtype=np.int64)
        sub = {f: getattr(self, f)[idx] for f in TOPK_FIELDS}
        if ranks is not None:
            sub = {f: v if f == "units" else v[:, :ranks] for f, v in sub.items()}
        return TopK(**sub)

    @property
    def dead(self) -> list[int]:
        """Units that never fire on the mined data (top-1 activation not > 0): their "top k" are ties at zero,
        broken by image index, and show nothing about the unit."""
        return [int(u) for u, a in zip(self.units, self.activation[:, 0]) if not a > 0]

    def choose_units(self, n: int, seed: int = 0) -> list[int]:
        """``n`` units picked at random (seeded) among those that fire (dead units have nothing to show), sorted;
        falls back to any unit when fewer than ``n`` fire."""
        act = np.nan_to_num(self.activation[:, 0], nan=0.0)
        alive = self.units[act > 0]
        pool = alive if len(alive) >= n else self.units
        rng = np.random.default_rng(seed)
        return sorted(int(u) for u in rng.choice(pool, size=min(n, len(pool)), replace=False))
