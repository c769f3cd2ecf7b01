"""FlexMatch (curriculum pseudo-labelling): per-class thresholds that follow each class's learning status.

The learning status of class c is sigma_c, the number of unlabeled samples whose latest confident
(max prob >= tau) prediction is c. Normalised, beta_c = sigma_c / max(max_c' sigma_c', N_unused)
with the warm-up (N_unused: samples never confident yet), or sigma_c / max_c' sigma_c' without.
The threshold of class c is T_c = tau * M(beta_c) with the convex mapping M(x) = x / (2 - x), so
at the start every sample passes (T = 0) and a class's bar rises as it is learned. The mask uses
the statuses from before the step; the step's confident predictions update them afterwards. It
replaces only the pseudo-label mask, so CDMAD (adjusted logits) and DyTrim (sampling, weights)
compose with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lddyn.config import MethodConfig, one_of, unit_closed
from lddyn.losses import LossTerm
from lddyn.methods.base import Method, RunInfo, StepContext
from lddyn.methods.registry import METHODS

UNUSED = -1


def convex(x: Tensor) -> Tensor:
    return x / (2.0 - x)


MAPPINGS = {"convex": convex, "linear": lambda x: x}


@dataclass(frozen=True)
class FlexMatchConfig(MethodConfig):
    tau: float = unit_closed(0.95)  # the fixed threshold: the top of the flexible ones, and "confident"
    warmup: bool = True  # count never-confident samples in the normaliser
    # learning status -> threshold scale: convex x / (2 - x), or linear
    mapping: str = one_of("convex", *MAPPINGS)


def learning_status(selected: Tensor, num_classes: int, warmup: bool) -> Tensor:
    """(C,) beta from the latest confident label of every unlabeled sample (UNUSED = never)."""
    used = selected[selected != UNUSED]
    sigma = torch.bincount(used, minlength=num_classes).double()
    if len(used) == 0:
        return torch.zeros(num_classes)
    unused = float((selected == UNUSED).sum())
    top = max(float(sigma.max()), unused) if warmup else float(sigma.max())
    return (sigma / top).float()


@METHODS.register("flexmatch")
class FlexMatch(Method):
    name = "flexmatch"
    Config = FlexMatchConfig
    cfg: FlexMatchConfig

    def __init__(self, cfg: FlexMatchConfig, info: RunInfo) -> None:
        super().__init__(cfg, info)
        self.num_classes = info.data.num_classes
        self.selected = torch.full((len(info.data.y_ulb),), UNUSED, dtype=torch.long)
        self.status = torch.zeros(self.num_classes)  # beta_c

    def thresholds(self) -> Tensor:
        """(C,) T_c = tau * M(beta_c)."""
        return self.cfg.tau * MAPPINGS[self.cfg.mapping](self.status)

    def adjust_mask(self, ctx: StepContext, probs: Tensor, mask: Tensor) -> Tensor:
        conf, pseudo = probs.max(dim=-1)
        return (conf >= self.thresholds().to(probs.device)[pseudo]).to(probs.dtype)

    def after_step(self, ctx: StepContext, terms: list[LossTerm]) -> None:
        if ctx.probs is None or ctx.ulb is None:
            return
        conf, pseudo = ctx.probs.detach().max(dim=-1)
        confident = (conf >= self.cfg.tau).cpu()
        self.selected[ctx.ulb.index.cpu()[confident]] = pseudo.cpu()[confident]
        self.status = learning_status(self.selected, self.num_classes, self.cfg.warmup)

    def state_dict(self) -> dict[str, Any]:
        return {"selected": self.selected, "status": self.status}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selected, self.status = state["selected"].clone(), state["status"].clone()
