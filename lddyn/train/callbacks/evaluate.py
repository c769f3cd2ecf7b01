"""Evaluation of the EMA model: per-class recall, raw and debiased, into the ``metrics`` table.

Debiased logits are the raw ones passed through every method's ``test_logits`` hook in order
(CDMAD subtracts the EMA model's baseline logits); with no such method they equal the raw ones.
bACC, GM and many/medium/few-shot means are written too, as rows derived from the recalls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lddyn.methods.base import EvalContext
from lddyn.metrics import per_class_recall, summarize
from lddyn.train.events import Callback
from lddyn.train.forward import baseline_logits


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    x: Tensor,
    batch_size: int = 512,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Logits of ``model`` in eval mode on images ``x``, passed through ``transform`` batch by batch."""
    model.eval()
    prep = transform or (lambda batch: batch)
    return torch.cat([model(prep(x[i : i + batch_size]))["logits"] for i in range(0, len(x), batch_size)])


def evaluate(trainer, model: torch.nn.Module) -> dict[bool, Tensor]:  # noqa: ANN001
    """Per-class recall {debiased: (C,)} of ``model`` on the test split."""
    data = trainer.data
    logits = predict(model, data.x_test, transform=trainer.aug.normalize)  # the test transform
    ctx = EvalContext(model, lambda: baseline_logits(model, trainer.baseline, train=False))
    debiased = logits
    for method in trainer.methods:
        debiased = method.test_logits(ctx, debiased)
    k = data.num_classes
    return {
        False: per_class_recall(logits.argmax(-1), data.y_test, k).cpu(),
        True: per_class_recall(debiased.argmax(-1), data.y_test, k).cpu(),
    }


def metric_rows(step: int, recalls: dict[bool, Tensor], lb_counts: list[int]) -> list[dict[str, Any]]:
    rows = []
    for debiased, recall in recalls.items():
        for c, r in enumerate(recall.tolist()):
            rows.append(dict(step=step, split="test", cls=c, metric="recall", value=r, debiased=debiased))
        for name, value in summarize(recall, lb_counts).items():
            rows.append(dict(step=step, split="test", cls=-1, metric=name, value=value, debiased=debiased))
    return rows


class Evaluate(Callback):
    name = "evaluate"

    def __init__(self) -> None:
        self.last: dict[bool, Tensor] | None = None

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        step = trainer.state.step
        if step % trainer.cfg.train.eval_every and not trainer.finished:
            return
        self.last = evaluate(trainer, trainer.ema_model)
        trainer.sink.add("metrics", metric_rows(step, self.last, trainer.info.lb_counts.tolist()))
