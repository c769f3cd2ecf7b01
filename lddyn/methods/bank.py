"""BMB's class-balanced memory bank of detached features, and its running class-count estimate.

Every rule uses the class-probability helper P_k(x; e) = max(x_k, 1e-3)^(-e): a class scores high
when its count is low. Enqueue admits a candidate of class k with probability P(m; beta)_k / max
(m = in-bank counts), so rare classes enter and common ones are held back; while some class is
absent, present classes are all but blocked. When the accepted candidates exceed the free slots,
entries are overwritten, drawn with probability 1 - p_in of their class (common classes leave
first). Reversed sampling draws entries with probability proportional to the estimated
unlabeled-count score P(N_hat; gamma_r) of their class, favouring classes rare in the unlabeled data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

EMPTY = -1


def class_scores(counts: Tensor, power: float) -> Tensor:
    """P(x; e) = max(x, 1e-3)^(-e), per class; a (C,) tensor."""
    return counts.double().clamp_min(1e-3).pow(-power)


def relative_weights(counts: Tensor, power: float) -> Tensor:
    """P(x; e) / max P: 1 for the rarest class, (x_min / x_k)^e for the others; all 1 when x = 0."""
    scores = class_scores(counts, power)
    return (scores / scores.max()).float()


@dataclass
class Drawn:
    feat: Tensor  # (n, D)
    label: Tensor  # (n,) stored hard label
    origin: Tensor  # (n,) unlabeled-set index of the sample the feature came from
    true: Tensor  # (n,) true label of that sample (-1 unknown)


class BalancedBank:
    """A fixed-capacity store of (feature, label) pairs kept class-balanced by its enqueue rule."""

    def __init__(self, capacity: int, dim: int, num_classes: int, beta: float) -> None:
        self.capacity, self.num_classes, self.beta = capacity, num_classes, beta
        self.feat = torch.zeros(capacity, dim)
        self.label = torch.full((capacity,), EMPTY, dtype=torch.long)
        self.origin = torch.full((capacity,), EMPTY, dtype=torch.long)
        self.true = torch.full((capacity,), EMPTY, dtype=torch.long)

    @property
    def filled(self) -> int:
        return int((self.label != EMPTY).sum())

    def counts(self) -> Tensor:
        """(C,) entries per class."""
        occupied = self.label[self.label != EMPTY]
        return torch.bincount(occupied, minlength=self.num_classes)

    def entry_prob(self) -> Tensor:
        """(C,) probability that a candidate of each class is admitted, given the current bank."""
        return relative_weights(self.counts(), self.beta)

    def enqueue(self, cand: Drawn, generator: torch.Generator) -> int:
        """Admit candidates by the enqueue rule, overwriting entries if needed; returns how many entered."""
        p_in = self.entry_prob()
        accept = torch.rand(len(cand.label), generator=generator) < p_in[cand.label]
        chosen = torch.nonzero(accept).flatten()[: self.capacity]
        if len(chosen) == 0:
            return 0
        free = torch.nonzero(self.label == EMPTY).flatten()
        overflow = len(chosen) - len(free)
        slots = free
        if overflow > 0:
            occupied = torch.nonzero(self.label != EMPTY).flatten()
            leave = 1.0 - p_in[self.label[occupied]].double()
            if float(leave.sum()) <= 0:  # every class equally represented: leave uniformly
                leave = torch.ones(len(occupied), dtype=torch.double)
            picked = torch.multinomial(leave, overflow, replacement=True, generator=generator)
            # drawn with replacement: a slot drawn twice is overwritten once, the surplus is dropped
            slots = torch.cat([free, occupied[picked].unique()])
        chosen = chosen[: len(slots)]
        slots = slots[: len(chosen)]
        self.feat[slots] = cand.feat[chosen].to(self.feat)
        self.label[slots] = cand.label[chosen]
        self.origin[slots] = cand.origin[chosen]
        self.true[slots] = cand.true[chosen]
        return len(chosen)

    def draw(self, n: int, class_weight: Tensor, generator: torch.Generator) -> Drawn:
        """``min(n, filled)`` entries with replacement, entry e drawn with probability ∝ class_weight[L_e]."""
        occupied = torch.nonzero(self.label != EMPTY).flatten()
        n = min(n, len(occupied))
        if n == 0:
            empty = torch.zeros(0, dtype=torch.long)
            return Drawn(self.feat[:0], empty, empty, empty)
        w = class_weight.double()[self.label[occupied]]
        rows = occupied[torch.multinomial(w, n, replacement=True, generator=generator)]
        return Drawn(self.feat[rows], self.label[rows], self.origin[rows], self.true[rows])

    def state_dict(self) -> dict[str, Any]:
        return {"feat": self.feat, "label": self.label, "origin": self.origin, "true": self.true}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.feat, self.label = state["feat"].clone(), state["label"].clone()
        self.origin, self.true = state["origin"].clone(), state["true"].clone()


class CountEstimate:
    """Running mean over steps of a per-step class count (BMB's estimate N_hat of the unlabeled counts)."""

    def __init__(self, num_classes: int) -> None:
        self.sum = torch.zeros(num_classes, dtype=torch.double)
        self.steps = 0

    def update(self, counts: Tensor) -> None:
        self.sum += counts.double().cpu()
        self.steps += 1

    def reset(self) -> None:
        self.sum.zero_()
        self.steps = 0

    def value(self) -> Tensor:
        """(C,) mean count per step; all zero before the first update."""
        return self.sum / max(self.steps, 1)

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self.sum, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sum, self.steps = state["sum"].clone(), state["steps"]
