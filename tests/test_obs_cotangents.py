"""Per-class output cotangents of the observation Jacobian: the vmapped backward and its C-backward
fallback give the same tensors as one autograd call per (observation, class), in float64."""

from __future__ import annotations

import pytest
import torch

from lddyn.dynamics import obs_jacobian
from lddyn.dynamics.obs_jacobian import class_cotangents


def small_graph() -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    x = torch.randn(5, 7, dtype=torch.float64)
    w1, w2 = torch.randn(7, 6, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    h = (x @ w1).requires_grad_()  # an "output" site
    y = torch.tanh(h)
    z = y @ w2
    return z, [h]


def reference(logits: torch.Tensor, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """[i, k] = ∂z_ik / ∂y_i (samples are independent), one autograd call per entry."""
    o, c = logits.shape
    rows = []
    for i in range(o):
        per_class = []
        for k in range(c):
            (g,) = torch.autograd.grad(logits[i, k], outputs, retain_graph=True)
            per_class.append(g[i])
        rows.append(torch.stack(per_class))
    return [torch.stack(rows)]


@pytest.mark.parametrize("batched", [True, False])
def test_class_cotangents_match_per_entry_gradients(batched: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    z, outs = small_graph()
    want = reference(z, outs)
    if not batched:  # an op without a batching rule: the C-backward route must give the same
        real = torch.autograd.grad

        def no_vmap(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if kwargs.get("is_grads_batched"):
                raise RuntimeError("no batching rule")
            return real(*args, **kwargs)

        monkeypatch.setattr(obs_jacobian.torch.autograd, "grad", no_vmap)
    got = class_cotangents(z, outs)
    assert got[0].shape == (5, 4, 6)  # (O, C, *output shape without the batch)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)


def test_only_the_convolution_before_global_pooling_has_rank_one_cotangents() -> None:
    """The digits CNN: conv -> conv -> pool -> conv -> BN -> ReLU -> global pool -> linear. Only the
    last convolution's class cotangents factor per channel; the factored push equals the JVP."""
    from lddyn.dynamics.functional import jvp_logits, trainable_params
    from lddyn.models import build_model

    torch.manual_seed(1)
    model = build_model("cnn", num_classes=4, image_shape=(1, 8, 8), width=3).double().train()
    with torch.no_grad():  # non-trivial running statistics for the eval-mode observations
        model(torch.randn(16, 1, 8, 8, dtype=torch.float64))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    jac = obs_jacobian.ObservationJacobian(model, x)
    convs = [s.name for s in jac.sites if isinstance(s.module, torch.nn.Conv2d)]
    factored = [s.name for s, f in zip(jac.sites, jac.factors, strict=True) if f is not None]
    assert factored == convs[-1:] and len(convs) == 3
    params = trainable_params(model)
    directions = [{n: torch.randn_like(p) for n, p in params.items()} for _ in range(5)]
    want = jvp_logits(model, x, directions, params)
    assert (jac.apply(directions) - want).abs().max() <= 1e-10 and want.abs().max() > 1e-2
