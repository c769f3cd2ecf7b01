"""BMB (balanced memory bank): an auxiliary head trained rebalanced, and fed from a class-balanced bank.

The model gets a second linear head h_a on the shared features; it makes the predictions (and is
what evaluation and the dynamics observations see). Next to FixMatch's terms on the base head
(``sup``, ``unsup``) the step gains three terms on h_a:

* ``sup_aux``: labeled CE with class weight w_i = (N_min / N_{y_i})^alpha over the labeled counts;
* ``unsup_aux``: strong views towards the soft weak-view prediction q^a of h_a, masked by
  max q^a >= tau, weighted v_j = (N_hat_min / N_hat_{y^a_j})^alpha over the running estimate N_hat
  of the unlabeled class counts (mean per step of confident weak-view aux pseudo-labels);
* ``mem``: CE of h_a on features drawn from the bank by reversed sampling, weight lambda_m; the
  features are constants, so this term reaches h_a only.

During the warm-up (the first ``warmup`` share of the steps, phase ``warmup``) only ``sup`` and
``sup_aux`` are trained; the bank fills all along. N_hat restarts when the warm-up ends. After every
step the confident strong-view features (label from h_a on the same view) are offered to the bank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lddyn.config import MethodConfig, at_least, non_negative, unit_closed, unit_open_closed
from lddyn.losses import KEPT, LossTerm
from lddyn.methods.bank import BalancedBank, CountEstimate, Drawn, class_scores, relative_weights
from lddyn.methods.base import DEFAULT_PHASE, Method, RunInfo, StepContext
from lddyn.methods.heads import add_head
from lddyn.methods.registry import METHODS

HEAD = "aux"
WARMUP = "warmup"


@dataclass(frozen=True)
class BMBConfig(MethodConfig):
    tau: float = unit_closed(0.95)  # confidence threshold of the aux pseudo-labels and bank candidates
    alpha: float = non_negative(1.5)  # adaptive class-weight exponent
    beta: float = non_negative(3.0)  # enqueue balance exponent
    gamma_r: float = non_negative(0.75)  # reversed-sampling exponent
    lambda_m: float = non_negative(0.25)  # weight of the memory-bank loss
    lambda_u: float = non_negative(1.0)  # weight of the aux consistency term
    bank_size: int = at_least(64, 1)  # S
    draw_share: float = unit_open_closed(0.5)  # rho: features drawn per step = rho * S
    warmup: float = unit_closed(0.04)  # share of the steps trained on the supervised terms only


@METHODS.register("bmb")
class BMB(Method):
    name = "bmb"
    extra_terms = 3  # sup_aux, unsup_aux, mem
    Config = BMBConfig
    cfg: BMBConfig

    def __init__(self, cfg: BMBConfig, info: RunInfo) -> None:
        super().__init__(cfg, info)
        self.num_classes = info.data.num_classes
        self.warmup_steps = int(round(cfg.warmup * info.total_steps))
        self.estimate = CountEstimate(self.num_classes)
        self.generator = torch.Generator().manual_seed(info.seed + 7919)
        self.bank: BalancedBank | None = None  # built with the head, once the feature size is known
        self.head: nn.Linear | None = None

    # --- model ---------------------------------------------------------------------------------------

    def extend_model(self, model: nn.Module) -> nn.Module:
        dim = getattr(model, "feat_dim", None)
        if dim is None:
            raise ValueError(f"bmb needs a model with a feat_dim; {type(model).__name__} has none")
        self.head = nn.Linear(dim, self.num_classes)
        self.bank = BalancedBank(self.cfg.bank_size, dim, self.num_classes, self.cfg.beta)
        return add_head(model, HEAD, self.head, predict=True)

    def phase(self, step: int) -> str | None:
        return WARMUP if step <= self.warmup_steps else DEFAULT_PHASE

    # --- weights -------------------------------------------------------------------------------------

    def labeled_weights(self) -> Tensor:
        """(C,) w_c = (N^l_min / N^l_c)^alpha."""
        return relative_weights(self.info.lb_counts, self.cfg.alpha)

    def unlabeled_weights(self) -> Tensor:
        """(C,) v_c = (N_hat_min / N_hat_c)^alpha; all 1 before the estimate has data."""
        return relative_weights(self.estimate.value(), self.cfg.alpha)

    def draw_weights(self) -> Tensor:
        """(C,) reversed-sampling class score pi_c ∝ N_hat_c^(-gamma_r)."""
        scores = class_scores(self.estimate.value(), self.cfg.gamma_r)
        return (scores / scores.sum()).float()

    # --- the step ------------------------------------------------------------------------------------

    def reshape_losses(self, ctx: StepContext, terms: list[LossTerm]) -> list[LossTerm]:
        sup, unsup = (_term(terms, name) for name in ("sup", "unsup"))
        out_lb, out_s, out_w = ctx.outputs["labeled"], ctx.outputs["strong"], ctx.outputs["weak"]
        dev = sup.logits.device
        w = self.labeled_weights().to(dev)[sup.source_class]
        sup_aux = sup.with_(name="sup_aux", logits=out_lb[f"{HEAD}_logits"], weight=sup.weight * w)
        # the model's "logits" are h_a's, so an eNTK over the base-head terms' inputs would be h_a's:
        # those terms drop their inputs (the recorder then keeps only exact per-sample values)
        terms = [t.with_(inputs=None) if t.name in ("sup", "unsup") else t for t in terms]
        if ctx.phase == WARMUP:
            return [t for t in terms if t.name != "unsup"] + [sup_aux]
        q = torch.softmax(out_w[f"{HEAD}_logits"].detach(), dim=-1)  # (U, C) soft aux target
        conf, pseudo = q.max(dim=-1)
        mask = (conf >= self.cfg.tau).to(q.dtype)
        v = self.unlabeled_weights().to(dev)[pseudo]
        views = len(unsup.logits) // len(q)
        assert ctx.ulb is not None
        unsup_aux = unsup.with_(
            name="unsup_aux",
            logits=out_s[f"{HEAD}_logits"],
            targets=q.repeat(views, 1),
            weight=(self.cfg.lambda_u * mask * v * ctx.ulb.weight.to(q)).repeat(views),
            source_class=pseudo.repeat(views),
            logit_offset=None,
        )
        return [*terms, sup_aux, unsup_aux, *self._memory_term(unsup)]

    def _memory_term(self, unsup: LossTerm) -> list[LossTerm]:
        assert self.bank is not None and self.head is not None
        n_get = max(1, int(self.cfg.draw_share * self.cfg.bank_size))
        drawn = self.bank.draw(n_get, self.draw_weights(), self.generator)
        if len(drawn.label) == 0:
            return []
        dev = unsup.logits.device
        logits = self.head(drawn.feat.to(dev))  # the features are constants: the gradient stops at h_a
        n = len(drawn.label)
        return [
            LossTerm(
                name="mem",
                logits=logits,
                targets=F.one_hot(drawn.label.to(dev), self.num_classes).to(logits.dtype),
                weight=torch.full((n,), self.cfg.lambda_m, device=dev),
                norm=float(n),
                index=drawn.origin,
                source_class=drawn.label.to(dev),
                true_class=drawn.true.to(dev),
                status=torch.full((n,), KEPT),
                labeled=False,
            )
        ]

    def after_step(self, ctx: StepContext, terms: list[LossTerm]) -> None:
        """Update N_hat from the weak view, then offer the confident strong-view features to the bank."""
        assert self.bank is not None and ctx.ulb is not None
        q = torch.softmax(ctx.outputs["weak"][f"{HEAD}_logits"].detach().float(), dim=-1)
        conf, pseudo = q.max(dim=-1)
        confident = pseudo[conf >= self.cfg.tau].cpu()
        if ctx.step == self.warmup_steps + 1:
            self.estimate.reset()  # the estimate restarts when the warm-up ends
        self.estimate.update(torch.bincount(confident, minlength=self.num_classes))
        strong = ctx.outputs["strong"]
        p_s = torch.softmax(strong[f"{HEAD}_logits"].detach().float(), dim=-1)
        conf_s, label_s = p_s.max(dim=-1)
        keep = (conf_s >= self.cfg.tau).cpu()
        views = len(p_s) // len(q)
        origin = ctx.ulb.index.cpu().repeat(views)
        true = self.info.data.y_ulb[origin.to(self.info.data.y_ulb.device)].cpu()
        feat = strong["feat"].detach().float().cpu()
        cand = Drawn(feat[keep], label_s.cpu()[keep], origin[keep], true[keep])
        self.bank.enqueue(cand, self.generator)

    # --- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        assert self.bank is not None
        return {
            "bank": self.bank.state_dict(),
            "estimate": self.estimate.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.bank is not None
        self.bank.load_state_dict(state["bank"])
        self.estimate.load_state_dict(state["estimate"])
        self.generator.set_state(state["generator"])


def _term(terms: list[LossTerm], name: str) -> LossTerm:
    found = next((t for t in terms if t.name == name), None)
    if found is None:
        names = [t.name for t in terms]
        raise ValueError(f"bmb reshapes FixMatch's {name!r} term, but the step's terms are {names}")
    return found
