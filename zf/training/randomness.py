"""The randomness of a training run as a function of ``(seed, epoch, step)`` only (see ``zf.training.train``):
the global seeds of an epoch, seeds mixed from integers, the random numbers of one step drawn for the whole global
batch, and dropout that draws its masks from them."""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class GlobalBatchRandom:
    """The random numbers of one training step, drawn for the whole global batch from a CPU generator seeded by
    ``seed`` (the same on every process); ``rand(n, *shape)`` returns this process's ``n`` rows.

    ``DistributedSampler`` deals position ``j * world + rank`` of each global batch to process ``rank`` as its
    ``j``-th sample (1 process: every position in order), so the rows kept are ``rank, rank + world, ...``: each
    sample gets the same numbers whatever the number of processes.  Draws must come in the same order and shapes on
    every process, which they do (the same model and augmentation run on each)."""

    def __init__(self, seed: int, rank: int, world: int, local_batch: int, device=None):
        self.gen = torch.Generator().manual_seed(seed)
        self.rank, self.world, self.local_batch, self.device = rank, world, local_batch, device

    def rand(self, n: int, *shape: int) -> torch.Tensor:
        full = torch.rand((self.local_batch * self.world, *shape), generator=self.gen)
        return full[self.rank::self.world][:n].to(self.device)


class StepDropout:
    """While active, every ``nn.Dropout`` of ``model`` in training mode draws its mask from ``self.random`` (a
    ``GlobalBatchRandom``) instead of the global generator; ``close()`` restores the modules."""

    def __init__(self, model: nn.Module):
        self.random: GlobalBatchRandom | None = None
        self.modules = [m for m in model.modules() if type(m) is nn.Dropout]
        for m in self.modules:
            m.forward = self._forward(m)

    def _forward(self, m: nn.Dropout):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if not m.training or m.p == 0 or self.random is None:
                return F.dropout(x, m.p, m.training, m.inplace)
            if m.p == 1:
                return x * 0
            keep = self.random.rand(x.shape[0], *x.shape[1:]) >= m.p
            return x * keep.to(x.dtype) * (1.0 / (1.0 - m.p))
        return forward

    def close(self) -> None:
        for m in self.modules:
            if "forward" in m.__dict__:
                del m.forward


__all__ = ["seed_everything", "mix_seed", "GlobalBatchRandom", "StepDropout"]
