"""Logit adjustment: add tau * log(prior) to the logits inside the loss (or subtract it at test time).

Adding the log-prior inside the loss changes the direction of G for every sample; the post-hoc
form leaves training alone and only shifts the test logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lddyn.config import MethodConfig, non_negative
from lddyn.data.sets import class_prior
from lddyn.losses import LossTerm
from lddyn.methods.base import EvalContext, Method, RunInfo, StepContext
from lddyn.methods.registry import METHODS


@dataclass(frozen=True)
class LogitAdjustConfig(MethodConfig):
    tau: float = non_negative(1.0)  # scale of the offset tau * log(labeled prior)
    terms: tuple[str, ...] = ("sup",)  # loss terms whose logits get the offset
    posthoc: bool = False  # if true: no loss change, subtract tau*log prior from test logits


@METHODS.register("logit_adjust")
class LogitAdjust(Method):
    name = "logit_adjust"
    Config = LogitAdjustConfig
    cfg: LogitAdjustConfig

    def __init__(self, cfg: LogitAdjustConfig, info: RunInfo) -> None:
        super().__init__(cfg, info)
        prior = class_prior(info.lb_counts).clamp_min(1e-12)
        self.offset = (cfg.tau * torch.log(prior)).float()  # (C,)

    def reshape_losses(self, ctx: StepContext, terms: list[LossTerm]) -> list[LossTerm]:
        if self.cfg.posthoc:
            return terms
        return [self._adjust(t) if t.name in self.cfg.terms else t for t in terms]

    def _adjust(self, term: LossTerm) -> LossTerm:
        offset = self.offset.to(term.logits.device)
        total = offset if term.logit_offset is None else term.logit_offset + offset
        return term.with_(logit_offset=total)

    def test_logits(self, ctx: EvalContext, logits: Tensor) -> Tensor:
        return logits - self.offset.to(logits.device) if self.cfg.posthoc else logits
