"""The baseline-image probe: the class prior the model has absorbed, softmax(z(I)) for I = k * 1.

Every ``probe.every`` steps and for each colour k it writes pi(I) of the student in train mode
(batch statistics of the image itself, as the reference forwards it), of the student with running
statistics, and of the EMA model, next to the labeled prior, the true unlabeled prior and the
pseudo-label distribution since the previous probe. Probing never changes the model: train-mode
forwards run on copies of the BN buffers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from lddyn.data.sets import class_prior
from lddyn.train.distributed import replicated_input
from lddyn.train.events import Callback
from lddyn.train.forward import baseline_image, baseline_logits, model_mode


@torch.no_grad()
def side_effect_free_logits(model: torch.nn.Module, image: Tensor, train: bool) -> Tensor:
    """Baseline logits (C,) without touching the model's buffers, whatever the mode."""
    if not train:
        return baseline_logits(model, image, train=False)
    state = {k: v.clone() for k, v in model.named_buffers()}
    state.update(dict(model.named_parameters()))
    x = image.expand(2, *image.shape[1:])  # two copies: same statistics, BatchNorm1d-safe
    with model_mode(model, True), replicated_input():  # every process forwards the same image
        return functional_call(model, state, (x,))["logits"][0]


class BaselineProbe(Callback):
    name = "baseline_probe"

    def __init__(self) -> None:
        self.pseudo_counts: Tensor | None = None

    def on_train_start(self, trainer) -> None:  # noqa: ANN001
        if self.pseudo_counts is None:
            self.pseudo_counts = torch.zeros(trainer.data.num_classes)

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        if ctx.pseudo_label is not None and self.pseudo_counts is not None:
            self.pseudo_counts += torch.bincount(ctx.pseudo_label.cpu(), minlength=len(self.pseudo_counts))
        step = trainer.state.step
        if step % trainer.cfg.probe.every and not trainer.finished:
            return
        trainer.sink.add("baseline", self.rows(trainer, step))
        self.pseudo_counts = torch.zeros_like(self.pseudo_counts)

    def rows(self, trainer, step: int) -> list[dict[str, Any]]:  # noqa: ANN001
        rows = []
        shape, dev = trainer.data.image_shape, trainer.device
        for k in trainer.cfg.probe.colors:
            image = baseline_image(k, shape, dev)
            for source, model, train in (
                ("student_train", trainer.model, True),
                ("student_eval", trainer.model, False),
                ("ema_eval", trainer.ema_model, False),
            ):
                logits = side_effect_free_logits(model, image, train).double().cpu()
                rows += _class_rows(step, source, k, torch.softmax(logits, -1), logits)
        priors = {
            "labeled_prior": class_prior(trainer.data.class_counts("labeled").cpu()),
            "unlabeled_prior": class_prior(trainer.data.class_counts("unlabeled").cpu()),
            "pseudo_labels": class_prior(self.pseudo_counts) if self.pseudo_counts.sum() else None,
        }
        for source, prior in priors.items():
            if prior is not None:
                rows += _class_rows(step, source, float("nan"), prior, None)
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"pseudo_counts": self.pseudo_counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pseudo_counts = state.get("pseudo_counts")


def _class_rows(
    step: int, source: str, color: float, prob: Tensor, logits: Tensor | None
) -> list[dict[str, Any]]:
    return [
        dict(
            step=step,
            source=source,
            color=float(color),
            cls=c,
            prob=float(p),
            logit=float(logits[c]) if logits is not None else float("nan"),
        )
        for c, p in enumerate(prob.tolist())
    ]
