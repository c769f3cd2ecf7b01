"""Per-sample loss terms: the common currency of the training step, the methods and the dynamics.

A step's loss is ``L = sum over terms of sum_b weight_b * CE(logits_b + offset, targets_b) / norm``
(CE with log-softmax, or with log(softmax + log_eps) as the released code takes it).
Terms stay unreduced until the very end so that the dynamics recorder can split the logit gradient
G = dL/dz by term, source class, pseudo-label correctness and pruning status, and so that methods
reshape a step by editing fields (targets, weights, logit offsets) rather than rewriting the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

# Pruning status codes carried per sample (the `status` column of the dynamics tables).
KEPT, RESCALED, PRUNED = 0, 1, 2
STATUS_NAMES = {KEPT: "kept", RESCALED: "rescaled", PRUNED: "pruned"}


@dataclass
class LossTerm:
    """One named loss term over a batch of samples.

    Shapes: N samples, C classes. ``logits`` come from the training forward and carry the graph.
    ``weight`` holds every per-sample factor (confidence mask, class weights, 1/r rescaling);
    ``norm`` is the batch normaliser, so a plain mean has weight 1 and norm N.
    """

    name: str
    logits: Tensor  # (N, C), requires grad
    targets: Tensor  # (N, C) soft targets, rows sum to 1 (one-hot for labels)
    weight: Tensor  # (N,)
    norm: float
    index: Tensor  # (N,) dataset index of each sample in its own set
    source_class: Tensor  # (N,) true label (labeled) or pseudo-label argmax (unlabeled)
    true_class: Tensor  # (N,) true label, -1 when unknown
    status: Tensor  # (N,) KEPT / RESCALED / PRUNED
    logit_offset: Tensor | None = None  # (C,) or (N, C) added to the logits inside the loss only
    labeled: bool = True
    inputs: Tensor | None = None  # (N, ...) the (augmented) inputs the logits came from, for per-sample eNTKs
    # Per-sample unweighted loss from the loss logits, for terms that are not a cross-entropy against
    # ``targets`` (a batch-coupled term written as per-sample pieces with the exact gradient). None = soft CE.
    loss_fn: Callable[[Tensor], Tensor] | None = None
    # > 0: the soft CE takes log(softmax + log_eps) as the released SemiLoss does (its log term is then
    # capped at -log(log_eps) nats and its gradient is not exactly softmax - targets); 0: log-softmax
    log_eps: float = 0.0
    # per_sample() once computed: the loss back-propagated and a dynamics recorder see one tensor
    _per_sample: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def loss_logits(self) -> Tensor:
        """Logits as the loss sees them (after any logit adjustment)."""
        return self.logits if self.logit_offset is None else self.logits + self.logit_offset

    def unweighted(self) -> Tensor:
        """Per-sample loss (soft CE unless ``loss_fn``), shape (N,), before weights and normaliser."""
        if self.loss_fn is not None:
            return self.loss_fn(self.loss_logits())
        z = self.loss_logits()
        log_p = torch.log(F.softmax(z, dim=-1) + self.log_eps) if self.log_eps else F.log_softmax(z, dim=-1)
        return -(self.targets * log_p).sum(-1)

    def per_sample(self) -> Tensor:
        """Per-sample contribution ell_b to the total loss, shape (N,); computed once per term
        (``with_`` makes a new term), so every reader holds the tensor the loss sums."""
        if self._per_sample is None:
            self._per_sample = self.weight * self.unweighted() / self.norm
        return self._per_sample

    def loss(self) -> Tensor:
        return self.per_sample().sum()

    def with_(self, **changes: object) -> LossTerm:
        return replace(self, **changes)

    @property
    def correct(self) -> Tensor:
        """Pseudo-label correctness per sample: 1 correct, 0 wrong, -1 unknown or labeled."""
        out = torch.full_like(self.source_class, -1)
        if self.labeled:
            return out
        known = self.true_class >= 0
        out[known] = (self.source_class[known] == self.true_class[known]).to(out.dtype)
        return out


def total_loss(terms: list[LossTerm]) -> Tensor:
    return torch.stack([t.loss() for t in terms]).sum()
