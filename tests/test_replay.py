"""The decoupled backward replayed on the training graph equals the re-forward route (float64).

The replay walks the step's own autograd graph with BatchNorm's batch statistics held constant; the
re-forward route builds a second graph with constant statistics. Both must give the same group
gradients, the replay must leave the training graph usable, and it must refuse what it cannot
reproduce so the re-forward route takes over.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lddyn.dynamics import decoupled, group_sums, reforward
from lddyn.dynamics.decoupled import decoupled_group_gradients
from lddyn.dynamics.group_sums import PER_SAMPLE_ELEMENTS
from lddyn.dynamics.groups import GroupGradients
from lddyn.dynamics.replay import LayerCall, replay_cotangents
from tests.test_decompose import D64, SHAPE, C, Step, _one_thread
from tests.test_groups_fast import captured, max_diff, model_for

__all__ = ["_one_thread"]


class Residual(nn.Module):
    """Pre-activation residual blocks with in-place ReLUs, a strided shortcut and max pooling."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(SHAPE[0], w, 3, padding=1, bias=False)
        self.bn1, self.conv1 = nn.BatchNorm2d(w), nn.Conv2d(w, w, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(w), nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False)
        self.short = nn.Conv2d(w, 2 * w, 1, stride=2, bias=False)
        self.bn3, self.norm = nn.BatchNorm2d(2 * w, affine=False), nn.GroupNorm(2, 2 * w)
        self.pool, self.head = nn.MaxPool2d(2, ceil_mode=True), nn.Linear(2 * w, C)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.stem(x)
        h = h + self.conv1(torch.relu_(self.bn1(h)))
        o = torch.relu_(self.bn2(h))
        h = self.conv2(o) + self.short(o)
        h = self.pool(torch.relu_(self.norm(self.bn3(h))))
        return {"logits": self.head(h.flatten(1)), "features": h.flatten(1)}


def build(arch: str) -> nn.Module:
    if arch == "residual":
        return Residual().to(D64).train()
    return model_for(*arch.split("-"))


def reforwarded(
    model: nn.Module, terms: list, calls: list, monkeypatch: pytest.MonkeyPatch
) -> GroupGradients:
    with monkeypatch.context() as m:
        m.setattr(decoupled, "_replay", lambda *args: None)
        grads = decoupled_group_gradients(model, terms, calls)
    assert grads is not None
    return grads


@pytest.mark.parametrize("arch", ["cnn-batch", "mlp-batch", "mlp-layer", "mlp-none", "residual"])
def test_replay_equals_the_reforward_route(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, step = build(arch), Step()
    terms, calls = captured(model, step)
    with monkeypatch.context() as m:  # the replay alone: a re-forward would fail the test
        m.setattr(reforward, "_reforward", lambda *args: pytest.fail("re-forwarded"))
        replayed = decoupled_group_gradients(model, terms, calls)
    assert replayed is not None
    ref = reforwarded(model, terms, calls, monkeypatch)
    assert replayed.keys == ref.keys and len(ref.keys) > 3
    assert max_diff(replayed, ref) <= 1e-10
    assert max(float(v.abs().max()) for g in ref.grads for v in g.values() if v is not None) > 1e-3
    assert all(v is None or not v.requires_grad for g in replayed.grads for v in g.values())


@pytest.mark.parametrize("arch", ["cnn-batch", "residual"])
def test_replay_leaves_the_training_graph_and_grads_untouched(arch: str) -> None:
    torch.manual_seed(3)
    model, step = build(arch), Step()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    terms, calls = captured(model, step)
    assert decoupled_group_gradients(model, terms, calls) is not None
    assert all(p.grad is None for p in model.parameters())
    sum(t.loss() for t in terms).backward()
    after = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)  # the same step again, without the replay
    sum(t.loss() for t in step.terms(model)).backward()
    for n, p in model.named_parameters():
        assert torch.equal(after[n], p.grad), n


