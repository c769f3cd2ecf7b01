"""Each method changes exactly what docs/design.md says it changes, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lddyn.config import load_config
from lddyn.losses import RESCALED, total_loss
from lddyn.methods.base import StepContext
from lddyn.train.forward import baseline_logits
from lddyn.train.step import fixmatch_terms, pseudo_targets
from lddyn.train.trainer import Trainer


def make_trainer(tmp_path: Path, methods: str, *extra: str) -> Trainer:
    cfg = load_config(
        "digits-fixmatch", [f"methods={methods}", "train.steps=50", "ssl.batch_size=16", *extra]
    )
    return Trainer(cfg, tmp_path)


def context(trainer: Trainer, step: int = 10) -> StepContext:
    trainer.model.train()
    return StepContext(
        step, float(step - 1), trainer.cfg.train.steps, trainer.model, trainer.student_baseline_logits
    )


def test_cdmad_pseudo_targets_subtract_baseline_logits(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "cdmad", "methods.cdmad.start_step=5")
    u_w = tr.aug.weak(tr.data.x_ulb[:24], tr.gen_aug)
    ctx = context(tr, step=10)
    targets, pseudo, _ = pseudo_targets(tr, ctx, u_w)
    with torch.no_grad():
        tr.model.train()
        z = tr.model(u_w)["logits"]
    b = baseline_logits(tr.model, tr.baseline, train=True)
    torch.testing.assert_close(targets, torch.softmax(z - b, -1))
    assert not torch.allclose(targets, torch.softmax(z, -1))
    assert (pseudo == (z - b).argmax(-1)).all()
    early, _, _ = pseudo_targets(tr, context(tr, step=5), u_w)  # before start_step: plain softmax
    torch.testing.assert_close(early, torch.softmax(z, -1))


def test_cdmad_test_logits_subtract_ema_baseline(tmp_path: Path) -> None:
    from lddyn.methods.base import EvalContext

    tr = make_trainer(tmp_path, "cdmad")
    b = torch.randn(10)
    logits = torch.randn(4, 10)
    out = tr.methods[0].test_logits(EvalContext(tr.ema_model, lambda: b), logits)
    torch.testing.assert_close(out, logits - b)


def test_dytrim_unlabeled_pruning_zero_and_rescaled(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "dytrim", "methods.dytrim.keep_rate=0.5")
    dy = tr.methods[0]
    n = len(dy.scores_ulb)
    dy.scores_ulb = torch.linspace(0, 1, n)  # lower half below the mean: well learned
    learned = dy.scores_ulb < dy.scores_ulb.mean()
    pool, weight = dy._refresh_unlabeled(tr.gen_data)
    kept_learned = learned[pool]
    assert int(kept_learned.sum()) == int(0.5 * int(learned.sum()))
    assert (weight[pool[kept_learned]] == 2.0).all() and (weight[pool[~kept_learned]] == 1.0).all()
    assert set(torch.nonzero(~learned).flatten().tolist()) <= set(pool.tolist())
    # A pruned sample never reaches a batch during the pass, so it contributes zero gradient.
    stream = tr.streams["unlabeled"]
    seen = set(stream.next_batch(8, tr.gen_data).index.tolist())  # starts a pass: a fresh draw
    pruned = set(range(n)) - set(stream.order.tolist())
    assert len(pruned) == int(learned.sum()) - int(0.5 * int(learned.sum()))
    while stream.pos + 8 <= len(stream.order):
        batch = stream.next_batch(8, tr.gen_data)
        seen |= set(batch.index.tolist())
        assert ((batch.weight == 2.0) == (batch.status == RESCALED)).all()
    assert seen and not seen & pruned


def test_dytrim_rescaled_sample_loss_is_scaled(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "dytrim", "methods.dytrim.keep_rate=0.25")
    dy = tr.methods[0]
    dy.scores_ulb = torch.linspace(0, 1, len(dy.scores_ulb))
    ctx = context(tr)
    terms = fixmatch_terms(tr, ctx)
    unsup = terms[1]
    logits = unsup.logits
    grad = torch.autograd.grad(total_loss(terms), logits)[0]
    plain = (torch.softmax(logits, -1) - unsup.targets) * (ctx.mask.repeat(2)[:, None] / unsup.norm)
    scale = torch.where(unsup.status == RESCALED, 4.0, 1.0)[:, None]
    assert (unsup.status == RESCALED).any()
    torch.testing.assert_close(grad, plain.detach() * scale)


def test_dytrim_labeled_keeps_highest_loss_per_class(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "dytrim")
    dy = tr.methods[0]
    dy.scores_lb = torch.rand(len(dy.scores_lb))
    dy.prior = torch.full((10,), 0.5)
    pool, _ = dy._refresh_labeled(tr.gen_data)
    y = tr.data.y_lb
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        expect = idx[torch.argsort(dy.scores_lb[idx], descending=True)[: int(0.5 * len(idx))]]
        assert set(pool[y[pool] == c].tolist()) == set(expect.tolist())


def test_dytrim_anneals_to_full_data(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "dytrim", "methods.dytrim.delta=0.5")
    dy = tr.methods[0]
    dy.scores_ulb = torch.linspace(0, 1, len(dy.scores_ulb))
    dy.progress = 26.0  # past 0.5 * 50 steps
    pool, weight = dy._refresh_unlabeled(tr.gen_data)
    assert len(pool) == len(dy.scores_ulb) and (weight == 1).all()


def test_logit_adjust_shifts_loss_logits(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "logit_adjust", "methods.logit_adjust.tau=1.5")
    ctx = context(tr)
    terms = fixmatch_terms(tr, ctx)
    adjusted = tr.methods[0].reshape_losses(ctx, terms)
    prior = tr.data.class_counts("labeled").double() / tr.data.class_counts("labeled").sum()
    sup = adjusted[0]
    torch.testing.assert_close(
        sup.loss_logits() - sup.logits, (1.5 * prior.log()).float().expand_as(sup.logits)
    )
    assert adjusted[1].logit_offset is None  # only the configured terms
    grad = torch.autograd.grad(sup.loss(), sup.logits)[0]
    expect = (torch.softmax(sup.logits + 1.5 * prior.log().float(), -1) - sup.targets) / sup.norm
    torch.testing.assert_close(grad, expect.detach())


def test_reweight_scales_per_class_gradient(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "reweight", "methods.reweight.power=1.0")
    ctx = context(tr)
    terms = fixmatch_terms(tr, ctx)
    plain = torch.autograd.grad(terms[0].loss(), terms[0].logits, retain_graph=True)[0]
    sup = tr.methods[0].reshape_losses(ctx, terms)[0]
    grad = torch.autograd.grad(sup.loss(), sup.logits)[0]
    counts = tr.data.class_counts("labeled").double()
    w = (1 / counts) * counts.sum() / (counts / counts).sum()
    torch.testing.assert_close(grad, plain * w[sup.source_class].float()[:, None])


def test_resample_is_class_balanced(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "resample")
    stream = tr.streams["labeled"]
    draws = torch.cat([stream.next_batch(64, tr.gen_data).index for _ in range(100)])
    freq = torch.bincount(tr.data.y_lb[draws], minlength=10).double() / len(draws)
    assert (freq - 0.1).abs().max() < 0.02


def test_two_samplers_for_one_set_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="labeled sampler"):
        make_trainer(tmp_path, "resample,dytrim")


def test_dytrim_compute_saving_shortens_the_schedule(tmp_path: Path) -> None:
    tr = make_trainer(tmp_path, "dytrim", "methods.dytrim.save_compute=true", "train.steps=16")
    tr.methods[0].scores_ulb = torch.linspace(0, 1, len(tr.methods[0].scores_ulb))
    tr.fit()
    assert tr.state.progress >= 16
    assert tr.state.step < 16  # each step over a pruned pool stands for more than one full-data step
    full = make_trainer(tmp_path / "b", "dytrim", "train.steps=16")
    full.fit()
    assert full.state.step == 16
