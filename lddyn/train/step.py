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
from lddyn.methods.heads import head_logits
from lddyn.train.device import batch_images
from lddyn.train.forward import model_mode

if TYPE_CHECKING:
    from lddyn.train.trainer import Trainer


def forward_groups(trainer: Trainer, batches: list[Tensor]) -> list[dict[str, Tensor]]:
    """Training forward; separate BN batches per input group as the reference does, or one batch.

    Returns one model-output dict per input group (features, logits, extra heads' logits).
    """
    model = trainer.model
    if trainer.cfg.ssl.separate_bn_batches:
        return [model(x) for x in batches]
    out = model(torch.cat(batches))
    sizes = [len(x) for x in batches]
    parts = {k: v.split(sizes) for k, v in out.items()}
    return [{k: parts[k][i] for k in out} for i in range(len(batches))]


def concat_outputs(outs: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


def pseudo_targets(trainer: Trainer, ctx: StepContext, u_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(targets (U, C), pseudo-label (U,), mask (U,)) from the weak view, after method adjustments."""
    cfg = trainer.cfg.ssl
    with torch.no_grad(), model_mode(trainer.model, cfg.pseudo_label_mode == "train"):
        ctx.outputs["weak"] = trainer.model(u_w)
    logits_w = head_logits(ctx.outputs["weak"])
    for method in trainer.methods:
        logits_w = method.adjust_pseudo_logits(ctx, logits_w)
    probs = torch.softmax(logits_w / cfg.temperature, dim=-1)
    conf, pseudo = probs.max(dim=-1)
    targets = F.one_hot(pseudo, probs.shape[-1]).to(probs.dtype) if cfg.hard_label else probs
    mask = (conf >= cfg.tau).to(probs.dtype)
    ctx.probs = probs
    for method in trainer.methods:
        mask = method.adjust_mask(ctx, probs, mask).to(probs.dtype)
    return targets, pseudo, mask


def fixmatch_terms(trainer: Trainer, ctx: StepContext) -> list[LossTerm]:
    """Draw the batches, build the supervised and consistency terms of one step."""
    cfg, data, gen = trainer.cfg.ssl, trainer.data, trainer.gen_data
    batch, shard = trainer.dist.global_batch, trainer.dist.shard  # one process: the batch itself
    lb = trainer.streams["labeled"].next_batch(batch(cfg.batch_size), gen)
    ulb = trainer.streams["unlabeled"].next_batch(batch(cfg.batch_size * cfg.uratio, "ssl.uratio"), gen)
    dev = trainer.device
    # views are drawn for the global batch in every process, then each keeps its slice
    x_lb = shard(trainer.aug.weak(batch_images(data.x_lb, lb.index, dev, trainer.dtype), trainer.gen_aug))
    u = batch_images(data.x_ulb, ulb.index, dev, trainer.dtype)
    u_w = shard(trainer.aug.weak(u, trainer.gen_aug))
    u_s = [shard(trainer.aug.strong(u, trainer.gen_aug)) for _ in range(cfg.num_strong)]
    lb, ulb = trainer.dist.shard_batch(lb), trainer.dist.shard_batch(ulb)
    ctx.lb, ctx.ulb = lb, ulb
    if any(getattr(m, "uses_baseline", False) for m in trainer.methods):
        ctx.baseline_logits()  # the reference forwards the baseline image before the weak view
    targets, pseudo, mask = pseudo_targets(trainer, ctx, u_w)
    ctx.pseudo_label, ctx.mask = pseudo, mask
    out_x, *out_s = forward_groups(trainer, [x_lb, *u_s])
    ctx.outputs["labeled"], ctx.outputs["strong"] = out_x, concat_outputs(out_s)
    sup = supervised_term(trainer, lb, head_logits(out_x)).with_(inputs=x_lb)
    logits_s = head_logits(ctx.outputs["strong"])
    unsup = _consistency(trainer, ctx, logits_s, targets).with_(inputs=torch.cat(u_s))
    return [sup, unsup]


def supervised_term(trainer: Trainer, lb, logits_x: Tensor) -> LossTerm:  # noqa: ANN001
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
        log_eps=trainer.cfg.ssl.log_eps,
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
        log_eps=cfg.log_eps,
    )
