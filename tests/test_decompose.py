"""One-step decomposition and realised-update split: exact sums, first-order accuracy, honest gaps.

NT-style linearisation tests: the predicted Δlog π must match the measured one with an error
shrinking as η², and every split must sum to its total (float64) within rounding.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lddyn.dynamics import (
    StepDecomposition,
    decompose_step,
    empirical_ntk,
    group_gradients,
    predict_update,
    realised_step,
)
from lddyn.losses import KEPT, PRUNED, RESCALED, LossTerm
from lddyn.models import build_model

C, SHAPE = 5, (1, 4, 4)
D64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # noqa: ANN202
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def mlp(norm: str, smooth: bool = False) -> nn.Module:
    """The lddyn MLP; ``smooth`` swaps ReLU for tanh.

    The η² bound of the linearisation needs a C² map: with ReLU an observation's pre-activation
    near a kink crosses it at some step size, and the residual is first order beyond that point.
    """
    model = build_model("mlp", num_classes=C, image_shape=SHAPE, width=12, norm=norm).to(D64).train()
    if smooth:
        for i, m in enumerate(model.body):
            if isinstance(m, nn.ReLU):
                model.body[i] = nn.Tanh()
    return model


def batch(n: int) -> Tensor:
    return torch.randn(n, *SHAPE, dtype=D64)


class Step:
    """A FixMatch-like step: labeled term + unlabeled term with pseudo-labels, masks, statuses."""

    def __init__(self, n_lb: int = 8, n_ulb: int = 12) -> None:
        self.x_lb, self.y_lb = batch(n_lb), torch.randint(0, C, (n_lb,))
        self.x_ulb, self.pseudo = batch(n_ulb), torch.randint(0, C, (n_ulb,))
        self.true = torch.where(torch.rand(n_ulb) < 0.6, self.pseudo, torch.randint(0, C, (n_ulb,)))
        self.weight = (torch.rand(n_ulb) < 0.8).to(D64) * torch.rand(n_ulb, dtype=D64)
        self.status = torch.tensor([KEPT, RESCALED, PRUNED])[torch.randint(0, 3, (n_ulb,))]

    def terms(self, model: nn.Module) -> list[LossTerm]:
        z_lb, z_ulb = model(self.x_lb)["logits"], model(self.x_ulb)["logits"]
        n, u = len(self.y_lb), len(self.pseudo)
        sup = LossTerm(
            "sup",
            z_lb,
            F.one_hot(self.y_lb, C).to(D64),
            torch.ones(n, dtype=D64),
            float(n),
            torch.arange(n),
            self.y_lb,
            self.y_lb,
            torch.zeros(n, dtype=torch.long),
            labeled=True,
        )
        unsup = LossTerm(
            "unsup",
            z_ulb,
            F.one_hot(self.pseudo, C).to(D64),
            self.weight,
            float(u),
            torch.arange(u),
            self.pseudo,
            self.true,
            self.status,
            labeled=False,
        )
        return [sup, unsup]


def naive_total_push(model: nn.Module, terms: list[LossTerm], x_obs: Tensor) -> Tensor:
    """J_o ∇θL from a loss.backward() gradient and per-sample, per-class autograd rows: (O, C)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(sum(t.loss() for t in terms), params, retain_graph=True)
    g = torch.cat([x.reshape(-1) for x in grads])
    model.eval()
    out = torch.zeros(len(x_obs), C, dtype=D64)
    for o in range(len(x_obs)):
        z = model(x_obs[o : o + 1])["logits"][0]
        for c in range(C):
            row = torch.autograd.grad(z[c], params, retain_graph=True)
            out[o, c] = torch.cat([r.reshape(-1) for r in row]) @ g
    model.train()
    return out


@pytest.mark.parametrize(
    "by", [("term", "source_class", "correct", "status"), ("term",), ("source_class", "correct"), ()]
)
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_group_sum_is_exact_and_total_is_the_gradient_jvp(by: tuple[str, ...], norm: str) -> None:
    model, step, x_obs = mlp(norm), Step(), batch(6)
    terms = step.terms(model)
    dec = decompose_step(model, terms, x_obs, lr=0.1, by=by, step=7)
    assert dec.by == by and len(dec.groups) == len(set(dec.groups)) and int(dec.group_sizes.sum()) == 20
    assert (dec.kg.sum(0) - dec.kg_total).abs().max() <= 1e-12
    assert (dec.pred_logp.sum(0) - dec.pred_logp_total).abs().max() <= 1e-12
    ref = naive_total_push(model, terms, x_obs)
    assert (dec.kg_total - ref).abs().max() <= 1e-10 and ref.abs().max() > 1e-3
    probs = F.softmax(model.eval()(x_obs)["logits"], -1)
    model.train()
    expected = -0.1 * (ref - (ref * probs).sum(-1, keepdim=True))  # −η T J ∇L
    assert (dec.pred_logp_total - expected).abs().max() <= 1e-10


