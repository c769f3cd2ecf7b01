"""FreeMatch (self-adaptive thresholding) and its self-adaptive fairness term.

State, updated by an EMA with momentum m at every step *before* masking: the global threshold
tau_t (mean max-probability of the weak views, or its quantile), the class-probability estimate
p_tilde (mean weak-view probabilities) and the pseudo-label histogram h_tilde. The local threshold
of class c is tau_t * p_tilde_c / max p_tilde, and a sample is kept if its confidence passes the
threshold of its pseudo-label. The fairness term (``fair``) over the kept strong views is
L_f = sum_c a_c log(b_c + 1e-12) with a = SumNorm(p_tilde / h_tilde) and b = SumNorm(p_bar / h_bar)
(p_bar: mean strong-view probabilities with gradient; h_bar: their argmax histogram, a constant).
L_f is batch-coupled; it is written as per-sample pieces whose sum is L_f and whose gradient on
each kept sample is exactly its share, (lambda_f / |S|) J_softmax^T dL_f/dp_bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lddyn.config import MethodConfig, non_negative, unit_closed
from lddyn.losses import LossTerm
from lddyn.methods.base import Method, RunInfo, StepContext
from lddyn.methods.registry import METHODS


@dataclass(frozen=True)
class FreeMatchConfig(MethodConfig):
    momentum: float = unit_closed(0.999)  # EMA momentum m of the threshold state
    lambda_f: float = non_negative(0.001)  # weight of the fairness term
    quantile: float | None = None  # use this quantile of the max-probabilities instead of their mean
    clip: float | None = None  # upper bound on the global threshold (None = no clip)


def sum_norm(x: Tensor) -> Tensor:
    return x / x.sum()


def inverse_or_zero(x: Tensor) -> Tensor:
    return torch.nan_to_num(1.0 / x, nan=0.0, posinf=0.0, neginf=0.0)


def fairness(p_bar: Tensor, h_bar: Tensor, p_model: Tensor, h_model: Tensor) -> Tensor:
    """L_f = sum_c a_c log(b_c + 1e-12), a = SumNorm(p_model / h_model), b = SumNorm(p_bar / h_bar)."""
    a = sum_norm(p_model * inverse_or_zero(h_model))
    b = sum_norm(p_bar * inverse_or_zero(h_bar))
    return (a * torch.log(b + 1e-12)).sum()


@METHODS.register("freematch")
class FreeMatch(Method):
    name = "freematch"
    extra_terms = 1  # fair
    Config = FreeMatchConfig
    cfg: FreeMatchConfig

    def __init__(self, cfg: FreeMatchConfig, info: RunInfo) -> None:
        super().__init__(cfg, info)
        c = info.data.num_classes
        self.num_classes = c
        self.global_threshold = torch.tensor(1.0 / c, dtype=torch.double)
        self.p_model = torch.full((c,), 1.0 / c, dtype=torch.double)
        self.label_hist = torch.full((c,), 1.0 / c, dtype=torch.double)

    def local_thresholds(self) -> Tensor:
        """(C,) tau_t * p_tilde_c / max p_tilde."""
        return (self.global_threshold * self.p_model / self.p_model.max()).float()

    def update(self, probs: Tensor) -> None:
        """One EMA step of the threshold state from weak-view probabilities (U, C)."""
        m = self.cfg.momentum
        probs = probs.detach().double().cpu()
        conf, pseudo = probs.max(dim=-1)
        level = conf.quantile(self.cfg.quantile) if self.cfg.quantile is not None else conf.mean()
        self.global_threshold = m * self.global_threshold + (1 - m) * level
        if self.cfg.clip is not None:
            self.global_threshold = self.global_threshold.clamp(max=self.cfg.clip)
        self.p_model = m * self.p_model + (1 - m) * probs.mean(0)
        hist = torch.bincount(pseudo, minlength=self.num_classes).double() / len(pseudo)
        self.label_hist = m * self.label_hist + (1 - m) * hist

    def adjust_mask(self, ctx: StepContext, probs: Tensor, mask: Tensor) -> Tensor:
        self.update(probs)
        conf, pseudo = probs.max(dim=-1)
        return (conf >= self.local_thresholds().to(probs.device)[pseudo]).to(probs.dtype)

    def reshape_losses(self, ctx: StepContext, terms: list[LossTerm]) -> list[LossTerm]:
        unsup = next((t for t in terms if t.name == "unsup"), None)
        if unsup is None or ctx.mask is None:
            return terms
        views = len(unsup.logits) // len(ctx.mask)
        rows = torch.nonzero(ctx.mask.repeat(views) > 0).flatten()
        if len(rows) == 0:
            return terms
        return [*terms, self._fairness_term(unsup, rows.to(unsup.logits.device))]

    def _fairness_term(self, unsup: LossTerm, rows: Tensor) -> LossTerm:
        logits = unsup.logits[rows]
        probs = torch.softmax(logits.detach(), dim=-1)
        h_bar = torch.bincount(probs.argmax(-1), minlength=self.num_classes).to(probs.dtype) / len(rows)
        p_model, h_model = self.p_model.to(probs), self.label_hist.to(probs)
        p_bar = probs.mean(0).requires_grad_(True)
        with torch.enable_grad():
            value = fairness(p_bar, h_bar, p_model, h_model)
            (direction,) = torch.autograd.grad(value, p_bar)  # dL_f/dp_bar, a constant (C,)
        n = len(rows)

        def pieces(z: Tensor) -> Tensor:
            """Per sample: L_f (weight/n shares it out) plus a zero-valued piece with the gradient."""
            p = torch.softmax(z, dim=-1)
            return (p - p.detach()) @ direction + value.detach()

        return unsup.with_(
            name="fair",
            logits=logits,
            targets=torch.softmax(logits.detach(), dim=-1),
            weight=torch.full((n,), self.cfg.lambda_f, device=logits.device, dtype=logits.dtype),
            norm=float(n),
            index=unsup.index[rows.cpu()],
            source_class=unsup.source_class[rows],
            true_class=unsup.true_class[rows],
            status=unsup.status[rows.cpu()],
            logit_offset=None,
            inputs=None if unsup.inputs is None else unsup.inputs[rows],
            loss_fn=pieces,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_threshold": self.global_threshold,
            "p_model": self.p_model,
            "label_hist": self.label_hist,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_threshold = state["global_threshold"].clone()
        self.p_model, self.label_hist = state["p_model"].clone(), state["label_hist"].clone()
