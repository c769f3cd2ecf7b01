"""Index streams: which training samples each step sees, with their loss weights.

A stream walks passes over a pool of indices. A pass is never cut short by any epoch boundary, and
a batch never spans two passes (the reference's drop_last). At the start of each pass the stream
asks its ``refresh`` function for the pool and per-sample weights, which is where pruning methods
plug in. All randomness comes from the generator the trainer passes, so streams resume exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lddyn.losses import KEPT, RESCALED


@dataclass
class Batch:
    index: Tensor  # (B,) positions in the set
    weight: Tensor  # (B,) loss weight of each sample
    status: Tensor  # (B,) KEPT / RESCALED


Refresh = Callable[[torch.Generator], tuple[Tensor, Tensor]]  # -> (pool indices, weight per set index)


class RandomPasses:
    """Uniform passes without replacement over a pool that may change between passes."""

    def __init__(self, size: int, refresh: Refresh | None = None) -> None:
        self.size = size
        self.refresh = refresh or (lambda _: (torch.arange(size), torch.ones(size)))
        self.order = torch.zeros(0, dtype=torch.long)
        self.weight = torch.ones(size)
        self.pos = 0
        self.passes = 0

    def _new_pass(self, generator: torch.Generator) -> None:
        pool, self.weight = self.refresh(generator)
        self.order = pool[torch.randperm(len(pool), generator=generator)]
        self.pos = 0
        self.passes += 1

    def next_batch(self, n: int, generator: torch.Generator) -> Batch:
        if self.pos + n > len(self.order):
            self._new_pass(generator)
            if n > len(self.order):
                raise ValueError(f"batch of {n} is larger than the {len(self.order)} samples in the pool")
        index = self.order[self.pos : self.pos + n]
        self.pos += n
        weight = self.weight[index]
        status = torch.where(weight != 1, RESCALED, KEPT)
        return Batch(index, weight, status)

    @property
    def pool_size(self) -> int:
        return len(self.order)

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order, "weight": self.weight, "pos": self.pos, "passes": self.passes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order, self.weight = state["order"], state["weight"]
        self.pos, self.passes = state["pos"], state["passes"]


class ClassBalanced:
    """Class-balanced resampling: each draw picks a class uniformly, then a sample of it uniformly."""

    def __init__(self, labels: Tensor, num_classes: int) -> None:
        self.size = len(labels)
        self.sorted = torch.argsort(labels, stable=True)  # set indices grouped by class
        self.counts = torch.bincount(labels, minlength=num_classes)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.present = torch.nonzero(self.counts).flatten()
        self.passes = 0

    def next_batch(self, n: int, generator: torch.Generator) -> Batch:
        classes = self.present[torch.randint(len(self.present), (n,), generator=generator)]
        within = (torch.rand(n, generator=generator) * self.counts[classes]).long()
        index = self.sorted[self.offsets[classes] + within]
        return Batch(index, torch.ones(n), torch.full((n,), KEPT))

    @property
    def pool_size(self) -> int:
        return self.size

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


IndexStream = RandomPasses | ClassBalanced