def test_groups_are_keyed_by_term_class_correctness_status() -> None:
    model, step = mlp("layer"), Step()
    dec = decompose_step(model, step.terms(model), batch(3), lr=0.1)
    for key, size in zip(dec.groups, dec.group_sizes.tolist(), strict=True):
        term, cls, correct, status = key
        if term == "sup":
            assert correct == -1 and status == KEPT
            assert size == int((step.y_lb == cls).sum())
        else:
            match = (
                (step.pseudo == cls)
                & ((step.pseudo == step.true).long() == correct)
                & (step.status == status)
            )
            assert size == int(match.sum())
    with pytest.raises(ValueError, match="grouping keys"):
        decompose_step(model, step.terms(model), batch(3), lr=0.1, by=("term", "colour"))


def test_logit_gradient_is_read_from_autograd() -> None:
    """G_b = w (π − q) / N for the soft cross-entropy, and the graph survives for the trainer."""
    model, step = mlp("batch"), Step()
    terms = step.terms(model)
    dec = decompose_step(model, terms, batch(2), lr=0.1)
    for t in terms:
        closed = t.weight[:, None] * (F.softmax(t.logits, -1) - t.targets) / t.norm
        assert (dec.G[t.name] - closed).abs().max() <= 1e-14
    assert all(p.grad is None for p in model.parameters())
    sum(t.loss() for t in terms).backward()  # the training graph is still alive
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_groups_equal_per_sample_kernel_sum_without_batch_coupling(norm: str) -> None:
    model, step, x_obs = mlp(norm), Step(), batch(5)
    terms = step.terms(model)
    track = {"sup": torch.arange(8), "unsup": torch.arange(12)}
    dec = decompose_step(
        model, terms, x_obs, lr=0.1, track=track, track_inputs={"sup": step.x_lb, "unsup": step.x_ulb}
    )
    x_b, G = torch.cat([step.x_lb, step.x_ulb]), torch.cat([dec.G["sup"], dec.G["unsup"]])
    kernel_sum = torch.einsum("obcd,bd->oc", empirical_ntk(model, x_obs, x_b), G)
    assert (kernel_sum - dec.kg.sum(0)).abs().max() <= 1e-10
    assert (dec.tracked.kg_exact.sum(0) - dec.kg_total).abs().max() <= 1e-12
    assert dec.tracked.gap.abs().max() <= 1e-10


def test_batchnorm_train_mode_gap_is_reported_not_hidden() -> None:
    model, step, x_obs = mlp("batch"), Step(), batch(5)
    terms = step.terms(model)
    track = {"sup": torch.arange(8), "unsup": torch.arange(12)}
    dec = decompose_step(
        model, terms, x_obs, lr=0.1, track=track, track_inputs={"sup": step.x_lb, "unsup": step.x_ulb}
    )
    assert (dec.tracked.kg_exact.sum(0) - dec.kg_total).abs().max() <= 1e-12  # exact through the graph
    gap = dec.tracked.gap
    assert torch.isfinite(gap).all() and gap.abs().max() > 1e-4  # the eval-mode eNTK differs


def test_rows_are_tidy_and_match_tensors() -> None:
    model, step = mlp("layer"), Step()
    dec: StepDecomposition = decompose_step(
        model, step.terms(model), batch(3), lr=0.1, step=11, obs_ids=torch.tensor([5, 6, 9])
    )
    rows = dec.to_rows()
    assert len(rows) == (2 * len(dec.groups) + 2) * 3 * C
    cols = {
        "step",
        "observation",
        "target_class",
        "term",
        "source_class",
        "correct",
        "status",
        "quantity",
        "value",
        "grad_mode",
    }
    assert all(set(r) == cols for r in rows)
    assert {r["grad_mode"] for r in rows} == {"exact"}
    g = 2
    key = dict(zip(dec.by, dec.groups[g], strict=True))
    hit = [
        r
        for r in rows
        if r["quantity"] == "pred_logp"
        and r["observation"] == 6
        and r["target_class"] == 3
        and all(r[k] == v for k, v in key.items())
    ]
    assert len(hit) == 1 and hit[0]["value"] == pytest.approx(dec.pred_logp[g, 1, 3].item(), abs=0)
    assert {r["step"] for r in rows} == {11}


# --- realised update --------------------------------------------------------------------------


def one_step(
    model: nn.Module, opt: torch.optim.Optimizer, step: Step, x_obs: Tensor, post_decay: float = 0.0
):  # noqa: ANN201
    """predict -> backward -> optimizer.step -> optional post-step decay -> measure."""
    terms = step.terms(model)
    pred = predict_update(model, opt, terms, x_obs, post_decay=post_decay)
    opt.zero_grad()
    sum(t.loss() for t in terms).backward()
    opt.step()
    if post_decay:
        with torch.no_grad():
            for v in model.state_dict().values():
                if v.dtype.is_floating_point:
                    v.mul_(1 - post_decay)
    return pred.measure(model)


