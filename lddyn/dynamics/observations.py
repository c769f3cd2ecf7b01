"""Observation sets and their Jacobians J_o = ∂z(x_o)/∂θ, one function of θ per set.

An ``ObservationSet`` is a fixed batch of inputs plus the normalisation mode that makes its
forward a function of θ (``norms``: ``running`` or ``own``). ``ObservationJacobian`` forms J_o of
one set once per recorded step, layer by layer from one forward and C backwards
(``layerwise.site_blocks``; exact per-sample ``jacrev`` for parameters of layers the structured
plan does not know), so that any number of parameter-space directions v map to logit pushes
J_o v with one matrix product per parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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
from lddyn.dynamics.norms import OBSERVATION_MODES, RUNNING, Mode, observing
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


def joint_mode(sets: Sequence[ObservationSet]) -> Mode:
    """The normalisation of the sets' inputs concatenated: one name, or the sets' runs of rows."""
    norms = {s.norm for s in sets}
    return norms.pop() if len(norms) == 1 else tuple((s.norm, len(s.x)) for s in sets)


@torch.no_grad()
def observed_logits(
    model: nn.Module,
    sets: ObservationSet | Sequence[ObservationSet],
    params: Params | None = None,
    state: Params | None = None,
    read: LogitsReader = output_logits,
) -> Tensor:
    """The sets' logits (O, C), inputs concatenated, at explicit parameters and buffers (default:
    the model's own)."""
    sets = [sets] if isinstance(sets, ObservationSet) else list(sets)
    params = trainable_params(model) if params is None else params
    with observing(model, joint_mode(sets)):
        return logits_fn(model, state, read)(params, torch.cat([s.x for s in sets]))


class ObservationJacobian:
    """J_o of observation sets at the model's current parameters and buffers, per parameter.

    All sets go through one forward, each row in its set's mode, and C backwards. A layer's block
    is kept as (O·C, numel) rows, or, when its class cotangents factor per output channel,
    g_c[ch, s] = u_c[ch] m[ch, s] (a layer that reaches the logits only through per-channel maps,
    global pooling and the head: the last convolution of a CNN), as the factors u (O, C, out) and
    A = Σ_s m[·, s] ⊗ patch[s] (O, out, in·k²), which makes J_o v a per-channel product instead
    of C rows per observation. Build it before the optimiser step; ``apply`` evaluates any
    directions there afterwards.
    """

    def __init__(
        self, model: nn.Module, sets: list[ObservationSet], read: LogitsReader = output_logits
    ) -> None:
        params, state = trainable_params(model), frozen_state(model)
        x, mode = torch.cat([s.x for s in sets]), joint_mode(sets)
        plan = cached_plan(model, params, state, x)
        logits, blocks, _ = site_blocks(model, plan, params, state, x, mode, read)
        if plan.generic:
            blocks.update(generic_jacobians(model, plan.generic, params, state, x, mode, read))
        self.logits = logits  # (O, C) before the step
        self.o, self.c = logits.shape
        self.dense: dict[str, Tensor] = {}  # name -> (O·C, numel)
        self.factored: dict[str, tuple[Tensor, Tensor]] = {}  # name -> (u (O, C, out), A (O, out, in·k²))
        for name, b in blocks.items():
            factors = _channel_factors(b) if isinstance(b, LazyJac) else None
            if factors is not None:
                self.factored[name] = factors
            else:
                self.dense[name] = (b.full() if isinstance(b, LazyJac) else b).reshape(self.o * self.c, -1)

    def apply(self, blocks: Sequence[dict[str, Tensor]]) -> Tensor:
        """J_o v for blocks of directions, each parameter -> (K_i, *shape) (absent = zero):
        (Σ K_i, O, C), the blocks' rows in order."""
        sizes = [next(iter(b.values())).shape[0] if b else 0 for b in blocks]
        out = self.logits.new_zeros(sum(sizes), self.o, self.c)
        flat = out.view(len(out), -1)
        for block, lo, k in zip(blocks, np.cumsum([0, *sizes[:-1]]), sizes, strict=True):
            rows = slice(int(lo), int(lo) + k)
            for name, v in block.items():
                if name in self.dense:  # (K, numel) x (numel, O·C), into contiguous rows
                    flat[rows].addmm_(v.reshape(k, -1).to(flat), self.dense[name].T)
                elif name in self.factored:
                    u, a = self.factored[name]
                    per_channel = torch.einsum("oxj,kxj->okx", a, v.reshape(k, a.shape[1], -1).to(a))
                    out[rows] += torch.einsum("ocx,okx->koc", u, per_channel)
        return out


#: A factor is accepted when the rank-one residual is within this many rounding errors of max |g|.
RANK_ONE_ULPS = 64


def _channel_factors(jac: LazyJac) -> tuple[Tensor, Tensor] | None:
    """(u, A) when g (O, C, out, S) = u ⊗ m per (observation, channel) to rounding, else None."""
    g, patches = jac.g, jac.p  # (O, C, out, S), (O, S, in·k²)
    o, c, units, positions = g.shape
    pick = g.square().sum(3).argmax(1, keepdim=True)  # per (observation, channel) the largest class
    mode = g.gather(1, pick[..., None].expand(o, 1, units, positions))  # (O, 1, out, S)
    norm = mode.square().sum(3)
    u = (g * mode).sum(3) / torch.where(norm > 0, norm, torch.ones_like(norm))
    tol = RANK_ONE_ULPS * torch.finfo(g.dtype).eps * float(g.abs().max())
    if float((g - u[..., None] * mode).abs().max()) > tol:
        return None
    return u, torch.bmm(mode[:, 0], patches)
