"""The decoupled group gradients and the factored observation Jacobian (float64 references).

Decoupled groups hold each BatchNorm batch's statistics constant; what flows through the
statistics is the coupling part, so groups + coupling = J_o ∇θ L exactly, and without BatchNorm in
train mode the decoupled groups are the exact ones.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lddyn.dynamics import decompose_step, group_gradients, predict_update
from lddyn.dynamics.decompose import take_group_gradients
from lddyn.dynamics.decoupled import ForwardCapture, decoupled_group_gradients
from lddyn.dynamics.functional import jvp_logits, trainable_params
from lddyn.dynamics.groups import COUPLING_TERM, GROUP_KEYS, GroupGradients, live_total
from lddyn.dynamics.obs_jacobian import ObservationJacobian
from lddyn.losses import LossTerm
from lddyn.models import build_model
from tests.test_decompose import D64, SHAPE, C, Step, _one_thread, batch, mlp, naive_total_push

__all__ = ["_one_thread"]  # the module-wide single-thread fixture of test_decompose


def cnn(norm: str = "batch") -> nn.Module:
    return build_model("cnn", num_classes=C, image_shape=SHAPE, width=3, norm=norm).to(D64).train()


def model_for(arch: str, norm: str) -> nn.Module:
    return cnn(norm) if arch == "cnn" else mlp(norm)


def captured(model: nn.Module, step: Step) -> tuple[list[LossTerm], list]:
    """The step's terms, forwarding labeled and unlabeled as two BatchNorm batches, and the calls."""
    capture = ForwardCapture(model)
    terms = step.terms(model)
    return terms, capture.remove()


def max_diff(a: GroupGradients, b: GroupGradients) -> float:
    out = 0.0
    for ga, gb in zip(a.grads, b.grads, strict=True):
        for name, va in ga.items():
            vb = gb[name]
            va = torch.zeros_like(vb) if va is None and vb is not None else va
            vb = torch.zeros_like(va) if vb is None and va is not None else vb
            if va is not None:
                out = max(out, float((va - vb).abs().max()))
    return out


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_decoupled_groups_plus_coupling_are_the_total(arch: str) -> None:
    model, step, x_obs = model_for(arch, "batch"), Step(), batch(4)
    terms, calls = captured(model, step)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    dec = decompose_step(model, terms, x_obs, lr=0.1, mode="decoupled", calls=calls)
    assert dec.mode == "decoupled" and dec.kg_coupling is not None
    ref = naive_total_push(model, terms, x_obs)  # J_o ∇θ L from a plain backward and autograd rows
    assert (dec.kg.sum(0) + dec.kg_coupling - ref).abs().max() <= 1e-10
    assert (dec.kg_total - ref).abs().max() <= 1e-10 and ref.abs().max() > 1e-3
    assert dec.kg_coupling.abs().max() > 1e-6  # train-mode BatchNorm couples the batch
    rows = dec.to_rows()
    assert {r["grad_mode"] for r in rows} == {"decoupled"}
    coupling_rows = [r for r in rows if r["term"] == COUPLING_TERM]
    assert len(coupling_rows) == 2 * 4 * C and all(r["source_class"] is None for r in coupling_rows)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # buffers never written
    assert all(p.grad is None for p in model.parameters())
    sum(t.loss() for t in terms).backward()  # the training graph survives for the trainer


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
@pytest.mark.parametrize("norm", ["layer", "none"])
def test_without_batch_coupling_decoupled_groups_are_the_exact_groups(arch: str, norm: str) -> None:
    model, step = model_for(arch, norm), Step()
    terms, calls = captured(model, step)
    decoupled = take_group_gradients(model, terms, GROUP_KEYS, "decoupled", calls)
    exact = group_gradients(model, terms, GROUP_KEYS, with_total=False)
    assert decoupled.mode == "decoupled" and decoupled.keys == exact.keys and len(exact.keys) > 3
    assert max_diff(decoupled, exact) <= 1e-10
    decoupled.set_total(live_total(model, terms))
    assert max(float(c.abs().max()) for c in decoupled.coupling.values() if c is not None) <= 1e-12


def batch_stats(model: nn.Module, x: Tensor) -> dict[nn.Module, tuple[Tensor, Tensor]]:
    """Each BatchNorm layer's batch mean and biased variance on ``x`` (train-mode forward)."""
    stats: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def hook(m: nn.Module, args: tuple) -> None:
        a = args[0]
        dims = [0, *range(2, a.dim())]
        stats[m] = (a.mean(dims), a.var(dims, unbiased=False))

    probe = copy.deepcopy(model).train()
    handles = [m.register_forward_pre_hook(hook) for m in probe.modules() if isinstance(m, _BatchNorm)]
    with torch.no_grad():
        probe(x)
    for h in handles:
        h.remove()
    by_name = dict(probe.named_modules())
    return {m: stats[by_name[n]] for n, m in model.named_modules() if isinstance(m, _BatchNorm)}


