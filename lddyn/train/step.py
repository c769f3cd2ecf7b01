"""The FixMatch step as per-sample loss terms; methods reshape it, the loop minimises it.

Shapes: B labeled, U = mu * B unlabeled, S strong views per unlabeled image, C classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from lddyn.losses import LossTerm
from lddyn.methods.base import StepContext
from lddyn.train.forward import model_mode

if TYPE_CHECKING:
    from lddyn.train.trainer import Trainer


def _forward_logits(trainer: Trainer, batches: list[Tensor]) -> list[Tensor]:
    """Training forward; separate BN batches per input group as the reference does, or one batch."""
    model = trainer.model
    if trainer.cfg.ssl.separate_bn_batches:
        return [model(x)["logits"] for x in batches]
    logits = model(torch.cat(batches))["logits"]
    return list(logits.split([len(x) for x in batches]))


def pseudo_targets(trainer: Trainer, ctx: StepContext, u_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(targets (U, C), pseudo-label (U,), mask (U,)) from the weak view, after method adjustments."""
    cfg = trainer.cfg.ssl
    with torch.no_grad(), model_mode(trainer.model, cfg.pseudo_label_mode == "train"):
        logits_w = trainer.model(u_w)["logits"]
    for method in trainer.methods:
        logits_w = method.adjust_pseudo_logits(ctx, logits_w)
    probs = torch.softmax(logits_w / cfg.temperature, dim=-1)
    conf, pseudo = probs.max(dim=-1)
    targets = F.one_hot(pseudo, probs.shape[-1]).to(probs.dtype) if cfg.hard_label else probs
    return targets, pseudo, (conf >= cfg.tau).to(probs.dtype)


def fixmatch_terms(trainer: Trainer, ctx: StepContext) -> list[LossTerm]:
    """Draw the batches, build the supervised and consistency terms of one step."""
    cfg, data, gen = trainer.cfg.ssl, trainer.data, trainer.gen_data
    lb = trainer.streams["labeled"].next_batch(cfg.batch_size, gen)
    ulb = trainer.streams["unlabeled"].next_batch(cfg.batch_size * cfg.uratio, gen)
    ctx.lb, ctx.ulb = lb, ulb
    dev = trainer.device
    x_lb = trainer.aug.weak(data.x_lb[lb.index.to(dev)], trainer.gen_aug)
    u = data.x_ulb[ulb.index.to(dev)]
    u_w = trainer.aug.weak(u, trainer.gen_aug)
    u_s = [trainer.aug.strong(u, trainer.gen_aug) for _ in range(cfg.num_strong)]
    if any(getattr(m, "uses_baseline", False) for m in trainer.methods):
        ctx.baseline_logits()  # the reference forwards the baseline image before the weak view
    targets, pseudo, mask = pseudo_targets(trainer, ctx, u_w)
    ctx.pseudo_label, ctx.mask = pseudo, mask
    logits_x, *logits_s = _forward_logits(trainer, [x_lb, *u_s])
    sup = _supervised(trainer, lb, logits_x).with_(inputs=x_lb)
    unsup = _consistency(trainer, ctx, torch.cat(logits_s), targets).with_(inputs=torch.cat(u_s))
    return [sup, unsup]


def _supervised(trainer: Trainer, lb, logits_x: Tensor) -> LossTerm:  # noqa: ANN001
    y = trainer.data.y_lb[lb.index.to(trainer.device)]
    return LossTerm(
        name="sup",
        logits=logits_x,
        targets=F.one_hot(y, logits_x.shape[-1]).to(logits_x.dtype),
        weight=lb.weight.to(logits_x),
        norm=float(len(y)),
        index=lb.index,
        source_class=y,
        true_class=y,
        status=lb.status,
        labeled=True,
    )


def _consistency(trainer: Trainer, ctx: StepContext, logits_s: Tensor, targets: Tensor) -> LossTerm:
    cfg, ulb = trainer.cfg.ssl, ctx.ulb
    assert ulb is not None and ctx.mask is not None and ctx.pseudo_label is not None
    s = cfg.num_strong
    weight = (ctx.mask * ulb.weight.to(ctx.mask) * cfg.lambda_u).repeat(s)
    true = trainer.data.y_ulb[ulb.index.to(trainer.device)]
    return LossTerm(
        name="unsup",
        logits=logits_s,
        targets=targets.repeat(s, 1),
        weight=weight,
        norm=float(len(logits_s)),
        index=ulb.index.repeat(s),
        source_class=ctx.pseudo_label.repeat(s),
        true_class=true.repeat(s),
        status=ulb.status.repeat(s),
        labeled=False,
    )
