"""Empirical neural tangent kernel K(x1_i, x2_j) = J_i J_jᵀ over the trainable parameters.

x1 (N1, ...), x2 (N2, ...), C classes: K is (N1, N2, C, C), K[i, j, c, d] = ∂z_c(x1_i)/∂θ ·
∂z_d(x2_j)/∂θ. ``NTKImpl`` picks the implementation (the neural-tangents pattern):
``JACOBIAN``, per-sample ``vmap(jacrev)`` Jacobians contracted per chunk; ``STRUCTURED``, layer by
layer from activations and output cotangents (``structured``, ``jacobian``, ``contract``): per
weight the cheaper of the Gram route and a per-layer Jacobian, unknown layers by ``jacrev``
(``explain_ntk`` shows the routes); ``AUTO``, structured when such layers hold most parameters.
Features are built in chunks of x1 and x2 under ``memory_budget_mb`` (``contract.block_plan``).

.. warning:: The kernel is the one of the model in **eval mode** (dropout off), BatchNorm
   normalising by its *running statistics* (``observations.RUNNING``), whatever the model's mode; no
   buffer is written. A BatchNorm model in train mode normalises by batch statistics, which
   couples samples: the kernel here is not the Jacobian of that train-mode forward.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lddyn.dynamics import jacobian as lw
from lddyn.dynamics import structured as st
from lddyn.dynamics.contract import Features, block_plan, blockwise, contract
from lddyn.dynamics.functional import Params, frozen_state, logits_fn, trainable_params
from lddyn.dynamics.observations import RUNNING, observing

log = logging.getLogger(__name__)

DEFAULT_BUDGET_MB = 1024.0
Kernel = Callable[..., Tensor]


class NTKImpl(str, enum.Enum):
    """eNTK algorithm. All are exact; they differ in time and memory."""

    AUTO = "auto"
    JACOBIAN = "jacobian"
    STRUCTURED = "structured"


def _as_impl(impl: NTKImpl | str) -> NTKImpl:
    try:
        return NTKImpl(impl)
    except ValueError:
        raise ValueError(f"impl={impl!r} is not one of {[i.value for i in NTKImpl]}") from None


def explain_ntk(
    model: nn.Module,
    x: Tensor,
    impl: NTKImpl | str = NTKImpl.AUTO,
    n2: int | None = None,
    params: Params | None = None,
) -> st.NTKPlan:
    """The route of every trainable parameter, for inputs like ``x`` (N1 = len(x), N2 = n2 or N1).

    ``print(explain_ntk(model, x))`` lists parameter, layer type, size and route ("gram",
    "jacobian", "bias", "norm-affine", or "generic" for the exact fallback).
    """
    params = trainable_params(model) if params is None else params
    plan = st.build_plan(model, params, frozen_state(model), x)
    c = _num_classes(model, params, frozen_state(model), x)
    st.choose_routes(plan, model, len(x), n2 or len(x), c)
    chosen = _resolve(_as_impl(impl), plan)
    if chosen is not NTKImpl.STRUCTURED:
        plan.impl = chosen.value
        plan.routes = [st.Route(r.param, r.module, r.layer, chosen.value, r.numel) for r in plan.routes]
    return plan


def _resolve(impl: NTKImpl, plan: st.NTKPlan) -> NTKImpl:
    if impl is not NTKImpl.AUTO:
        return impl
    structured = sum(r.numel for r in plan.routes if r.route != "generic")
    total = sum(r.numel for r in plan.routes)
    return NTKImpl.STRUCTURED if structured * 2 >= total else NTKImpl.JACOBIAN


def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    impl: NTKImpl | str = NTKImpl.AUTO,
    memory_budget_mb: float = DEFAULT_BUDGET_MB,
    params: Params | None = None,
) -> Tensor:
    """eNTK between x1 and x2 (x2 = x1 when omitted): (N1, N2, C, C).

    Evaluated at ``params`` (default: the model's trainable parameters) and the model's current
    buffers, in eval mode with running statistics (see the module warning); the model's
    buffers and modes are left exactly as they were. Work is chunked over N1 and N2 so that the
    per-sample features stay under ``memory_budget_mb`` (the output itself is not counted).
    """
    return entk_fn(model, impl, memory_budget_mb=memory_budget_mb)(params, x1, x2)


def entk_fn(
    model: nn.Module,
    impl: NTKImpl | str = NTKImpl.AUTO,
    *,
    memory_budget_mb: float = DEFAULT_BUDGET_MB,
) -> Kernel:
    """Factory form: ``kernel(params, x1, x2=None) -> Tensor`` for a fixed model and algorithm.

    ``params`` is a dict name -> tensor of the trainable parameters, or None for the current ones.
    """
    impl = _as_impl(impl)
    budget = memory_budget_mb * 2**20

    def kernel(params: Params | None, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        params = trainable_params(model) if params is None else {n: p.detach() for n, p in params.items()}
        state = frozen_state(model)
        chosen, plan = impl, None
        if impl in (NTKImpl.AUTO, NTKImpl.STRUCTURED):
            plan = st.build_plan(model, params, state, x1)
            chosen = _resolve(impl, plan)
        return _featurewise(
            model, plan if chosen is NTKImpl.STRUCTURED else None, params, state, x1, x2, budget
        )

    return kernel


def _num_classes(model: nn.Module, params: Params, state: Params, x: Tensor) -> int:
    with torch.no_grad(), observing(model, RUNNING):
        return logits_fn(model, state)(params, x[:1]).shape[-1]


def _featurewise(
    model: nn.Module,
    plan: st.NTKPlan | None,
    params: Params,
    state: Params,
    x1: Tensor,
    x2: Tensor | None,
    budget: float,
) -> Tensor:
    """JACOBIAN (plan None) or STRUCTURED: per-chunk features, contracted block by block."""
    same, x2 = x2 is None, x1 if x2 is None else x2
    c = _num_classes(model, params, state, x1)
    item = next(iter(params.values())).element_size()
    if plan is None:
        names = list(params)
        per = 3.0 * item * c * sum(p.numel() for p in params.values())

        def feats(x: Tensor) -> Features:
            jac = lw.generic_jacobians(model, names, params, state, x)
            return Features([jac[n] for n in names])
    else:
        st.choose_routes(plan, model, len(x1), len(x2), c)
        if plan.generic:
            log.info("eNTK structured: generic (exact jacrev) route for %s", ", ".join(plan.generic))
        log.debug("%s", plan)
        per = st.bytes_per_sample(plan, params, c, item)

        def feats(x: Tensor) -> Features:
            return lw.structured_features(model, plan, params, state, x)

    order = block_plan(len(x1), len(x2), per, per, budget)
    max_elems = int(budget / 4 / item)
    return blockwise(
        len(x1),
        len(x2),
        lambda s: feats(x1[s]),
        lambda s: feats(x2[s]),
        lambda f1, f2: contract(f1, f2, max_elems),
        order,
        same,
    )
