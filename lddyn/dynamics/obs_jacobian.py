"""The observation Jacobian J_o = ∂z(x_o)/∂θ, kept to map many parameter directions at once.

A step's decomposition needs J_o · v for one direction v per group (plus the total and the
coupling). A vmapped JVP pays a forward-mode pass over O observations per direction; forming J_o
once (structured per layer: one forward and C backwards over the O observations, norm layers in
eval mode) and multiplying it by the stacked directions costs one GEMM of (O·C × P) by (P × K),
so adding groups is almost free. J_o is evaluated at the parameters it was built at: build it
before the optimiser step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lddyn.dynamics.contract import LazyJac
from lddyn.dynamics.functional import Params, frozen_state, trainable_params
from lddyn.dynamics.layerwise import generic_jacobians, site_blocks
from lddyn.dynamics.structured import build_plan


class ObservationJacobian:
    """J_o per trainable parameter, (O, C, numel) blocks; ``apply`` maps directions to logit pushes."""

    def __init__(self, model: nn.Module, x_obs: Tensor, params: Params | None = None) -> None:
        params = trainable_params(model) if params is None else params
        state = frozen_state(model)
        plan = build_plan(model, params, state, x_obs)
        for site in plan.sites:
            site.route = "jacobian"
        blocks, _ = site_blocks(model, plan, params, state, x_obs) if plan.sites else ({}, [])
        if plan.generic:
            blocks.update(generic_jacobians(model, plan.generic, params, state, x_obs))
        self.o, self.c = x_obs.shape[0], None
        self.blocks: dict[str, Tensor] = {}
        for name, block in blocks.items():
            full = block.full() if isinstance(block, LazyJac) else block
            self.c = full.shape[1]
            self.blocks[name] = full.reshape(full.shape[0] * full.shape[1], -1)
        self.shapes = {n: p.shape for n, p in params.items()}

    def apply(self, directions: Sequence[dict[str, Tensor | None]]) -> Tensor:
        """J_o · v for each direction v (name -> tensor, missing/None = zero): (K, O, C)."""
        k = len(directions)
        out: Tensor | None = None
        for name, jac in self.blocks.items():
            cols = [d.get(name) for d in directions]
            if all(v is None for v in cols):
                continue
            stacked = torch.stack(
                [jac.new_zeros(jac.shape[1]) if v is None else v.reshape(-1).to(jac) for v in cols], 1
            )  # (numel, K)
            out = jac @ stacked if out is None else out.addmm_(jac, stacked)
        if out is None:
            any_block = next(iter(self.blocks.values()))
            out = any_block.new_zeros(any_block.shape[0], k)
        return out.T.reshape(k, self.o, -1)
