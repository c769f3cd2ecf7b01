"""DyTrim: dynamic pruning of the labeled and unlabeled sets, re-drawn at the end of every pass.

Labeled (class-aware hard pruning): class c keeps its int((1 - r_c) * n_c) highest-loss samples,
where r_c is the labeled class frequency until ``prior_start_step`` and the baseline prior
softmax(z(I)) afterwards. Unlabeled (soft pruning): samples whose score is below the mean are
well learned; a random fraction ``keep_rate`` of them stays, with loss weight 1/keep_rate, the rest
sit out the pass. Past ``delta`` of the schedule every sample is used with weight 1.
Scores are the unweighted per-sample losses of each sample's latest visit (initially 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lddyn.config import MethodConfig, non_negative, unit_open_closed
from lddyn.data.samplers import IndexStream, RandomPasses
from lddyn.data.sets import class_prior
from lddyn.losses import LossTerm
from lddyn.methods.base import Method, RunInfo, StepContext
from lddyn.methods.registry import METHODS


@dataclass(frozen=True)
class DyTrimConfig(MethodConfig):
    keep_rate: float = unit_open_closed(0.3)  # r: share of well-learned unlabeled samples kept
    delta: float = unit_open_closed(0.875)  # annealing: full data past delta * steps
    prior_start_step: int = non_negative(300)  # labeled bias: frequencies before, baseline prior after
    prune_labeled: bool = True
    prune_unlabeled: bool = True
    rescale: bool = True  # weight 1/r on kept well-learned unlabeled samples
    save_compute: bool = False  # a pass over the kept set stands for a full pass (shorter schedule)


@METHODS.register("dytrim")
class DyTrim(Method):
    name = "dytrim"
    uses_baseline = True
    Config = DyTrimConfig
    cfg: DyTrimConfig

    def __init__(self, cfg: DyTrimConfig, info: RunInfo) -> None:
        super().__init__(cfg, info)
        data = info.data
        self.scores_lb = torch.ones(len(data.y_lb))
        self.scores_ulb = torch.ones(len(data.y_ulb))
        self.prior = class_prior(info.lb_counts).float()  # r_c used by labeled pruning
        self.progress = 0.0
        self.streams: dict[str, RandomPasses] = {}

    def stream(self, which: str) -> IndexStream | None:
        refresh = self._refresh_labeled if which == "labeled" else self._refresh_unlabeled
        size = len(self.scores_lb if which == "labeled" else self.scores_ulb)
        self.streams[which] = RandomPasses(size, refresh)
        return self.streams[which]

    @property
    def annealed(self) -> bool:
        return self.progress > self.cfg.delta * self.info.total_steps

    def _refresh_labeled(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        n = len(self.scores_lb)
        if self.annealed or not self.cfg.prune_labeled:
            return torch.arange(n), torch.ones(n)
        y = self.info.data.y_lb.cpu()
        kept = []
        for c in range(self.info.data.num_classes):
            idx = torch.nonzero(y == c).flatten()
            keep = int((1 - float(self.prior[c])) * len(idx))
            order = torch.argsort(self.scores_lb[idx], descending=True, stable=True)
            kept.append(idx[order[:keep]])
        return torch.cat(kept), torch.ones(n)

    def _refresh_unlabeled(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        n = len(self.scores_ulb)
        weight = torch.ones(n)
        if self.annealed or not self.cfg.prune_unlabeled:
            return torch.arange(n), weight
        learned = self.scores_ulb < self.scores_ulb.mean()
        candidates = torch.nonzero(learned).flatten()
        chosen = candidates[torch.randperm(len(candidates), generator=generator)]
        chosen = chosen[: int(self.cfg.keep_rate * len(candidates))]
        if self.cfg.rescale:
            weight[chosen] = 1.0 / self.cfg.keep_rate
        pool = torch.cat([torch.nonzero(~learned).flatten(), chosen]).sort().values
        return pool, weight

    def after_step(self, ctx: StepContext, terms: list[LossTerm]) -> None:
        self.progress = ctx.progress
        if ctx.step > self.cfg.prior_start_step:
            self.prior = torch.softmax(ctx.baseline_logits().float().cpu(), dim=-1)
        for term in terms:
            ce = term.unweighted().detach().cpu()
            if term.name == "sup":
                self.scores_lb[term.index.cpu()] = ce
            elif term.name == "unsup" and ctx.mask is not None:
                views = ce.view(-1, len(ctx.mask)) * ctx.mask.cpu()  # (num_strong, muB)
                self.scores_ulb[term.index.cpu()[: len(ctx.mask)]] = views.sum(0)

    def schedule_increment(self) -> float:
        stream = self.streams.get("unlabeled")
        if not self.cfg.save_compute or stream is None or stream.pool_size == 0:
            return 1.0
        return len(self.scores_ulb) / stream.pool_size

    def state_dict(self) -> dict[str, Any]:
        return {
            "scores_lb": self.scores_lb,
            "scores_ulb": self.scores_ulb,
            "prior": self.prior,
            "progress": self.progress,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores_lb, self.scores_ulb = state["scores_lb"], state["scores_ulb"]
        self.prior, self.progress = state["prior"], state["progress"]