def warm(model: nn.Module, opt: torch.optim.Optimizer, step: Step, n: int = 3) -> None:
    for _ in range(n):
        opt.zero_grad()
        sum(t.loss() for t in step.terms(model)).backward()
        opt.step()


def slope(lrs: list[float], values: list[float]) -> float:
    xs, ys = [math.log10(v) for v in lrs], [math.log10(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.01),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, dampening=0.1),
    "sgd_nesterov_wd": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adam_wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=1e-2, amsgrad=True),
}


def run_lrs(name: str, norm: str, lrs: list[float], post: float = 0.0, warmup: int = 3) -> list:
    base, step, x_obs = mlp(norm, smooth=True), Step(), batch(6)
    out = []
    for lr in lrs:
        model = copy.deepcopy(base)
        opt = OPTIMIZERS[name](model.parameters())
        warm(model, opt, step, warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        out.append(one_step(model, opt, step, x_obs, post * lr))
    return out


def test_plain_sgd_residual_shrinks_as_lr_squared() -> None:
    lrs = [1e-3, 1e-4, 1e-5]
    res = run_lrs("sgd", "layer", lrs, warmup=0)
    norms = [r.residual.norm().item() for r in res]
    assert 1.7 <= slope(lrs, norms) <= 2.3
    assert all(r.residual.norm() < 0.05 * r.measured.norm() for r in res)
    assert all(r.bn_drift.abs().max() == 0 for r in res)  # LayerNorm: no buffers


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_parts_sum_to_realised_update_and_match_to_first_order(name: str) -> None:
    lrs = [1e-3, 1e-4, 1e-5]
    res = run_lrs(name, "layer", lrs)
    for lr, r in zip(lrs, res, strict=True):
        scale = max(d.abs().max().item() for d in r.delta_theta.values())
        assert scale > 0.1 * lr  # a real update
        assert r.param_error() <= 1e-13 + 1e-10 * scale  # θ1 − θ0 itself carries ~1e-16·|θ| rounding
    norms = [r.residual.norm().item() for r in res]
    assert 1.7 <= slope(lrs, norms) <= 2.3
    parts = res[0].prediction.parts
    assert (
        "carry" in parts
        and sum(p.startswith("group:") for p in parts) == len(res[0].prediction.part_meta) - 3
    )


def test_post_decay_and_batchnorm_drift_are_their_own_parts() -> None:
    lrs = [1e-3, 1e-4, 1e-5]
    res = run_lrs("adam_wd", "batch", lrs, post=0.04)
    for r in res:
        assert "post_decay" in r.prediction.parts
        # Adam normalises the rounding noise of BN-cancelled gradients (Linear bias before BN) to
        # updates ~1e-10·lr that differ between torch's .grad and the group sum: a looser bound.
        assert r.param_error() <= 1e-13 + 1e-8 * max(d.abs().max().item() for d in r.delta_theta.values())
        assert r.bn_drift.abs().max() > 0  # running statistics were decayed with the parameters
    assert 1.7 <= slope(lrs, [r.residual.norm().item() for r in res]) <= 2.3


def test_prediction_reads_but_never_writes_optimizer_state() -> None:
    model, step, x_obs = mlp("layer"), Step(), batch(4)
    opt = OPTIMIZERS["adam_wd"](model.parameters())
    warm(model, opt, step)
    before = copy.deepcopy(opt.state_dict())
    predict_update(model, opt, step.terms(model), x_obs)
    after = opt.state_dict()
    for k, st in before["state"].items():
        assert all(torch.equal(v, after["state"][k][n]) for n, v in st.items())


def test_context_manager_and_shared_group_gradients() -> None:
    model, step, x_obs = mlp("layer"), Step(), batch(4)
    opt = OPTIMIZERS["sgd_nesterov_wd"](model.parameters())
    warm(model, opt, step, 1)
    terms = step.terms(model)
    grads = group_gradients(model, terms)
    dec = decompose_step(model, terms, x_obs, lr=0.01, grads=grads)
    with realised_step(model, opt, terms, x_obs, grads=grads) as r:
        opt.zero_grad()
        sum(t.loss() for t in terms).backward()
        opt.step()
    assert r.result is not None and r.result.param_error() <= 1e-15
    # Nesterov with dampening 0: each group's share is (1 + μ) times its plain-SGD share
    shares = r.prediction.pred_logp[: len(dec.groups)]
    assert (shares - 1.9 * dec.pred_logp).abs().max() <= 1e-12
    rows = r.result.to_rows()
    assert {row["quantity"] for row in rows} == {"pred_logp", "measured", "bn_drift", "residual"}


def test_unsupported_optimizer_is_an_error() -> None:
    model, step = mlp("layer"), Step()
    opt = torch.optim.RMSprop(model.parameters())
    with pytest.raises(NotImplementedError, match="SGD, Adam and AdamW"):
        predict_update(model, opt, step.terms(model), batch(2))
