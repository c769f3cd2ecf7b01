"""The realised update of a real optimiser step, split into parts and checked against a measurement.

Before ``optimizer.step()`` (the trainer's ``loss_terms`` event, graph alive) ``predict_update``
takes one gradient per group, splits the exact update the optimiser will make into parts
(``optim_split``: each group's preconditioned share, momentum carry-over, coupled and decoupled
weight decay), adds an optional post-step decay θ ← (1 − s) θ applied to every float state
entry (the reference recipe's s = wd·lr), and maps every part Δθ_p to the observations with J_o:
    Δ log π_p(x_o) = T(x_o) J_o Δθ_p      (O, C) per part, T = I − 1 πᵀ.
After the step (``step_end``) ``UpdatePrediction.measure`` forwards the observations again:
    measured = log π(θ1, b1) − log π(θ0, b0),   bn_drift = log π(θ1, b1) − log π(θ1, b0),
    residual = measured − Σ_p Δ log π_p − bn_drift = O(|Δθ|²).
b0 are the buffers when the prediction was made (after the training forward moved the running
statistics), b1 the buffers at measurement. Observation forwards use eval-mode normalisation.

Callback use::

    def on_loss_terms(self, trainer, ctx, terms):
        self.pending = predict_update(trainer.model, trainer.optimizer, terms, self.x_obs)
    def on_step_end(self, trainer, ctx, terms):
        sink.write(self.pending.measure(trainer.model).to_columns())
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lddyn.dynamics import tidy
from lddyn.dynamics.functional import (
    Params,
    clone_state,
    eval_logits,
    frozen_state,
    sensitivity,
    trainable_params,
)
from lddyn.dynamics.groups import (
    DECOUPLED,
    EXACT,
    GROUP_KEYS,
    GroupGradients,
    group_gradients,
    live_total,
    named_trainable,
)
from lddyn.dynamics.obs_jacobian import ObservationJacobian
from lddyn.dynamics.optim_split import split_update
from lddyn.losses import LossTerm

POST_DECAY = "post_decay"


@dataclass
class UpdatePrediction:
    """Parts of the coming update (parameter space and observation log-probs), plus snapshots."""

    step: int
    parts: list[str]  # P part names: "group:<k>", "carry", "weight_decay", "decoupled_wd", "post_decay"
    part_meta: list[dict]  # per part: {"part": ..., group keys for group parts}
    delta: dict[str, Params]  # part -> parameter name -> Δθ_part
    pred_logp: Tensor  # (P, O, C) T J_o Δθ_part
    x_obs: Tensor
    obs_ids: Tensor  # (O,)
    theta0: Params = field(repr=False)
    state0: Params = field(repr=False)  # buffers and frozen parameters at prediction time
    logp0: Tensor = field(repr=False)  # (O, C)
    mode: str = EXACT  # how the group gradients were taken; decoupled adds the ``bn_coupling`` group

    def predicted_delta(self) -> Params:
        """Σ_parts Δθ_part: the optimiser's update as predicted, per parameter."""
        return {n: sum(d[n] for d in self.delta.values() if n in d) for n in self.theta0}

    @torch.no_grad()
    def measure(self, model: nn.Module) -> RealisedStep:
        """Forward the observations after the step and split the measured Δ log π."""
        theta1, state1 = trainable_params(model), frozen_state(model)
        logp1 = F.log_softmax(eval_logits(model, self.x_obs, theta1, state1), -1)
        logp1_b0 = F.log_softmax(eval_logits(model, self.x_obs, theta1, self.state0), -1)
        measured, drift = logp1 - self.logp0, logp1 - logp1_b0
        delta = {n: theta1[n] - self.theta0[n] for n in self.theta0}
        return RealisedStep(self, delta, measured, drift, measured - self.pred_logp.sum(0) - drift)


