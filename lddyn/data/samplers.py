"""Index streams: which training samples each step sees, with their loss weights.

A stream walks passes over a pool of indices, and a batch never spans two passes (the reference's
drop_last). At the start of each pass the stream asks its ``refresh`` function for the pool and
per-sample weights, which is where pruning methods plug in. By default a pass is never cut short
and the next pool is drawn when the pass ends. ``PassRules`` reproduce how a data loader that is
re-created every epoch and reads ahead cuts passes instead (the released code's loaders). All
randomness comes from the generator the trainer passes, so streams resume exactly.
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
    weight: Tensor  # (B,) loss weight of each sample (float64; cast to the loss's dtype where used)
    status: Tensor  # (B,) KEPT / RESCALED


Refresh = Callable[[torch.Generator], tuple[Tensor, Tensor]]  # -> (pool indices, weight per set index)


@dataclass(frozen=True)
class PassRules:
    """How passes are cut. The defaults never cut one.

    ``restart_every``: every so many batches the stream starts a new pass over its current pool in
    a fresh order, dropping the unfinished pass without asking for a new pool (a data loader
    re-created at each epoch). ``lookahead``: the next pool is drawn when the pass still has this
    many batches to serve, not when it ends (a loader whose workers have that many batches in
    flight: PyTorch's 2 per worker), so it sees the scores of that many fewer steps.
    """

    restart_every: int = 0
    lookahead: int = 0


def _full(size: int) -> Refresh:
    return lambda _: (torch.arange(size), torch.ones(size, dtype=torch.float64))


class RandomPasses:
    """Uniform passes without replacement over a pool that may change between passes."""

    def __init__(self, size: int, refresh: Refresh | None = None, rules: PassRules | None = None) -> None:
        self.size = size
        self.refresh = refresh or _full(size)
        self.rules = rules or PassRules()
        self.order = torch.zeros(0, dtype=torch.long)  # the current pass: its pool in drawing order
        self.weight = torch.ones(size, dtype=torch.float64)
        self.pos = 0
        self.passes = 0
        self.served = 0  # batches drawn so far
        self.pending: tuple[Tensor, Tensor] | None = None  # the next pass's pool, drawn ahead

    def _new_pass(self, generator: torch.Generator, restart: bool) -> None:
        """Start a pass: over the pool drawn ahead, else the current pool on a restart, else a new one."""
        if self.pending is not None:
            pool, self.weight = self.pending
        elif restart and self.passes:
            pool = self.order
        else:
            pool, self.weight = self.refresh(generator)
        self.pending = None
        self.order = pool[torch.randperm(len(pool), generator=generator)]
        self.pos = 0
        self.passes += 1

    def next_batch(self, n: int, generator: torch.Generator) -> Batch:
        every = self.rules.restart_every
        if every and self.served and self.served % every == 0:
            self._new_pass(generator, restart=True)
        elif self.pos + n > len(self.order):
            self._new_pass(generator, restart=False)
        if n > len(self.order):
            raise ValueError(f"batch of {n} is larger than the {len(self.order)} samples in the pool")
        batches_left = len(self.order) // n - self.pos // n  # this batch included
        if self.pending is None and batches_left <= self.rules.lookahead:
            self.pending = self.refresh(generator)
        index = self.order[self.pos : self.pos + n]
        self.pos += n
        self.served += 1
        weight = self.weight[index]
        status = torch.where(weight != 1, RESCALED, KEPT)
        return Batch(index, weight, status)

    @property
    def pool_size(self) -> int:
        return len(self.order)

    def state_dict(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "weight": self.weight,
            "pos": self.pos,
            "passes": self.passes,
            "served": self.served,
            "pending": self.pending,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order, self.weight = state["order"], state["weight"].double()
        self.pos, self.passes = state["pos"], state["passes"]
        self.served, self.pending = state.get("served", 0), state.get("pending")


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
        return Batch(index, torch.ones(n, dtype=torch.float64), torch.full((n,), KEPT))

    @property
    def pool_size(self) -> int:
        return self.size

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


IndexStream = RandomPasses | ClassBalanced