def test_decoupled_groups_hold_batch_statistics_constant() -> None:
    """Reference: eval-mode forwards whose running statistics are set to each batch's statistics."""
    model, step = cnn("batch"), Step()
    terms, calls = captured(model, step)
    decoupled = decoupled_group_gradients(model, terms, calls)
    assert decoupled is not None
    ref_model = copy.deepcopy(model).eval()
    ref_terms = []
    for term, x in zip(terms, (step.x_lb, step.x_ulb), strict=True):
        for m, (mean, var) in batch_stats(ref_model, x).items():
            m.running_mean, m.running_var = mean.clone(), var.clone()  # new tensors: the graph keeps the old
        ref_terms.append(term.with_(logits=ref_model(x)["logits"]))
    exact = group_gradients(ref_model, ref_terms, GROUP_KEYS, with_total=False)
    assert decoupled.keys == exact.keys and max_diff(decoupled, exact) <= 1e-10
    assert max(float(v.abs().max()) for g in exact.grads for v in g.values() if v is not None) > 1e-3


def test_steps_that_cannot_be_reformed_take_the_exact_route() -> None:
    model, step = cnn("batch"), Step()
    terms, calls = captured(model, step)
    scaled = [t.with_(logits=1.5 * t.logits) for t in terms]  # not rows of any captured forward
    assert take_group_gradients(model, scaled, GROUP_KEYS, "decoupled", calls).mode == "exact"
    assert take_group_gradients(model, terms, GROUP_KEYS, "decoupled", None).mode == "exact"
    assert take_group_gradients(model, terms, GROUP_KEYS, "exact", calls).mode == "exact"
    with pytest.raises(ValueError, match="'sometimes'"):
        take_group_gradients(model, terms, GROUP_KEYS, "sometimes", calls)


class Scale(nn.Module):
    """A layer the structured plan does not know: its parameter takes the generic route."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(1.0 + 0.1 * torch.randn(width, dtype=D64))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def test_unknown_layers_take_the_generic_route() -> None:
    model, step = mlp("none"), Step()
    width = next(m for m in model.body if isinstance(m, nn.Linear)).out_features
    first = next(i for i, m in enumerate(model.body) if isinstance(m, nn.Linear))
    model.body.insert(first + 1, Scale(width))
    terms, calls = captured(model, step)
    decoupled = decoupled_group_gradients(model, terms, calls)
    exact = group_gradients(model, terms, GROUP_KEYS, with_total=False)
    assert decoupled is not None and max_diff(decoupled, exact) <= 1e-10
    name = f"body.{first + 1}.scale"
    assert all(g[name] is not None for g in decoupled.grads)


def test_realised_split_carries_the_coupling_part() -> None:
    model, step, x_obs = cnn("batch"), Step(), batch(3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    terms, calls = captured(model, step)
    grads = take_group_gradients(model, terms, GROUP_KEYS, "decoupled", calls)
    pred = predict_update(model, opt, terms, x_obs, grads=grads)
    opt.zero_grad()
    sum(t.loss() for t in terms).backward()
    opt.step()
    result = pred.measure(model)
    assert result.param_error() <= 1e-12  # groups + coupling + carry + decay = the actual update
    assert {"part": "group", "term": COUPLING_TERM} in pred.part_meta
    assert {r["grad_mode"] for r in result.to_rows()} == {"decoupled"}


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
@pytest.mark.parametrize("k", [3, 60])  # the stacked-convolution route and the Jacobian route
def test_observation_jacobian_equals_jvp(arch: str, k: int) -> None:
    model, x_obs = model_for(arch, "batch" if arch == "cnn" else "layer"), batch(4)
    params = trainable_params(model)
    directions = [{n: torch.randn_like(p) for n, p in params.items()} for _ in range(k)]
    directions[0] = {n: v for i, (n, v) in enumerate(directions[0].items()) if i % 2}  # missing = zero
    got = ObservationJacobian(model, x_obs, params).apply(directions)
    want = jvp_logits(model, x_obs, directions, params)
    assert got.shape == (k, 4, C) and (got - want).abs().max() <= 1e-10 and want.abs().max() > 1e-2


def test_stack_groups_fills_missing_parts_with_zeros_and_keeps_unreached_names() -> None:
    from lddyn.dynamics.groups import stack_groups

    a, b = torch.randn(2, 3, dtype=D64), torch.randn(4, dtype=D64)
    stacked = stack_groups([{"a": a, "b": None}, {"a": None, "b": b}, {"a": a}], ["a", "b", "c"])
    assert list(stacked) == ["a", "b", "c"] and stacked["c"] is None
    assert torch.equal(stacked["a"], torch.stack([a, torch.zeros_like(a), a]))
    assert torch.equal(stacked["b"], torch.stack([torch.zeros_like(b), b, torch.zeros_like(b)]))
    assert list(stack_groups([{"b": b, "a": None}])) == ["b"]  # default: the names some part has
