"""eNTK implementations against a naive per-sample autograd Jacobian, and against each other.

NT style: every implementation is an oracle for the others; the reference loops over samples and
classes with ``torch.autograd.grad`` in float64, so a wrong contraction, route or mode shows up.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from lddyn.dynamics import NTKImpl, empirical_ntk, entk_fn, explain_ntk
from lddyn.dynamics import contract as ct
from lddyn.dynamics import jacobian as lw
from lddyn.dynamics import structured as st
from lddyn.dynamics.functional import frozen_state, trainable_params
from lddyn.models import build_model

IMPLS = [NTKImpl.JACOBIAN, NTKImpl.STRUCTURED, NTKImpl.AUTO]
SHAPE = (1, 6, 6)


def randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so eval-mode BN is really tested."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)
    return model


def small_model(name: str, norm: str = "batch", dtype: torch.dtype = torch.float64) -> nn.Module:
    model = build_model(name, num_classes=5, image_shape=SHAPE, width=6, norm=norm)
    return randomise_norms(model).to(dtype).eval()


def naive_jacobian(model: nn.Module, x: Tensor) -> Tensor:
    """(N, C, P): one autograd.grad per sample and class, on a batch of one, in eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    rows = []
    for i in range(len(x)):
        z = model(x[i : i + 1])["logits"][0]
        per_class = []
        for c in range(len(z)):
            g = torch.autograd.grad(z[c], params, retain_graph=True, allow_unused=True)
            per_class.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if gi is None else gi).reshape(-1)
                        for gi, p in zip(g, params, strict=True)
                    ]
                )
            )
        rows.append(torch.stack(per_class))
    model.train(was_training)
    return torch.stack(rows)


def naive_ntk(model: nn.Module, x1: Tensor, x2: Tensor) -> Tensor:
    return torch.einsum("icp,jdp->ijcd", naive_jacobian(model, x1), naive_jacobian(model, x2))


def inputs(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(n, *SHAPE, dtype=dtype)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread) -> None:  # noqa: ANN001
    """Tiny kernels run on one thread (conftest.one_thread)."""


CASES = [("mlp", "batch"), ("mlp", "layer"), ("mlp", "none"), ("cnn", "batch")]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "norm"), CASES)
def test_matches_naive_reference_float64(impl: NTKImpl, name: str, norm: str) -> None:
    model = small_model(name, norm)
    x1, x2 = inputs(3), inputs(4)
    ref = naive_ntk(model, x1, x2)
    k = empirical_ntk(model, x1, x2, impl=impl)
    assert k.shape == (3, 4, 5, 5) and k.dtype == torch.float64
    assert (k - ref).abs().max() <= 1e-10
    assert ref.abs().max() > 1e-2  # a non-trivial kernel


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "norm"), [("mlp", "layer"), ("cnn", "batch")])
def test_float32_relative_error(impl: NTKImpl, name: str, norm: str) -> None:
    model64 = small_model(name, norm)
    model32 = copy.deepcopy(model64).float()
    x1, x2 = inputs(3), inputs(5)
    ref = naive_ntk(model64, x1, x2)
    k = empirical_ntk(model32, x1.float(), x2.float(), impl=impl)
    assert k.dtype == torch.float32
    assert (k.double() - ref).abs().max() / ref.abs().max() <= 1e-4


@pytest.mark.parametrize(("name", "norm"), [("mlp", "batch"), ("cnn", "batch"), ("cnn", "layer")])
def test_implementations_agree(name: str, norm: str) -> None:
    model = small_model(name, norm)
    x1, x2 = inputs(5), inputs(7)
    kernels = {impl: empirical_ntk(model, x1, x2, impl=impl) for impl in IMPLS}
    base = kernels[NTKImpl.JACOBIAN]
    for impl, k in kernels.items():
        assert (k - base).abs().max() <= 1e-10 * max(1.0, base.abs().max().item()), impl


@pytest.mark.parametrize("route", ["gram", "jacobian"])
def test_every_structured_route_is_exact(route: str) -> None:
    """Force each weight route on every Conv2d/Linear site; both contractions must match."""
    model = small_model("cnn", "batch")
    x1, x2 = inputs(3), inputs(4)
    params, state = trainable_params(model), frozen_state(model)
    plan = st.build_plan(model, params, state, x1)
    for site in plan.sites:
        site.route = route
    f1 = lw.structured_features(model, plan, params, state, x1)
    f2 = lw.structured_features(model, plan, params, state, x2)
    k = ct.contract(f1, f2, max_elems=64)  # tiny chunks exercise the Gram blocking too
    assert (k - naive_ntk(model, x1, x2)).abs().max() <= 1e-10


def test_factored_layer_jacobian_formed_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wide enough for a factored (LazyJac) conv weight, contracted one x2 sample at a time."""
    model = randomise_norms(build_model("cnn", num_classes=5, image_shape=SHAPE, width=16)).double().eval()
    x1, x2 = inputs(3), inputs(4)
    params, state = trainable_params(model), frozen_state(model)
    plan = st.build_plan(model, params, state, x1)
    for site in plan.sites:
        site.route = "jacobian"
    f1 = lw.structured_features(model, plan, params, state, x1)
    f2 = lw.structured_features(model, plan, params, state, x2)
    assert any(isinstance(b, ct.LazyJac) for b in f2.jac)
    monkeypatch.setattr(ct, "LAZY_CHUNK_ELEMS", 1)
    ref = naive_ntk(model, x1, x2)
    assert (ct.contract(f1, f2, max_elems=1 << 20) - ref).abs().max() <= 1e-10


class ConvZoo(nn.Module):
    """Strided, 1x1 and dilated convolutions, GroupNorm, and a Linear over a token axis."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.c2 = nn.Conv2d(4, 4, 1, bias=False)
        self.c3 = nn.Conv2d(4, 6, 3, dilation=2, padding=2)
        self.tok = nn.Linear(6, 6)  # applied to (N, tokens, 6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 5)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = torch.tanh(self.c3(torch.tanh(self.c2(torch.tanh(self.gn(self.c1(x)))))))
        h = self.ln(torch.tanh(self.tok(h.flatten(2).transpose(1, 2)))).mean(1)
        return {"feat": h, "logits": self.head(h)}


