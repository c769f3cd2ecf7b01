"""Functional evaluation of a model at explicit parameters and buffers, never touching its state.

Every dynamics quantity is evaluated at *observation points* with normalisation layers in eval
mode: BatchNorm uses its running statistics, so samples do not interact and the buffers are not
updated. Shapes: N samples, C classes, P trainable parameters (a dict name -> tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

Params = dict[str, Tensor]
LogitsFn = Callable[[Params, Tensor], Tensor]

#: Layers whose train mode couples samples through batch statistics and updates running buffers.
RUNNING_STAT_NORMS = (_BatchNorm, _InstanceNorm)


def trainable_params(model: nn.Module) -> Params:
    """The trainable parameters (``requires_grad``), detached: the coordinates of J = dz/dθ."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def frozen_state(model: nn.Module) -> Params:
    """Buffers plus non-trainable parameters: held constant in every functional evaluation."""
    state = {n: b for n, b in model.named_buffers()}
    state.update({n: p.detach() for n, p in model.named_parameters() if not p.requires_grad})
    return state


def clone_state(tensors: Params) -> Params:
    return {n: t.detach().clone() for n, t in tensors.items()}


@contextmanager
def norm_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Put running-statistics normalisation layers in eval mode for the block, then restore.

    Only BatchNorm/InstanceNorm change mode: other layers keep the model's mode. In eval mode
    these layers normalise with their running statistics (a per-sample affine map) and never
    update their buffers, so per-sample Jacobians are well defined.
    """
    changed = [m for m in model.modules() if isinstance(m, RUNNING_STAT_NORMS) and m.training]
    for m in changed:
        m.eval()
    try:
        yield model
    finally:
        for m in changed:
            m.train()


def output_logits(out: object) -> Tensor:
    """Logits from a model output: lddyn models return ``{"feat", "logits"}``, others a tensor."""
    return out["logits"] if isinstance(out, dict) else out  # type: ignore[return-value]


def logits_fn(model: nn.Module, state: Params | None = None) -> LogitsFn:
    """``f(params, x) -> logits (N, C)`` through ``functional_call``; call it inside ``norm_eval``."""
    state = frozen_state(model) if state is None else state

    def f(params: Params, x: Tensor) -> Tensor:
        return output_logits(functional_call(model, (params, state), (x,)))

    return f


@torch.no_grad()
def eval_logits(
    model: nn.Module, x: Tensor, params: Params | None = None, state: Params | None = None
) -> Tensor:
    """Observation logits (N, C) at explicit parameters/buffers, norm layers in eval mode."""
    params = trainable_params(model) if params is None else params
    with norm_eval(model):
        return logits_fn(model, state)(params, x)


def sensitivity(v: Tensor, probs: Tensor) -> Tensor:
    """Apply T(x) = I − 1·πᵀ to logit-space vectors: d log π = T dz.  v (..., O, C), probs (O, C)."""
    return v - (v * probs).sum(-1, keepdim=True)


def jvp_logits(
    model: nn.Module,
    x: Tensor,
    tangents: list[Params],
    params: Params | None = None,
    state: Params | None = None,
    chunk: int = 64,
) -> Tensor:
    """J_x · t for each parameter-space tangent t: returns (K, N, C) for K tangents.

    One forward-mode pass per chunk of tangents (vmapped), evaluated at ``params`` with norm
    layers in eval mode; buffers are read, never written. Missing tangent entries count as zero.
    """
    params = trainable_params(model) if params is None else params
    f = logits_fn(model, state)
    full = [{n: t.get(n, torch.zeros_like(p)).to(p) for n, p in params.items()} for t in tangents]

    def one(t: Params) -> Tensor:
        return jvp(lambda p: f(p, x), (params,), (t,))[1]

    out = []
    with norm_eval(model):
        for i in range(0, len(full), chunk):
            block = full[i : i + chunk]
            stacked = {n: torch.stack([t[n] for t in block]) for n in params}
            out.append(vmap(one)(stacked) if len(block) > 1 else one(block[0])[None])
    return torch.cat(out) if out else x.new_zeros(0, x.shape[0], 0)
