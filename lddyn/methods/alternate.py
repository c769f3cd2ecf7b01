"""Alternate sampling: decoupled initialisation, then loops alternating the features and two classifiers.

The model gets a second linear head g (``balanced``), which makes the predictions; the model's own
head g' is trained with random sampling. The run is a sequence of phases (the ``phase`` column):

* ``init``: f and g' on the labeled set, random sampling, CE (term ``sup``);
* ``init_classifier``: g alone on frozen features (eval mode, no gradient to f), class-balanced
  labeled sampling, CE (term ``sup_balanced``);
* per loop k = 1..loops, ``loop<k>_semi``: at its first step every unlabeled sample gets the hard
  label argmax g(f(x)) (stage 1) and the temporal targets are set to one no-grad pass of g'; then f
  and g' train with random sampling on labeled (``sup``, true labels) and unlabeled data
  (``pseudo``, the stage-1 labels), plus the temporal-consistency terms ``temporal_lb`` /
  ``temporal_ulb`` (soft CE towards each sample's prediction at its previous visit, i.e. the KL up
  to the target's constant entropy); every term is normalised by the whole batch B + muB;
* ``loop<k>_classifier``: as ``init_classifier`` (g fine-tuned, not re-initialised).

Phase lengths keep the paper's ratios: each phase's share of ``train.steps`` is proportional to
its epochs times the steps of one epoch over the set it walks (labeled with B per step, or
labeled plus unlabeled with B + muB per step); a run of the natural length has the epochs as set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lddyn.config import MethodConfig, at_least, non_negative, positive
from lddyn.data.samplers import Batch, ClassBalanced, IndexStream, RandomPasses
from lddyn.data.sets import unit_images
from lddyn.losses import LossTerm
from lddyn.methods.base import Method, RunInfo, StepContext
from lddyn.methods.heads import add_head, head_logits
from lddyn.methods.registry import METHODS
from lddyn.train.device import batch_images
from lddyn.train.forward import model_mode

if TYPE_CHECKING:
    from lddyn.train.trainer import Trainer

HEAD = "balanced"
INIT, CLASSIFIER, SEMI = "init", "classifier", "semi"  # what a phase trains


@dataclass(frozen=True)
class AlternateConfig(MethodConfig):
    init_epochs: float = positive(40.0)  # f + g' on labeled data, random sampling
    classifier_init_epochs: float = positive(5.0)  # g on frozen features, class-balanced
    semi_epochs: float = positive(8.0)  # stage 2 of each loop, over labeled + pseudo-labeled data
    classifier_epochs: float = positive(5.0)  # stage 3 of each loop
    loops: int = at_least(5, 1)  # loops of stages 2 and 3 after the initialisation
    lambda_t: float = non_negative(1.0)  # weight of the temporal-consistency terms


@dataclass(frozen=True)
class Phase:
    name: str
    kind: str  # INIT | CLASSIFIER | SEMI
    end: int  # last step of the phase (1-based, inclusive)


def phase_plan(
    cfg: AlternateConfig, steps: int, n_lb: int, n_ulb: int, lb_batch: int = 1, ulb_batch: int = 1
) -> list[Phase]:
    """Phases whose step budgets keep the ratios of their epochs, each at least one step.

    A labeled-only epoch takes n_lb / lb_batch steps, a semi-supervised one (n_lb + n_ulb) /
    (lb_batch + ulb_batch); the natural plan is scaled to ``steps``.
    """
    lb_epoch, semi_epoch = n_lb / lb_batch, (n_lb + n_ulb) / (lb_batch + ulb_batch)
    parts = [
        ("init", INIT, cfg.init_epochs * lb_epoch),
        ("init_classifier", CLASSIFIER, cfg.classifier_init_epochs * lb_epoch),
    ]
    for k in range(1, cfg.loops + 1):
        parts.append((f"loop{k}_semi", SEMI, cfg.semi_epochs * semi_epoch))
        parts.append((f"loop{k}_classifier", CLASSIFIER, cfg.classifier_epochs * lb_epoch))
    if steps < len(parts):
        raise ValueError(f"train.steps={steps} is fewer than the {len(parts)} phases of alternate sampling")
    total, cum, ends = sum(w for *_, w in parts), 0.0, []
    for i, (*_, w) in enumerate(parts):
        cum += w
        end = round(steps * cum / total)
        lo = (ends[-1] if ends else 0) + 1
        hi = steps - (len(parts) - 1 - i)  # leave one step for every later phase
        ends.append(min(max(end, lo), hi))
    return [Phase(name, kind, end) for (name, kind, _), end in zip(parts, ends, strict=True)]


class SwitchedStream:
    """The labeled stream: random passes, or class-balanced draws while ``balanced`` is set."""

    def __init__(self, labels: Tensor, num_classes: int) -> None:
        self.random = RandomPasses(len(labels))
        self.class_balanced = ClassBalanced(labels.cpu(), num_classes)
        self.balanced = False
        self.size = len(labels)

    def next_batch(self, n: int, generator: torch.Generator) -> Batch:
        return (self.class_balanced if self.balanced else self.random).next_batch(n, generator)

    @property
    def pool_size(self) -> int:
        return self.random.pool_size

    @property
    def passes(self) -> int:
        return self.random.passes

    @property
    def order(self) -> Tensor:
        return self.random.order

    @property
    def weight(self) -> Tensor:
        return self.random.weight

    def state_dict(self) -> dict[str, Any]:
        return {"random": self.random.state_dict(), "balanced": self.balanced}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.random.load_state_dict(state["random"])
        self.balanced = state["balanced"]


@METHODS.register("alternate")
class AlternateSampling(Method):
    name = "alternate"
    extra_terms = 2  # sup, pseudo, temporal_lb, temporal_ulb in the semi-supervised stage
    Config = AlternateConfig
    cfg: AlternateConfig

    def __init__(self, cfg: AlternateConfig, info: RunInfo) -> None:
        super().__init__(cfg, info)
        data = info.data
        self.n_lb, self.n_ulb = len(data.y_lb), len(data.y_ulb)
        batches = (info.labeled_batch, info.unlabeled_batch)
        self.plan = phase_plan(cfg, info.total_steps, self.n_lb, self.n_ulb, *batches)
        self.pseudo = torch.full((self.n_ulb,), -1, dtype=torch.long)  # U': stage-1 labels
        self.previous = torch.zeros(self.n_lb + self.n_ulb, data.num_classes)  # p^{e-1}, labeled first
        self.prepared = ""  # the semi phase whose stage 1 has run
        self.head: nn.Linear | None = None
        self.labeled_stream = SwitchedStream(data.y_lb, data.num_classes)

    def extend_model(self, model: nn.Module) -> nn.Module:
        dim = getattr(model, "feat_dim", None)
        if dim is None:
            raise ValueError(f"alternate needs a model with a feat_dim; {type(model).__name__} has none")
        self.head = nn.Linear(dim, self.info.data.num_classes)
        return add_head(model, HEAD, self.head, predict=True)

    def stream(self, which: str) -> IndexStream | None:
        return self.labeled_stream if which == "labeled" else None  # type: ignore[return-value]

    def current(self, step: int) -> Phase:
        return next((p for p in self.plan if step <= p.end), self.plan[-1])

    def phase(self, step: int) -> str | None:
        return self.current(step).name

    # --- the step ------------------------------------------------------------------------------------

    def build_terms(self, trainer: Trainer, ctx: StepContext) -> list[LossTerm] | None:
        phase = self.current(ctx.step)
        self.labeled_stream.balanced = phase.kind == CLASSIFIER
        if phase.kind == SEMI:
            if self.prepared != phase.name:
                self._prepare(trainer)
                self.prepared = phase.name
            return self._semi_terms(trainer, ctx)
        lb = self.labeled_stream.next_batch(trainer.cfg.ssl.batch_size, trainer.gen_data)
        ctx.lb = lb
        data = trainer.data
        x = trainer.aug.weak(batch_images(data.x_lb, lb.index, trainer.device), trainer.gen_aug)
        from lddyn.train.step import supervised_term  # the step module imports the method contract

        if phase.kind == INIT:
            out = trainer.model(x)
            ctx.outputs["labeled"] = out
            return [supervised_term(trainer, lb, head_logits(out))]
        assert self.head is not None
        with torch.no_grad(), model_mode(trainer.model, False):  # f frozen: running statistics
            feat = trainer.model(x)["feat"]
        return [supervised_term(trainer, lb, self.head(feat)).with_(name="sup_balanced")]

    @torch.no_grad()
    def _predict(self, trainer: Trainer, x: Tensor, head: str) -> Tensor:
        """Probabilities of ``head`` on un-augmented images, eval mode, in batches."""
        outs = []
        with model_mode(trainer.model, False):
            for i in range(0, len(x), 512):
                batch = unit_images(x[i : i + 512].to(trainer.device))
                out = trainer.model(trainer.aug.normalize(batch))
                outs.append(torch.softmax(head_logits(out, head).float(), dim=-1).cpu())
        return torch.cat(outs)

    def _prepare(self, trainer: Trainer) -> None:
        """Stage 1: hard labels of g for every unlabeled sample; temporal targets from one pass of g'."""
        data = trainer.data
        self.pseudo = self._predict(trainer, data.x_ulb, HEAD).argmax(-1)
        base_lb, base_ulb = (
            self._predict(trainer, data.x_lb, "base"),
            self._predict(trainer, data.x_ulb, "base"),
        )
        self.previous = torch.cat([base_lb, base_ulb])

    def _semi_terms(self, trainer: Trainer, ctx: StepContext) -> list[LossTerm]:
        from lddyn.train.step import forward_groups, supervised_term

        cfg, data, dev = trainer.cfg.ssl, trainer.data, trainer.device
        lb = self.labeled_stream.next_batch(cfg.batch_size, trainer.gen_data)
        ulb = trainer.streams["unlabeled"].next_batch(cfg.batch_size * cfg.uratio, trainer.gen_data)
        ctx.lb, ctx.ulb = lb, ulb
        x_lb = trainer.aug.weak(batch_images(data.x_lb, lb.index, dev), trainer.gen_aug)
        x_u = trainer.aug.weak(batch_images(data.x_ulb, ulb.index, dev), trainer.gen_aug)
        out_x, out_u = forward_groups(trainer, [x_lb, x_u])
        ctx.outputs["labeled"], ctx.outputs["unlabeled"] = out_x, out_u
        logits_x, logits_u = head_logits(out_x), head_logits(out_u)
        n = float(len(lb.index) + len(ulb.index))
        pseudo = self.pseudo[ulb.index].to(dev)
        ctx.pseudo_label = pseudo
        sup = supervised_term(trainer, lb, logits_x).with_(norm=n)
        pseudo_term = LossTerm(
            name="pseudo",
            logits=logits_u,
            targets=F.one_hot(pseudo, logits_u.shape[-1]).to(logits_u.dtype),
            weight=ulb.weight.to(logits_u),
            norm=n,
            index=ulb.index,
            source_class=pseudo,
            true_class=data.y_ulb[ulb.index.to(dev)],
            status=ulb.status,
            labeled=False,
        )
        lam = self.cfg.lambda_t
        temporal_lb = sup.with_(
            name="temporal_lb",
            targets=self.previous[lb.index].to(logits_x),
            weight=lam * torch.ones_like(sup.weight),
        )
        temporal_ulb = pseudo_term.with_(
            name="temporal_ulb",
            targets=self.previous[self.n_lb + ulb.index].to(logits_u),
            weight=lam * torch.ones_like(pseudo_term.weight),
        )
        return [sup, pseudo_term, temporal_lb, temporal_ulb]

    def after_step(self, ctx: StepContext, terms: list[LossTerm]) -> None:
        """Each visited sample's current g' prediction becomes its temporal target for the next visit."""
        if "unlabeled" not in ctx.outputs or ctx.lb is None or ctx.ulb is None:
            return
        visited = (
            (ctx.outputs["labeled"], ctx.lb.index),
            (ctx.outputs["unlabeled"], self.n_lb + ctx.ulb.index),
        )
        for out, rows in visited:
            self.previous[rows.cpu()] = torch.softmax(head_logits(out).detach().float(), dim=-1).cpu()

    # --- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"pseudo": self.pseudo, "previous": self.previous, "prepared": self.prepared}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pseudo, self.previous = state["pseudo"].clone(), state["previous"].clone()
        self.prepared = state["prepared"]
