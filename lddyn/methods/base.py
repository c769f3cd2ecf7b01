"""The method plug-in contract: small classes with optional hooks that reshape the same step.

A method never owns the loop. It may (1) supply the index stream of a training set (resampling,
pruning), (2) adjust the logits the pseudo-targets come from (CDMAD), (3) reshape the per-sample
loss terms (weights, logit offsets, extra terms), (4) update its state after the optimiser step, (5)
adjust test-time logits for the debiased metrics, (6) add modules to the model (an auxiliary head:
trained, checkpointed, EMA-averaged and seen by the dynamics recorder like any parameter), (7)
replace the confidence mask of the pseudo-labels (flexible thresholds), (8) name the training
phase of a step (recorded in the tables), (9) build a step's base terms itself instead of FixMatch
(a different base procedure; at most one method per run). Unused hooks are inherited no-ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from lddyn.config import MethodConfig
from lddyn.data.samplers import Batch, IndexStream, PassRules
from lddyn.data.sets import SSLData
from lddyn.losses import LossTerm

if TYPE_CHECKING:
    from lddyn.train.trainer import Trainer

DEFAULT_PHASE = "main"


@dataclass
class RunInfo:
    """What a method may know about the run when it is built."""

    data: SSLData
    total_steps: int
    lb_counts: Tensor  # (C,) labeled class counts
    seed: int = 0  # the run's seed, for methods that draw their own random numbers
    labeled_batch: int = 1  # B
    unlabeled_batch: int = 1  # mu * B
    passes: PassRules = PassRules()  # how the run's index streams cut their passes


@dataclass
class StepContext:
    """One training step as the methods see it. ``baseline_logits`` is computed lazily, once."""

    step: int  # 1-based index of the step being taken
    progress: float  # schedule position in steps (advances faster in compute-saving mode)
    total_steps: int
    model: torch.nn.Module
    baseline_fn: Callable[[], Tensor]
    lb: Batch | None = None
    ulb: Batch | None = None
    pseudo_label: Tensor | None = None  # (muB,) argmax of the (adjusted) weak-view prediction
    mask: Tensor | None = None  # (muB,)
    phase: str = DEFAULT_PHASE  # training phase of this step (a column of the train and dynamics tables)
    probs: Tensor | None = None  # (muB, C) weak-view class probabilities the pseudo-labels came from
    # model outputs of the step's forwards by input group ("labeled", "weak", "strong"), each a dict
    # with "feat", "logits" and any extra heads' logits; "weak" is computed without gradient
    outputs: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    _baseline: Tensor | None = field(default=None, repr=False)

    def baseline_logits(self) -> Tensor:
        """Logits (C,) of the student on the baseline image, forwarded as the config says."""
        if self._baseline is None:
            self._baseline = self.baseline_fn()
        return self._baseline


@dataclass
class EvalContext:
    model: torch.nn.Module
    baseline_fn: Callable[[], Tensor]

    def baseline_logits(self) -> Tensor:
        return self.baseline_fn()


class Method:
    """Base class: every hook is optional."""

    name: ClassVar[str]
    uses_baseline: ClassVar[bool] = False  # the step then forwards the baseline image first
    #: loss terms a step may carry beyond FixMatch's two (the recorder's row estimate counts them)
    extra_terms: ClassVar[int] = 0
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, cfg: MethodConfig, info: RunInfo) -> None:
        self.cfg, self.info = cfg, info

    def extend_model(self, model: nn.Module) -> nn.Module:
        """The model to train: ``model`` itself, or a module wrapping it with extra parts (heads)."""
        return model

    def phase(self, step: int) -> str | None:
        """Name of the training phase of 1-based ``step``, or None when the method has no phases."""
        return None

    def build_terms(self, trainer: Trainer, ctx: StepContext) -> list[LossTerm] | None:
        """The step's base loss terms (drawing its own batches), or None to keep the FixMatch terms."""
        return None

    def adjust_mask(self, ctx: StepContext, probs: Tensor, mask: Tensor) -> Tensor:
        """The (muB,) pseudo-label mask from weak-view ``probs`` (muB, C); called once per step."""
        return mask

    def stream(self, which: str) -> IndexStream | None:
        """The index stream for ``which`` in {"labeled", "unlabeled"}, or None for the default."""
        return None

    def adjust_pseudo_logits(self, ctx: StepContext, logits_w: Tensor) -> Tensor:
        return logits_w

    def reshape_losses(self, ctx: StepContext, terms: list[LossTerm]) -> list[LossTerm]:
        return terms

    def after_step(self, ctx: StepContext, terms: list[LossTerm]) -> None:
        return None

    def test_logits(self, ctx: EvalContext, logits: Tensor) -> Tensor:
        return logits

    def schedule_increment(self) -> float:
        """How far one step advances the schedule (>1 when a shorter epoch stands for a full one)."""
        return 1.0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
