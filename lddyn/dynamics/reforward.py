"""The decoupled backward's fallback route: re-forward the step's batches with constant statistics.

Used when the training graph cannot be replayed (``replay``): layers lddyn does not know,
autocast, a layer called twice per forward. All the step's batches go through one forward with
their rows sorted by group, each BatchNorm normalising every row by its own batch's statistics
held constant, so the forward values reproduce the training ones (checked) while each sample's
gradient depends on that sample alone. One backward then gives every site's cotangents, and
parameters of unknown layers take one backward per group on this graph (exact, slower).
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lddyn.dynamics.group_sums import Rows, site_group_sums
from lddyn.dynamics.groups import stack_groups
from lddyn.dynamics.layerwise import _xhat
from lddyn.dynamics.structured import NTKPlan, Site

#: Relative tolerance for the re-forward reproducing the training logits (else: exact route).
REPRODUCE_RTOL = 1e-4
Grads = dict[str, Tensor | None]  # parameter name -> (num_groups, *shape) or None


def reforward_group_sums(
    model: nn.Module,
    plan: NTKPlan,
    batches: Sequence[Tensor],
    outputs: Sequence[Tensor],
    seeds: Sequence[Tensor],
    key: str,
    order: Tensor,
    group: Tensor,
    num_groups: int,
    named: dict[str, nn.Parameter],
) -> Grads | None:
    """Decoupled group gradients of every trainable parameter by one re-forward of ``batches``.

    ``outputs``: the training logits (output ``key``) of each batch, to check the re-forward
    reproduces them; ``seeds``: their logit gradients; ``order`` sorts the concatenated rows by
    ``group`` (already sorted). None when the re-forward fails or does not reproduce the training logits.
    """
    device = batches[0].device
    dev_order = order.to(device)
    segment = torch.cat([torch.full((len(x),), j, dtype=torch.long) for j, x in enumerate(batches)])
    seed = torch.cat(list(seeds)).index_select(0, dev_order)
    want = torch.cat(list(outputs)).index_select(0, dev_order)
    capture = _Capture(plan.sites)
    try:  # batches of different input shapes, or a model that regroups its rows
        x = torch.cat(list(batches)).index_select(0, dev_order)
        z = _reforward(model, x, segment[order].to(device), len(batches), capture, key)
    except RuntimeError:
        return None
    used = (group >= 0).to(z.device)
    tol = REPRODUCE_RTOL * (1.0 + float(want.abs().max()))
    if float((z.detach()[used] - want[used]).abs().max()) > tol:
        return None
    deltas = [capture.deltas[s.name] for s in plan.sites]
    cot = torch.autograd.grad((z * seed).sum(), deltas, retain_graph=bool(plan.generic), allow_unused=True)
    inputs = [[capture.inputs[s.name]] for s in plan.sites]
    rows = Rows([group], num_groups, device)
    grads = site_group_sums(plan.sites, inputs, [None if d is None else [d] for d in cot], rows, named)
    if plan.generic:
        _generic_group_sums(named, plan.generic, z, seed, group, num_groups, grads)
    return grads


@contextmanager
def batch_stats_as_constants(model: nn.Module, segment: Tensor, num_segments: int) -> Iterator[dict]:
    """BatchNorm layers normalise each segment of rows by that segment's statistics, held constant.

    ``segment`` (N,) names the training batch each row of the forward came from, so one forward
    of all the step's batches reproduces every batch's normalisation. Buffers are never written.
    Yields a dict that receives, per patched layer, x̂ of its latest call (what its affine
    parameters multiply).
    """
    xhat_of: dict[nn.Module, Tensor] = {}
    counts = torch.bincount(segment, minlength=num_segments)

    def forward(self: _BatchNorm, x: Tensor) -> Tensor:
        n, ch = x.shape[0], x.shape[1]
        view = (n, ch) + (1,) * (x.dim() - 2)
        with torch.no_grad():  # two-pass statistics per segment, as constants
            flat = x.detach().reshape(n, ch, -1)
            per_pos = (counts * flat.shape[2]).to(x.dtype)[:, None]
            mean = x.new_zeros(num_segments, ch).index_add_(0, segment, flat.sum(2)) / per_pos
            centered = flat - mean[segment][:, :, None]
            var = x.new_zeros(num_segments, ch).index_add_(0, segment, (centered * centered).sum(2)) / per_pos
            scale = torch.rsqrt(var + self.eps)[segment]
            xhat_of[self] = (centered * scale[:, :, None]).view(x.shape)
        out = (x - mean[segment].view(view)) * scale.view(view)
        shape = (1, ch) + (1,) * (x.dim() - 2)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out

    patched = [
        m for m in model.modules() if isinstance(m, _BatchNorm) and (m.training or m.running_mean is None)
    ]
    for m in patched:
        m.forward = types.MethodType(forward, m)  # type: ignore[method-assign]
    try:
        yield xhat_of
    finally:
        for m in patched:
            del m.forward


class _Capture:
    """Per site: the input (or x̂ of a norm layer) and a zero delta on the output, of one forward."""

    def __init__(self, sites: list[Site]) -> None:
        self.sites = sites
        self.xhat: dict[nn.Module, Tensor] = {}  # filled by ``batch_stats_as_constants``
        self.inputs: dict[str, Tensor] = {}
        self.deltas: dict[str, Tensor] = {}

    def hook(self, site: Site):  # noqa: ANN201
        def fn(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
            a = args[0].detach()
            if site.kind == "norm":
                a = self.xhat.pop(mod) if mod in self.xhat else _xhat(mod, a)
            self.inputs[site.name] = a
            self.deltas[site.name] = torch.zeros_like(out, requires_grad=True)
            return out + self.deltas[site.name]

        return fn


def _reforward(
    model: nn.Module, x: Tensor, segment: Tensor, num_segments: int, capture: _Capture, key: str
) -> Tensor:
    """All rows through the model in one forward, each segment with its own constant statistics.

    Buffers are never written (the patched BatchNorm is a pure function; writing them would also
    break the live training graph, which saved them for its backward).
    """
    handles = [s.module.register_forward_hook(capture.hook(s)) for s in capture.sites]
    try:
        with torch.enable_grad(), batch_stats_as_constants(model, segment, num_segments) as xhat:
            capture.xhat = xhat
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out[key] if isinstance(out, dict) else out


def _generic_group_sums(
    named: dict[str, nn.Parameter],
    names: list[str],
    logits: Tensor,
    seed: Tensor,
    group: Tensor,
    num_groups: int,
    grads: Grads,
) -> None:
    """Parameters outside the structured sites: one backward per group on the decoupled graph."""
    params = [named[n] for n in names]
    per_group = []
    for g in range(num_groups):
        mask = (group == g).to(seed)[:, None]
        gr = torch.autograd.grad((logits * seed * mask).sum(), params, retain_graph=True, allow_unused=True)
        per_group.append(dict(zip(names, gr, strict=True)))
    grads.update(stack_groups(per_group, names))
