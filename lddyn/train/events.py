"""Training events and the callback base class. The loop only dispatches; callbacks act.

Events, in order within a step: ``step_start(ctx)``, ``loss_terms(ctx, terms)`` (graph alive,
before backward), ``step_end(ctx, terms)`` (after the optimiser step and method updates).
Around the run: ``train_start`` and ``train_end``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lddyn.losses import LossTerm
from lddyn.methods.base import StepContext

if TYPE_CHECKING:
    from lddyn.train.trainer import Trainer

EVENTS = ("train_start", "step_start", "loss_terms", "step_end", "train_end")


class Callback:
    """Override the events you need; ``state_dict`` is checkpointed under ``name``."""

    name = "callback"

    def on_train_start(self, trainer: Trainer) -> None:
        return None

    def on_step_start(self, trainer: Trainer, ctx: StepContext) -> None:
        return None

    def on_loss_terms(self, trainer: Trainer, ctx: StepContext, terms: list[LossTerm]) -> None:
        return None

    def on_step_end(self, trainer: Trainer, ctx: StepContext, terms: list[LossTerm]) -> None:
        return None

    def on_train_end(self, trainer: Trainer) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