@dataclass
class RealisedStep:
    """Measured change at the observations next to the predicted parts."""

    prediction: UpdatePrediction
    delta_theta: Params  # θ1 − θ0 per parameter
    measured: Tensor  # (O, C)
    bn_drift: Tensor  # (O, C)
    residual: Tensor  # (O, C) measured − Σ parts − bn_drift

    def param_error(self) -> float:
        """max |Σ parts − (θ1 − θ0)| over all parameters: ~rounding when the split is exact."""
        pred = self.prediction.predicted_delta()
        return max(float((pred[n] - d).abs().max()) for n, d in self.delta_theta.items())

    def to_columns(self) -> dict[str, np.ndarray]:
        """Tidy columns: "pred_logp" per part (``part`` column), then measured, bn_drift, residual."""
        p, s, ids = self.prediction, self.prediction.step, self.prediction.obs_ids
        extra = ("part",)
        blocks = [tidy.block(s, ids, p.pred_logp, p.part_meta, "pred_logp", extra)]
        for name in ("measured", "bn_drift", "residual"):
            blocks.append(tidy.block(s, ids, getattr(self, name)[None], [{}], name, extra))
        cols = tidy.concat(blocks)
        return tidy.constant(cols, "grad_mode", p.mode)

    def to_rows(self) -> list[dict]:
        return tidy.rows(self.to_columns())


def predict_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    terms: Sequence[LossTerm],
    x_obs: Tensor,
    *,
    by: Sequence[str] = GROUP_KEYS,
    post_decay: float = 0.0,
    step: int = 0,
    obs_ids: Tensor | None = None,
    grads: GroupGradients | None = None,
) -> UpdatePrediction:
    """Predict the parts of the update ``optimizer.step()`` is about to make; call before it.

    Reads the optimiser state, never writes it; the training graph is retained and ``.grad``
    untouched. ``post_decay`` = s multiplies every float state entry by (1 − s) after the step.
    """
    grads = group_gradients(model, terms, by, with_total=False) if grads is None else grads
    named = named_trainable(model)
    if grads.mode == DECOUPLED and grads.coupling is None:  # Adam's preconditioner needs the total
        grads.set_total(live_total(model, terms))
    meta, group_grads = grads.parts()
    delta = split_update(optimizer, {id(p): n for n, p in named.items()}, group_grads)
    theta0 = clone_state(trainable_params(model))
    if post_decay:
        opt = {n: sum(d[n] for d in delta.values() if n in d) for n in theta0}
        delta[POST_DECAY] = {n: -post_decay * (theta0[n] + opt[n]) for n in theta0}
    parts = list(delta)
    jacobian = ObservationJacobian(model, x_obs, theta0)  # J_o once, every part by one product
    logits0, dz = jacobian.logits, jacobian.apply([delta[p] for p in parts])
    return UpdatePrediction(
        step=step,
        parts=parts,
        part_meta=_part_meta(parts, meta),
        delta=delta,
        pred_logp=sensitivity(dz, F.softmax(logits0, -1)),
        x_obs=x_obs,
        obs_ids=torch.arange(len(x_obs)) if obs_ids is None else obs_ids,
        theta0=theta0,
        state0=clone_state(frozen_state(model)),
        logp0=F.log_softmax(logits0, -1),
        mode=grads.mode,
    )


def _part_meta(parts: list[str], group_meta: list[dict]) -> list[dict]:
    out = []
    for name in parts:
        if name.startswith("group:"):
            out.append({"part": "group", **group_meta[int(name.split(":")[1])]})
        else:
            out.append({"part": name})
    return out


class _Pending:
    """What ``realised_step`` yields: the prediction now, the measurement after the block."""

    def __init__(self, prediction: UpdatePrediction) -> None:
        self.prediction = prediction
        self.result: RealisedStep | None = None


@contextmanager
def realised_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    terms: Sequence[LossTerm],
    x_obs: Tensor,
    **kwargs: object,
) -> Iterator[_Pending]:
    """Wrap ``backward(); optimizer.step()`` (and any post-step decay): measured on exit.

    ``with realised_step(model, opt, terms, x) as r: loss.backward(); opt.step()`` then
    ``r.result`` is the ``RealisedStep``. Keyword arguments go to ``predict_update``.
    """
    pending = _Pending(predict_update(model, optimizer, terms, x_obs, **kwargs))  # type: ignore[arg-type]
    yield pending
    pending.result = pending.prediction.measure(model)
