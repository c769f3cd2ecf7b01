"""EMA of the student over parameters *and* buffers, with the reference's decoupled weight decay.

After every optimiser step: ema <- a * ema + (1 - a) * student for each float state entry, then the
student's float entries (BN running statistics included) are multiplied by (1 - wd * lr). Integer
entries (BatchNorm's step counters) are copied, or left at their initial value with
``train.ema_counts=frozen`` as the released WeightEMA leaves them (its float casts copy them).
"""

from __future__ import annotations

import torch

from lddyn.train.events import Callback
from lddyn.train.optim import current_lr


class EMA(Callback):
    name = "ema"

    @torch.no_grad()
    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        decay, wd = trainer.cfg.train.ema, trainer.cfg.optim.ema_weight_decay
        copy_counts = trainer.cfg.train.ema_counts == "copy"
        shrink = 1.0 - wd * current_lr(trainer.optimizer)
        student = trainer.model.state_dict()
        for key, ema_value in trainer.ema_model.state_dict().items():
            value = student[key]
            if not value.dtype.is_floating_point:
                if copy_counts:
                    ema_value.copy_(value)
                continue
            ema_value.mul_(decay).add_(value, alpha=1 - decay)
            if wd:
                value.mul_(shrink)
