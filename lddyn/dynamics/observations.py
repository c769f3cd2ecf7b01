"""Observation sets and their Jacobians J_o = ∂z(x_o)/∂θ, one function of θ per set.

An ``ObservationSet`` is a fixed batch of inputs plus the normalisation mode that makes its
forward a function of θ (``norms``: ``running`` or ``own``). ``ObservationJacobian`` forms J_o of
one set once per recorded step, layer by layer from one forward and C backwards
(``layerwise.site_blocks``; exact per-sample ``jacrev`` for parameters of layers the structured
plan does not know), so that any number of parameter-space directions v map to logit pushes
J_o v with one matrix product per parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lddyn.dynamics.contract import LazyJac
from lddyn.dynamics.functional import (
    LogitsReader,
    Params,
    frozen_state,
    logits_fn,
    output_logits,
    trainable_params,
)
from lddyn.dynamics.layerwise import generic_jacobians, site_blocks
from lddyn.dynamics.norms import OBSERVATION_MODES, RUNNING, observing
from lddyn.dynamics.structured import cached_plan


@dataclass(frozen=True)
class ObservationSet:
    """Inputs whose log-probabilities the recorder follows, and the function they are observed by.

    ``norm``: ``running`` (BatchNorm with running statistics, per sample: test images, tracked
    training samples) or ``own`` (each input normalised by its own statistics, buffers untouched:
    baseline images). ``labels`` (-1 = none) and ``index`` (position in its data set) only label
    the rows of the ``observations`` table.
    """

    name: str
    x: Tensor  # (O, ...) inputs as the model takes them
    norm: str = RUNNING
    labels: Tensor | None = None  # (O,)
    index: Tensor | None = None  # (O,)

    def __post_init__(self) -> None:
        if self.norm not in OBSERVATION_MODES:
            raise ValueError(
                f"ObservationSet {self.name!r}: norm={self.norm!r} is not one of {OBSERVATION_MODES}"
            )
        if self.x.dim() < 2 or len(self.x) == 0:
            raise ValueError(
                f"ObservationSet {self.name!r}: x must be a non-empty batch, got shape {tuple(self.x.shape)}"
            )
        for field_name in ("labels", "index"):
            v = getattr(self, field_name)
            if v is not None and len(v) != len(self.x):
                raise ValueError(
                    f"ObservationSet {self.name!r}: {field_name} has {len(v)} entries, x {len(self.x)}"
                )


@torch.no_grad()
def observed_logits(
    model: nn.Module,
    obs: ObservationSet,
    params: Params | None = None,
    state: Params | None = None,
    read: LogitsReader = output_logits,
) -> Tensor:
    """The set's logits (O, C) at explicit parameters and buffers (default: the model's own)."""
    params = trainable_params(model) if params is None else params
    with observing(model, obs.norm):
        return logits_fn(model, state, read)(params, obs.x)


class ObservationJacobian:
    """J_o of one set at the model's current parameters and buffers, per parameter (O·C, numel).

    Build it before the optimiser step; ``apply`` evaluates any directions there afterwards.
    """

    def __init__(self, model: nn.Module, obs: ObservationSet, read: LogitsReader = output_logits) -> None:
        params, state = trainable_params(model), frozen_state(model)
        plan = cached_plan(model, params, state, obs.x)
        logits, blocks, _ = site_blocks(model, plan, params, state, obs.x, obs.norm, read)
        if plan.generic:
            blocks.update(generic_jacobians(model, plan.generic, params, state, obs.x, obs.norm, read))
        self.logits = logits  # (O, C) before the step
        self.o, self.c = logits.shape
        rows = self.o * self.c
        self.blocks = {
            n: (b.full() if isinstance(b, LazyJac) else b).reshape(rows, -1) for n, b in blocks.items()
        }

    def apply(self, directions: dict[str, Tensor], k: int) -> Tensor:
        """J_o v for K directions stacked per parameter ((K, *shape); absent = zero): (K, O, C)."""
        out = self.logits.new_zeros(self.o * self.c, k)
        for name, jac in self.blocks.items():
            v = directions.get(name)
            if v is not None:
                out.addmm_(jac, v.reshape(k, -1).to(jac).T)
        return out.T.reshape(k, self.o, self.c)
