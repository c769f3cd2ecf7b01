"""The recorder's quantities against computations that share no code with it (tests/dynref.py).

kg against float64 per-sample autograd Jacobians and per-sample gradients; totals against
``torch.func.jvp``; measured and update_logp against forwards and finite differences of the
observation function; residuals shrinking as η² for SGD and Adam; in both observation modes, on
MLPs with each normalisation and on a BatchNorm CNN.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from lddyn.dynamics import ObservationSet, Recorder
from tests import dynref
from tests.dynref import D64, Step

MODELS = {
    "mlp-batch": lambda: dynref.mlp("batch"),
    "mlp-layer": lambda: dynref.mlp("layer"),
    "mlp-none": lambda: dynref.mlp("none"),
    "cnn": dynref.cnn,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread) -> None:  # noqa: ANN001
    """Tiny kernels run on one thread (conftest.one_thread)."""


def observation_sets(shape: tuple[int, ...]) -> list[ObservationSet]:
    g = torch.Generator().manual_seed(7)
    test = torch.randn(3, *shape, generator=g, dtype=D64)
    base = torch.stack([torch.full(shape, k, dtype=D64) for k in (0.0, 1.0)])
    return [ObservationSet("test", test, "running"), ObservationSet("baseline", base, "own")]


def record(model, opt, step: Step, sets, by=("term", "source_class"), groups="decoupled", decay=0.0):  # noqa: ANN001, ANN201
    """One recorded step, plus a post-step decay θ ← (1 − decay) θ inside the block."""
    rec = Recorder(model, opt, sets, by=by, groups=groups)
    with rec.step() as s:
        z_lb, l_lb, z_ulb, l_ulb = step.losses(model)
        s.term("sup", logits=z_lb, losses=l_lb, source_class=step.y)
        s.term("unsup", logits=z_ulb, losses=l_ulb, source_class=step.pseudo)
        opt.zero_grad()
        (l_lb.sum() + l_ulb.sum()).backward()
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 - decay)
    return s


def by_key(values: torch.Tensor, metas: list[dict]) -> dict[tuple, torch.Tensor]:
    return {(m.get("term"), m.get("source_class")): v for v, m in zip(values, metas, strict=True)}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("groups", ["decoupled", "exact"])
def test_kg_is_the_observation_jacobian_times_each_group_gradient(name: str, groups: str) -> None:
    model = MODELS[name]()
    shape, step = dynref.shape_of(model), Step(dynref.shape_of(model))
    sets, model0 = observation_sets(shape), copy.deepcopy(model)
    s = record(model, torch.optim.SGD(model.parameters(), lr=0.01), step, sets, groups=groups)
    # independent: per-sample gradients (statistics held for decoupled, exact group losses otherwise)
    keys = step.groups()
    twin = copy.deepcopy(model0)
    full = dynref.flat(
        torch.autograd.grad(sum(x.sum() for x in step.losses(twin)[1::2]), list(twin.parameters()))
    )
    if groups == "decoupled":
        per_sample = step.per_sample_grads(dynref.detached_copy(model0))
        grads = {k: sum(per_sample[i] for i, kk in enumerate(keys) if kk == k) for k in set(keys)}
        grads[("bn_coupling", None)] = full - sum(grads.values())
    else:
        grads = {k: _exact_group_grad(model0, step, k) for k in set(keys)}
    for obs in sets:
        jac = dynref.jacobian(model0, obs.x, obs.norm)  # (O, C, P)
        kg, gd = by_key(*s.results[obs.name]["kg"]), by_key(*s.results[obs.name]["gd_logp"])
        probs = torch.softmax(dynref.observe(model0, obs.x, obs.norm), -1).detach()
        assert set(kg) == set(grads) == set(gd)
        for k, g in grads.items():
            want = jac @ g
            torch.testing.assert_close(kg[k], want, rtol=1e-7, atol=1e-9 * float(want.abs().max()) + 1e-12)
            plain = -0.01 * (want - (want * probs).sum(-1, keepdim=True))  # −η T(x_o) J_o g, T = I − 1πᵀ
            torch.testing.assert_close(gd[k], plain, rtol=1e-7, atol=1e-9 * float(plain.abs().max()) + 1e-12)
    if name in ("mlp-layer", "mlp-none") and groups == "decoupled":  # no batch statistics, no coupling
        assert float(grads[("bn_coupling", None)].abs().max()) < 1e-12


def _exact_group_grad(model0, step: Step, key: tuple) -> torch.Tensor:  # noqa: ANN001
    m = copy.deepcopy(model0)
    _, l_lb, _, l_ulb = step.losses(m)
    mask = torch.tensor([k == key for k in step.groups()])
    loss = torch.cat([l_lb, l_ulb])[mask].sum()
    return dynref.flat(
        torch.autograd.grad(loss, list(m.parameters()), allow_unused=True, materialize_grads=True)
    )


@pytest.mark.parametrize("name", ["mlp-batch", "cnn"])
def test_groups_sum_to_the_jvp_along_the_full_gradient(name: str) -> None:
    model = MODELS[name]()
    step, sets, model0 = (
        Step(dynref.shape_of(model)),
        observation_sets(dynref.shape_of(model)),
        copy.deepcopy(model),
    )
    s = record(model, torch.optim.SGD(model.parameters(), lr=0.01), step, sets)
    m = copy.deepcopy(model0)
    grads = torch.autograd.grad(sum(x.sum() for x in step.losses(m)[1::2]), list(m.parameters()))
    params = {n: p.detach() for n, p in model0.named_parameters()}
    tangent = dict(zip(params, grads, strict=True))
    for obs in sets:
        f = _functional(model0, obs.norm)
        _, total = jvp(lambda p: f(p, obs.x), (params,), (tangent,))  # noqa: B023
        kg = s.results[obs.name]["kg"][0]
        torch.testing.assert_close(kg.sum(0), total, rtol=1e-8, atol=1e-10)


def _functional(model0, mode: str):  # noqa: ANN001, ANN202
    """The observation function as f(params, x) for torch.func (own: statistics of each input alone,
    a copy without running statistics, so nothing is written)."""
    m = copy.deepcopy(model0)
    if mode == "running":
        m.eval()
        return lambda p, x: functional_call(m, p, (x,))["logits"]
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            bn.track_running_stats, bn.running_mean, bn.running_var = False, None, None
    vector = any(isinstance(b, torch.nn.BatchNorm1d) for b in m.modules())

    def f(p, x):  # noqa: ANN001, ANN202
        rows = [x[o : o + 1].expand(2, *x.shape[1:]) if vector else x[o : o + 1] for o in range(len(x))]
        return torch.stack([functional_call(m.train(), p, (r,))["logits"][0] for r in rows])

    return f


OPTIMIZERS = {
    "sgd-nesterov-wd": lambda p, lr: torch.optim.SGD(
        p, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    ),
    "sgd-dampened": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5, dampening=0.3),
    "adam-wd": lambda p, lr: torch.optim.Adam(p, lr=lr, weight_decay=1e-3),
    "adam-amsgrad": lambda p, lr: torch.optim.Adam(p, lr=lr, amsgrad=True),
    "adamw": lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.05),
}


CASES = [("cnn", o) for o in OPTIMIZERS] + [(m, "adam-wd") for m in ("mlp-batch", "mlp-layer", "mlp-none")]


@pytest.mark.parametrize("name, opt_name", CASES)
def test_measured_and_update_logp_against_the_observation_function(name: str, opt_name: str) -> None:
    """measured = forwards of the independent function; Σ update_logp = its central finite
    difference along the realised Δθ at the buffers before the step (the rest is bn_drift)."""
    model = MODELS[name]()
    step, sets = Step(dynref.shape_of(model)), observation_sets(dynref.shape_of(model))
    opt = OPTIMIZERS[opt_name](model.parameters(), 1e-3)
    _plain_step(model, opt, Step(dynref.shape_of(model), seed=1))  # optimiser state for the carry
    model0 = copy.deepcopy(model)
    s = record(model, opt, step, sets, decay=4e-5)
    theta0 = {n: p.detach() for n, p in model0.named_parameters()}
    delta = {n: p.detach() - theta0[n] for n, p in model.named_parameters()}
    eps = 1e-3
    for obs in sets:
        r = s.results[obs.name]
        logp = lambda m, x=obs.x, n=obs.norm: F.log_softmax(dynref.observe(m, x, n), -1)  # noqa: E731
        torch.testing.assert_close(r["measured"][0][0], logp(model) - logp(model0), rtol=0, atol=1e-12)
        plus = {n: theta0[n] + eps * d for n, d in delta.items()}
        minus = {n: theta0[n] - eps * d for n, d in delta.items()}
        fd = (
            F.log_softmax(dynref.observe(model0, obs.x, obs.norm, plus), -1)
            - F.log_softmax(dynref.observe(model0, obs.x, obs.norm, minus), -1)
        ).detach() / (2 * eps)
        upd = r["update_logp"][0].sum(0)
        torch.testing.assert_close(upd, fd, rtol=1e-5, atol=1e-6 * float(fd.abs().max()))
        parts = {m["part"] for m in r["update_logp"][1]}
        assert {"group", "carry", "post_step"} <= parts  # the warm-up step left a momentum to carry


def _plain_step(model, opt, step: Step) -> None:  # noqa: ANN001
    opt.zero_grad()
    sum(x.sum() for x in step.losses(model)[1::2]).backward()
    opt.step()


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("name", ["mlp-batch", "cnn"])
def test_residual_shrinks_as_the_step_size_squared(opt_name: str, name: str) -> None:
    """Slope 2 ± 0.3 of log |residual| against log η, at test images (running) and baseline
    images (own); the momentum carry and a post-step decay of size ∝ η included."""
    base_model = MODELS[name]()
    shape = dynref.shape_of(base_model)
    sets, step = observation_sets(shape), Step(shape)
    lrs = [3e-2, 1e-2, 3e-3, 1e-3]
    residual: dict[str, list[float]] = {o.name: [] for o in sets}
    for lr in lrs:
        model = copy.deepcopy(base_model)
        if opt_name == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=lr)
        s = record(model, opt, step, sets, decay=0.04 * lr)
        for obs in sets:
            residual[obs.name].append(float(s.results[obs.name]["residual"][0].norm()))
    for name_, values in residual.items():
        slope = np.polyfit(np.log(lrs), np.log(values), 1)[0]
        assert 1.7 <= slope <= 2.3, (name_, slope, values)


def test_recorded_step_trains_exactly_as_an_unrecorded_one() -> None:
    """The recorder's BatchNorm route and hooks leave the step bit for bit as it was, and the
    model as it found it."""
    model = dynref.cnn(smooth=False)
    twin = copy.deepcopy(model)
    step, sets = Step(dynref.shape_of(model)), observation_sets(dynref.shape_of(model))
    record(model, torch.optim.Adam(model.parameters(), lr=1e-3), step, sets)
    _plain_step(twin, torch.optim.Adam(twin.parameters(), lr=1e-3), step)
    for (n, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert all("forward" not in vars(m) for m in model.modules())
    out, ref = model(step.x_lb)["logits"], twin(step.x_lb)["logits"]
    assert torch.equal(out, ref) and type(out.grad_fn) is type(ref.grad_fn)