@pytest.mark.parametrize("limit", [0, 1 << 40])
def test_per_sample_and_per_group_weight_sums_agree(limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both routes of the per-group weight sums (per-sample gradients, one call per group)."""
    model, step = build("residual"), Step()
    terms, calls = captured(model, step)
    default = decoupled_group_gradients(model, terms, calls)
    monkeypatch.setattr(group_sums, "PER_SAMPLE_ELEMENTS", limit)
    forced = decoupled_group_gradients(model, terms, calls)
    assert default is not None and forced is not None and PER_SAMPLE_ELEMENTS > 0
    assert max_diff(default, forced) <= 1e-10


def test_replay_refuses_what_it_cannot_reproduce() -> None:
    lin = nn.Linear(3, 2).to(D64)
    x = torch.randn(4, 3, dtype=D64, requires_grad=True)
    y = lin(x)
    seed = torch.ones_like(y)
    assert replay_cotangents([(y, seed)], [LayerCall(lin, x, y.grad_fn, 0)]) is not None
    mixed = LayerCall(lin, x.float(), y.grad_fn, 0)  # an input of another dtype (autocast)
    assert replay_cotangents([(y, seed)], [mixed]) is None
    twice = [LayerCall(lin, x, y.grad_fn, 0)] * 2  # one node claimed by two layer calls
    assert replay_cotangents([(y, seed)], twice) is None
    other = lin(x.detach())  # a layer call the seeds never reach
    assert replay_cotangents([(y, seed)], [LayerCall(lin, x, other.grad_fn, 0)]) is None


def test_an_unknown_batch_norm_node_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch-norm node of another backend (cuDNN on a GPU) must not be called as it is: its own
    backward routes through the batch statistics. Simulated by renaming the CPU node's type."""
    from lddyn.dynamics import replay
    from lddyn.dynamics.functional import frozen_state, trainable_params
    from lddyn.dynamics.structured import cached_plan

    model, step = build("residual"), Step()
    terms, calls = captured(model, step)
    sites = cached_plan(model, trainable_params(model), frozen_state(model), calls[0].x[:1]).sites
    seeds = [torch.ones(len(c.x), C, dtype=D64) for c in calls]
    assert decoupled._replay(sites, calls, "logits", seeds) is not None
    monkeypatch.setattr(replay, "BATCH_NORM", "CudnnBatchNormBackward0")
    assert decoupled._replay(sites, calls, "logits", seeds) is None
    assert decoupled_group_gradients(model, terms, calls) is not None  # the re-forward route instead


def test_rows_gather_used_rows_sorted_by_group_and_sum_by_group() -> None:
    """Pieces of several batches, unused rows (-1) dropped, a spare zero row after the groups."""
    from lddyn.dynamics.group_sums import Rows, site_group_sums
    from lddyn.dynamics.structured import Site

    groups = [torch.tensor([1, -1, 0, 1]), torch.tensor([2, 0])]
    rows = Rows(groups, 3, torch.device("cpu"), spare=1)
    assert rows.sizes == [2, 2, 1]
    pieces = [torch.arange(4, dtype=D64)[:, None], 10 + torch.arange(2, dtype=D64)[:, None]]
    assert rows.sorted(pieces).flatten().tolist() == [2, 11, 0, 3, 10]  # stable within a group
    lin = nn.Linear(3, 2).to(D64)
    a = [torch.randn(4, 3, dtype=D64), torch.randn(2, 3, dtype=D64)]
    d = [torch.randn(4, 2, dtype=D64), torch.randn(2, 2, dtype=D64)]
    site = Site("lin", lin, "patch", {"weight": "w", "bias": "b"})
    named = {"w": lin.weight, "b": lin.bias}
    for limit in (0, 1 << 40):  # one call per group, and per-sample gradients summed by group
        with pytest.MonkeyPatch.context() as m:
            m.setattr(group_sums, "PER_SAMPLE_ELEMENTS", limit)
            sums = site_group_sums([site], [a], [d], rows, named)
        assert sums["w"].shape == (4, 2, 3) and sums["b"].shape == (4, 2)
        for g in range(3):
            rows_g = [(ak[gk == g], dk[gk == g]) for ak, dk, gk in zip(a, d, groups, strict=True)]
            want_w = sum(dk.T @ ak for ak, dk in rows_g)
            want_b = sum(dk.sum(0) for _, dk in rows_g)
            assert (sums["w"][g] - want_w).abs().max() <= 1e-12
            assert (sums["b"][g] - want_b).abs().max() <= 1e-12
        assert not sums["w"][3].any() and not sums["b"][3].any()


def test_the_decomposition_is_the_same_through_either_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay (coupling written into the groups' spare row) against re-forward (coupling appended)."""
    from lddyn.dynamics.decompose import decompose_step

    torch.manual_seed(5)
    model, step, x_obs = build("cnn-batch"), Step(), torch.randn(3, *SHAPE, dtype=D64)
    terms, calls = captured(model, step)
    replayed = decompose_step(model, terms, x_obs, lr=0.1, mode="decoupled", calls=calls)
    with monkeypatch.context() as m:
        m.setattr(decoupled, "_replay", lambda *args: None)
        ref = decompose_step(model, terms, x_obs, lr=0.1, mode="decoupled", calls=calls)
    assert replayed.kg_coupling is not None and ref.kg_coupling is not None
    assert ref.kg_coupling.abs().max() > 1e-6 and ref.kg.abs().max() > 1e-3
    assert (replayed.kg - ref.kg).abs().max() <= 1e-10
    assert (replayed.kg_coupling - ref.kg_coupling).abs().max() <= 1e-10
    assert (replayed.kg_total - ref.kg_total).abs().max() <= 1e-10
