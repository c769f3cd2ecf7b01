"""Stop a run at the first step whose loss is not finite, before anything of that step is recorded.

It is the first callback of a step, so the step's rows, evaluation and checkpoint never happen: the
run ends failed with a message naming the step and the term, and the last checkpoint (of a step
whose loss was finite) stays as it was. It reads the step's terms after the processes have agreed
on them, so under torchrun every process stops at the same step.
"""

from __future__ import annotations

import math

import torch

from lddyn.train.callbacks.checkpoint import Checkpoint
from lddyn.train.events import Callback
from lddyn.train.outcome import NonFiniteLoss


class FiniteLoss(Callback):
    name = "finite_loss"

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        with torch.no_grad():
            values = torch.stack([t.loss().detach().float() for t in terms])
            if bool(torch.isfinite(values).all()):  # one device sync per step
                return
        bad = [f"{t.name}={v:g}" for t, v in zip(terms, values.tolist(), strict=True) if not math.isfinite(v)]
        saved = next((cb.saved_step for cb in trainer.callbacks if isinstance(cb, Checkpoint)), None)
        kept = f"the checkpoint of step {saved} is kept" if saved else "no checkpoint was written yet"
        raise NonFiniteLoss(
            f"the loss is not finite at step {trainer.state.step}: loss term {', '.join(bad)}; the run "
            f"stops there, {kept} (lower optim.lr, or check the data)"
        )
