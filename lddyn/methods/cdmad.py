"""CDMAD: refine pseudo-targets and test predictions by subtracting the baseline image's logits.

Pseudo-targets come from softmax(z(u_w) - z(I)) once ``start_step`` has passed; at test time the
debiased prediction is argmax(z(x) - z_EMA(I)). The baseline logits z(I) measure the class prior
the classifier has absorbed, so subtracting them removes it from both.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lddyn.config import MethodConfig, non_negative
from lddyn.methods.base import EvalContext, Method, StepContext
from lddyn.methods.registry import METHODS


@dataclass(frozen=True)
class CDMADConfig(MethodConfig):
    start_step: int = non_negative(300)  # pseudo-label refinement active for steps > start_step
    debias_test: bool = True  # subtract the baseline image's logits at test time (debiased metrics)


@METHODS.register("cdmad")
class CDMAD(Method):
    name = "cdmad"
    uses_baseline = True
    Config = CDMADConfig
    cfg: CDMADConfig

    def adjust_pseudo_logits(self, ctx: StepContext, logits_w: Tensor) -> Tensor:
        if ctx.step <= self.cfg.start_step:
            return logits_w
        return logits_w - ctx.baseline_logits()

    def test_logits(self, ctx: EvalContext, logits: Tensor) -> Tensor:
        return logits - ctx.baseline_logits() if self.cfg.debias_test else logits
