"""Class reweighting: scale each sample's loss by a weight of its (pseudo-)class.

w_c is proportional to n_c^(-power) over the labeled counts, normalised so the labeled set's mean
weight is 1; in the dynamics this scales G group by group.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lddyn.config import MethodConfig, non_negative
from lddyn.losses import LossTerm
from lddyn.methods.base import Method, RunInfo, StepContext
from lddyn.methods.registry import METHODS


@dataclass(frozen=True)
class ReweightConfig(MethodConfig):
    power: float = non_negative(1.0)  # class weight proportional to n_c^(-power) over the labeled counts
    terms: tuple[str, ...] = ("sup",)  # unlabeled terms are weighted by their pseudo-label's class


def class_weights(counts: Tensor, power: float) -> Tensor:
    counts = counts.double().clamp_min(1)
    w = counts.pow(-power)
    return (w * counts.sum() / (w * counts).sum()).float()


@METHODS.register("reweight")
class Reweight(Method):
    name = "reweight"
    Config = ReweightConfig
    cfg: ReweightConfig

    def __init__(self, cfg: ReweightConfig, info: RunInfo) -> None:
        super().__init__(cfg, info)
        self.weights = class_weights(info.lb_counts, cfg.power)  # (C,)

    def reshape_losses(self, ctx: StepContext, terms: list[LossTerm]) -> list[LossTerm]:
        return [self._scale(t) if t.name in self.cfg.terms else t for t in terms]

    def _scale(self, term: LossTerm) -> LossTerm:
        w = self.weights.to(term.weight.device)[term.source_class]
        return term.with_(weight=term.weight * w)