@pytest.mark.parametrize("route", ["gram", "jacobian"])
def test_conv_variants_and_token_linear_are_exact(route: str) -> None:
    model = randomise_norms(ConvZoo()).double()
    x1, x2 = inputs(3), inputs(2)
    params, state = trainable_params(model), frozen_state(model)
    plan = st.build_plan(model, params, state, x1)
    assert not plan.generic
    for site in plan.sites:
        site.route = route
    f1 = lw.structured_features(model, plan, params, state, x1)
    f2 = lw.structured_features(model, plan, params, state, x2)
    ref = naive_ntk(model, x1, x2)
    assert (ct.contract(f1, f2, max_elems=64) - ref).abs().max() <= 1e-10


class Scale(nn.Module):
    """A parametrised layer the structured path does not know: x * a + b per feature."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(d))
        self.b = nn.Parameter(torch.randn(d))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.a + self.b


class OddNet(nn.Module):
    """Known layers plus an unknown one and a shared (twice-called) Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(36, 8)
        self.scale = Scale(8)
        self.shared = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = torch.tanh(self.scale(self.inp(x.flatten(1))))
        h = self.norm(self.shared(torch.tanh(self.shared(h))))
        return {"feat": h, "logits": self.head(h)}


def test_fallback_for_unknown_and_shared_layers_is_exact() -> None:
    model = OddNet().double()
    x1, x2 = inputs(3), inputs(4)
    plan = explain_ntk(model, x1, impl="structured")
    routes = {r.param: r.route for r in plan.routes}
    assert sorted(routes) == sorted(n for n, _ in model.named_parameters())
    assert {n for n, r in routes.items() if r == "generic"} == {
        "scale.a",
        "scale.b",
        "shared.weight",
        "shared.bias",
    }
    assert routes["head.weight"] == "gram" and routes["norm.weight"] == "norm-affine"
    assert "generic" in str(plan)
    ref = naive_ntk(model, x1, x2)
    k = empirical_ntk(model, x1, x2, impl="structured")
    assert (k - ref).abs().max() <= 1e-10


@pytest.mark.parametrize("impl", IMPLS)
def test_buffers_and_mode_untouched_in_train_mode(impl: NTKImpl) -> None:
    model = small_model("cnn", "batch").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    k = empirical_ntk(model, inputs(3), inputs(2), impl=impl)
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(m.training for m in model.modules())
    assert k.shape == (3, 2, 5, 5)


def test_train_mode_kernel_equals_eval_mode_kernel() -> None:
    model = small_model("cnn", "batch")
    x1, x2 = inputs(3), inputs(2)
    k_eval = empirical_ntk(model, x1, x2)
    k_train = empirical_ntk(model.train(), x1, x2)
    assert torch.equal(k_eval, k_train)


@pytest.mark.parametrize("impl", [NTKImpl.JACOBIAN, NTKImpl.STRUCTURED])
def test_chunking_under_a_tiny_budget(impl: NTKImpl) -> None:
    model = small_model("cnn", "batch")
    x1, x2 = inputs(5), inputs(6)
    whole = empirical_ntk(model, x1, x2, impl=impl)
    chunked = empirical_ntk(model, x1, x2, impl=impl, memory_budget_mb=0.05)
    assert (whole - chunked).abs().max() <= 1e-12 * whole.abs().max()


def test_block_plan_respects_budget_and_avoids_rebuilds() -> None:
    assert ct.block_plan(10, 20, 1.0, 1.0, 100.0) == (True, 10, 20)  # everything fits
    x1_outer, co, ci = ct.block_plan(8, 64, 10.0, 10.0, 200.0)
    assert co * 10 + ci * 10 <= 200
    small_whole = co == 8 if x1_outer else ci == 8
    assert small_whole  # the small side is built once, so no sample is built twice
    assert ct.block_plan(4, 4, 1e9, 1e9, 1.0) == (True, 1, 1)


def test_symmetric_psd_and_factory_with_params() -> None:
    model = small_model("mlp", "layer")
    x = inputs(6)
    k = empirical_ntk(model, x)  # x2 = x1
    assert (k - k.permute(1, 0, 3, 2)).abs().max() <= 1e-12
    assert torch.linalg.eigvalsh(k.permute(0, 2, 1, 3).reshape(30, 30)).min() >= -1e-9
    # evaluating at other parameters equals loading them into the model
    params = {n: p.detach() + 0.1 * torch.randn_like(p) for n, p in model.named_parameters()}
    kernel = entk_fn(model, "structured")
    moved = copy.deepcopy(model)
    moved.load_state_dict({**moved.state_dict(), **params})
    assert (kernel(params, x, x) - empirical_ntk(moved, x)).abs().max() <= 1e-10


def test_unknown_impl_is_an_error() -> None:
    with pytest.raises(ValueError, match="not one of"):
        empirical_ntk(small_model("mlp"), inputs(2), impl="fast")
