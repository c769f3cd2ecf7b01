"""DyTrim: dynamic pruning of the labeled and unlabeled sets, re-drawn at the start of every pass.

Labeled (class-aware hard pruning): class c keeps its int((1 - r_c) * n_c) highest-loss samples,
where r_c is the labeled class frequency until ``prior_start_step`` and the baseline prior
softmax(z(I)) afterwards. Unlabeled (soft pruning): samples whose score is below the mean are
well learned; a random fraction ``keep_rate`` of them stays, with loss weight 1/keep_rate, the rest
sit out the pass. Past ``delta`` of the schedule every sample is used with weight 1.
Scores are the unweighted per-sample losses of each sample's latest visit (initially 1).

Three switches reproduce the released code where it differs (docs/recipe.md): its first labeled
pass keeps everything (``prune_first_pass``), its frequencies are counted over one drop_last pass
of the labeled loader (``labeled_prior``), and it anneals by epoch index (``epoch_steps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lddyn.config import MethodConfig, non_negative, one_of, unit_open_closed
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
    # false: the first labeled pass keeps every sample (the released bias vector is still zero then)
    prune_first_pass: bool = True
    # labeled frequencies before prior_start_step: exact, or counted over one drop_last pass (released)
    labeled_prior: str = one_of("exact", "exact", "pass")
    # > 0: anneal at a refresh in epoch index > delta * steps / epoch_steps, weights reset only up to
    # one epoch later (released, 500); 0: anneal once progress > delta * steps
    epoch_steps: int = non_negative(0)


@METHODS.register("dytrim")
class DyTrim(Method):
    name = "dytrim"
    uses_baseline = True
    Config = DyTrimConfig
    cfg: DyTrimConfig

    def __init__(self, cfg: DyTrimConfig, info: RunInfo) -> None:
        super().__init__(cfg, info)
        data = info.data
        self.scores_lb = torch.ones(len(data.y_lb), dtype=torch.float64)
        self.scores_ulb = torch.ones(len(data.y_ulb), dtype=torch.float64)
        self.weight_ulb = torch.ones(len(data.y_ulb), dtype=torch.float64)  # kept across annealed refreshes
        self.prior_sample = self._prior_sample()  # the labeled samples the frequencies are counted over
        self.frequencies = class_prior(
            torch.bincount(data.y_lb.cpu()[self.prior_sample], minlength=len(info.lb_counts))
        )
        # r_c used by labeled pruning (float64 frequencies, then pi(I) in the model's dtype)
        self.prior = self.frequencies if cfg.prune_first_pass else torch.zeros_like(self.frequencies)
        self.progress = 0.0
        self.streams: dict[str, RandomPasses] = {}

    def _prior_sample(self) -> Tensor:
        """All labeled samples, or the ones one drop_last pass of a shuffled labeled loader visits."""
        n = len(self.info.data.y_lb)
        if self.cfg.labeled_prior == "exact":
            return torch.arange(n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.info.seed))
        return order[: n - n % max(self.info.labeled_batch, 1)]

    def stream(self, which: str) -> IndexStream | None:
        refresh = self._refresh_labeled if which == "labeled" else self._refresh_unlabeled
        size = len(self.scores_lb if which == "labeled" else self.scores_ulb)
        self.streams[which] = RandomPasses(size, refresh, self.info.passes)
        return self.streams[which]

    def _annealing(self) -> tuple[bool, bool]:
        """(use the full set, reset its weights to 1) for a refresh now."""
        total, delta = self.info.total_steps, self.cfg.delta
        if not self.cfg.epoch_steps:
            annealed = self.progress > delta * total
            return annealed, annealed
        epoch, stop = int(self.progress) // self.cfg.epoch_steps, delta * total / self.cfg.epoch_steps
        return epoch > stop, epoch <= stop + 1

    @property
    def annealed(self) -> bool:
        return self._annealing()[0]

    def _refresh_labeled(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        n = len(self.scores_lb)
        if self.annealed or not self.cfg.prune_labeled:
            return torch.arange(n), torch.ones(n, dtype=torch.float64)
        y = self.info.data.y_lb.cpu()
        kept = []
        for c in range(self.info.data.num_classes):
            idx = torch.nonzero(y == c).flatten()
            keep = int((1 - float(self.prior[c])) * len(idx))  # float64 arithmetic, as numpy 1.x does
            order = torch.argsort(self.scores_lb[idx], descending=True, stable=True)
            kept.append(idx[order[:keep]])
        return torch.cat(kept), torch.ones(n, dtype=torch.float64)

    def _refresh_unlabeled(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        n = len(self.scores_ulb)
        annealed, reset = self._annealing()
        if annealed or not self.cfg.prune_unlabeled:
            if reset or not self.cfg.prune_unlabeled:
                self.weight_ulb = torch.ones(n, dtype=torch.float64)
            return torch.arange(n), self.weight_ulb
        weight = torch.ones(n, dtype=torch.float64)
        learned = self.scores_ulb < self.scores_ulb.mean()
        candidates = torch.nonzero(learned).flatten()
        chosen = candidates[torch.randperm(len(candidates), generator=generator)]
        chosen = chosen[: int(self.cfg.keep_rate * len(candidates))]
        if self.cfg.rescale:
            weight[chosen] = 1.0 / self.cfg.keep_rate
        self.weight_ulb = weight
        pool = torch.cat([torch.nonzero(~learned).flatten(), chosen]).sort().values
        return pool, weight

    def after_step(self, ctx: StepContext, terms: list[LossTerm]) -> None:
        self.progress = ctx.progress
        if ctx.step > self.cfg.prior_start_step:
            self.prior = torch.softmax(ctx.baseline_logits().detach().cpu(), dim=-1)
        else:
            self.prior = self.frequencies
        for term in terms:
            ce = term.unweighted().detach().cpu()
            if term.name == "sup":
                self.scores_lb[term.index.cpu()] = ce.to(self.scores_lb.dtype)
            elif term.name == "unsup" and ctx.mask is not None:
                views = ce.view(-1, len(ctx.mask)) * ctx.mask.cpu()  # (num_strong, muB)
                self.scores_ulb[term.index.cpu()[: len(ctx.mask)]] = views.sum(0).to(self.scores_ulb.dtype)

    def schedule_increment(self) -> float:
        stream = self.streams.get("unlabeled")
        if not self.cfg.save_compute or stream is None or stream.pool_size == 0:
            return 1.0
        return len(self.scores_ulb) / stream.pool_size

    def state_dict(self) -> dict[str, Any]:
        return {
            "scores_lb": self.scores_lb,
            "scores_ulb": self.scores_ulb,
            "weight_ulb": self.weight_ulb,
            "prior": self.prior,
            "frequencies": self.frequencies,
            "prior_sample": self.prior_sample,
            "progress": self.progress,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores_lb, self.scores_ulb = state["scores_lb"].double(), state["scores_ulb"].double()
        self.prior, self.progress = state["prior"], state["progress"]
        self.weight_ulb = state.get("weight_ulb", self.weight_ulb)
        self.frequencies = state.get("frequencies", self.frequencies)
        self.prior_sample = state.get("prior_sample", self.prior_sample)
