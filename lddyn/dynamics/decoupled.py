"""Group gradients of one step at the cost of about one backward, with BatchNorm coupling split off.

The exact group gradient ∇θ L_g goes through the training forward, where BatchNorm's batch
statistics couple the samples, so it costs one backward per group. The *decoupled* route holds
each BatchNorm's batch mean and variance constant: the forward values are the training forward's,
while each sample's gradient now depends on that sample alone. One backward seeded with the
per-sample logit gradients G then gives every sample's output cotangent at every layer, and each
group's gradient is a per-layer product restricted to the group's samples (Linear: δ_gᵀ a_g;
Conv2d: the weight gradient of the group's rows; norm affine: Σ δ·x̂ and Σ δ), about one
weight-gradient pass for all groups together. Rows are sorted by group, so every group is a
contiguous slice of every layer's input and cotangent.

That backward is replayed on the training graph itself (``replay``), from the layer calls the
capture hooked during the training forward: no second forward. When the graph holds something
the replay does not reproduce exactly (layers this module does not know, autocast, a layer called
twice), the step's batches are re-forwarded instead, all in one forward with each row normalised
by its own batch's statistics, and unknown layers' parameters take a per-group backward on that
decoupled graph (exact, slower).

What remains, ∇θ L − Σ_g ∇θ L_g^dec, is the part of the step that flows through the batch
statistics: the *coupling*, reported as its own group (term ``bn_coupling``). It is zero without
BatchNorm in train mode, where the decoupled groups equal the exact ones.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lddyn.dynamics.functional import frozen_state, trainable_params
from lddyn.dynamics.groups import GROUP_KEYS, GroupGradients, check_keys, group_ids, named_trainable
from lddyn.dynamics.layerwise import _xhat
from lddyn.dynamics.replay import LayerCall, replay_cotangents
from lddyn.dynamics.structured import NORM_AFFINE, Site, cached_plan
from lddyn.losses import LossTerm

#: Layers whose calls the capture records for the replay.
STRUCTURED_KINDS = (nn.Linear, nn.Conv2d, *NORM_AFFINE)
#: Per-sample weight gradients of a layer are formed and summed by group up to this many elements
#: (batch x weight size); larger layers take one weight-gradient call per group.
PER_SAMPLE_ELEMENTS = 1 << 20
#: Relative tolerance for the re-forward reproducing the training logits (else: exact route).
REPRODUCE_RTOL = 1e-4


@dataclass
class ForwardCall:
    """One grad-enabled training forward of the model: its input batch, detached 2-D outputs, the
    same outputs still in the graph, and the structured layers' calls inside it."""

    x: Tensor
    outputs: dict[str, Tensor]
    live: dict[str, Tensor] = field(default_factory=dict)
    layers: list[LayerCall] = field(default_factory=list)


class ForwardCapture:
    """Records the model's grad-enabled forwards (the training batches) while installed.

    Install at ``step_start`` and remove at ``loss_terms``: the calls are then the BatchNorm
    batches the loss terms' logits came from. No-grad forwards (pseudo-labels, probes) are skipped.
    Layers of the structured kinds are hooked too, so the decoupled backward can be replayed on
    the training graph (``replay``) instead of re-forwarding the batches.
    """

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[ForwardCall] = []
        self.layers: list[LayerCall] = []
        self.handles = [model.register_forward_pre_hook(self._start), model.register_forward_hook(self._end)]
        self.handles += [
            m.register_forward_hook(self._layer) for m in model.modules() if isinstance(m, STRUCTURED_KINDS)
        ]

    def _start(self, module: nn.Module, args: tuple) -> None:
        self.layers = []

    def _layer(self, module: nn.Module, args: tuple, out: object) -> None:
        if torch.is_grad_enabled() and args and isinstance(args[0], Tensor) and isinstance(out, Tensor):
            self.layers.append(LayerCall(module, args[0], out.grad_fn, out.output_nr))

    def _end(self, module: nn.Module, args: tuple, out: object) -> None:
        layers, self.layers = self.layers, []
        if not torch.is_grad_enabled() or not args or not isinstance(args[0], Tensor):
            return
        items = out.items() if isinstance(out, dict) else [("logits", out)]
        live = {k: v for k, v in items if isinstance(v, Tensor) and v.dim() == 2}
        self.calls.append(ForwardCall(args[0], {k: v.detach() for k, v in live.items()}, live, layers))

    def remove(self) -> list[ForwardCall]:
        for h in self.handles:
            h.remove()
        return self.calls


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


def _locate(terms: Sequence[LossTerm], calls: Sequence[ForwardCall]) -> tuple[str, list[Tensor]] | None:
    """(output key, per term the (N_t, 2) [call, row] of each sample), matching logits bit for bit."""
    keys = [k for k in calls[0].outputs if all(k in c.outputs for c in calls)] if calls else []
    for key in keys:
        table: dict[bytes, list[tuple[int, int]]] = {}
        for k, call in enumerate(calls):
            for r, row in enumerate(_host(call.outputs[key])):
                table.setdefault(row.tobytes(), []).append((k, r))
        used: set[tuple[int, int]] = set()
        where = []
        for term in terms:
            pos = []
            for row in _host(term.logits):
                free = [p for p in table.get(row.tobytes(), []) if p not in used]
                if not free:
                    break
                used.add(free[0])
                pos.append(free[0])
            if len(pos) != len(term.logits):
                break
            where.append(torch.tensor(pos, dtype=torch.long).reshape(-1, 2))
        else:
            return key, where
    return None


def _host(t: Tensor) -> np.ndarray:
    """Rows as numpy for bitwise matching; half types widen exactly to float32."""
    t = t.detach()
    return (t if t.dtype in (torch.float32, torch.float64) else t.float()).cpu().numpy()


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


def decoupled_group_gradients(
    model: nn.Module,
    terms: Sequence[LossTerm],
    calls: Sequence[ForwardCall],
    by: Sequence[str] = GROUP_KEYS,
) -> GroupGradients | None:
    """Decoupled group gradients (``mode="decoupled"``), or None when the step cannot be re-formed.

    ``calls`` are the step's grad-enabled forwards (``ForwardCapture``). None when a term's logits
    are not rows of those forwards (a method's head on stored features, a transformed logit), when
    two samples share one forward row, or when the re-forward does not reproduce the training
    logits (e.g. dropout): the caller then takes the exact route. ``coupling`` is left unset.
    """
    found = _locate(terms, calls)
    if found is None:
        return None
    key, where = found
    keys, ids = group_ids(terms, by)
    logit_grads = list(
        torch.autograd.grad(
            sum(t.per_sample().sum() for t in terms), [t.logits for t in terms], retain_graph=True
        )
    )
    params, state = trainable_params(model), frozen_state(model)
    plan = cached_plan(model, params, state, calls[0].x[:1])
    gid = [torch.full((len(c.x),), -1, dtype=torch.long) for c in calls]
    seeds = [c.outputs[key].new_zeros(c.outputs[key].shape) for c in calls]
    for w, i, g in zip(where, ids, logit_grads, strict=True):
        for k in range(len(calls)):
            rows = w[w[:, 0] == k, 1]
            gid[k][rows] = i[w[:, 0] == k]
            seeds[k][rows.to(seeds[k].device)] = g[(w[:, 0] == k).to(g.device)].detach()
    active = [k for k in range(len(calls)) if bool((gid[k] >= 0).any())]
    # one forward of every active batch, rows sorted by group (unused rows first): each group's
    # rows are then one contiguous slice of every layer's input and cotangent
    group = torch.cat([gid[k] for k in active])
    order = torch.argsort(group, stable=True)
    group = group[order]
    dev_order = order.to(calls[0].x.device)
    segment = torch.cat([torch.full((len(calls[k].x),), j, dtype=torch.long) for j, k in enumerate(active)])
    seed = torch.cat([seeds[k] for k in active]).index_select(0, dev_order)
    want = torch.cat([calls[k].outputs[key] for k in active]).index_select(0, dev_order)
    named = named_trainable(model)
    replayed = (
        None
        if plan.generic
        else _replay(plan.sites, [calls[k] for k in active], key, [seeds[k] for k in active])
    )
    if replayed is not None:  # the training graph itself, rows then sorted by group
        inputs, cot = ([t.index_select(0, dev_order) for t in ts] for ts in replayed)
        grads = _site_group_sums(plan.sites, inputs, cot, group, len(keys), named)
    else:
        capture = _Capture(plan.sites)
        try:  # batches of different input shapes, or a model that regroups its rows: exact route
            x = torch.cat([calls[k].x for k in active]).index_select(0, dev_order)
            z = _reforward(model, x, segment[order].to(x.device), len(active), capture, key)
        except RuntimeError:
            return None
        used = (group >= 0).to(z.device)
        tol = REPRODUCE_RTOL * (1.0 + float(want.abs().max()))
        if float((z.detach()[used] - want[used]).abs().max()) > tol:
            return None
        deltas = [capture.deltas[s.name] for s in plan.sites]
        cot = torch.autograd.grad(
            (z * seed).sum(), deltas, retain_graph=bool(plan.generic), allow_unused=True
        )
        inputs = [capture.inputs[s.name] for s in plan.sites]
        grads = _site_group_sums(plan.sites, inputs, cot, group, len(keys), named)
    if plan.generic:
        _generic_group_sums(model, plan.generic, z, seed, group, grads)
    sizes = torch.bincount(torch.cat(ids), minlength=len(keys)) if ids else torch.zeros(0, dtype=torch.long)
    return GroupGradients(check_keys(by), keys, ids, grads, logit_grads, sizes, mode="decoupled")


def _replay(
    sites: list[Site], calls: Sequence[ForwardCall], key: str, seeds: Sequence[Tensor]
) -> tuple[list[Tensor], list[Tensor]] | None:
    """Per site, its inputs (x̂ for norms) and output cotangents over the calls' rows in order, by the
    decoupled backward replayed on the training graph; None when the graph does not allow it."""
    layers = []
    for call in calls:
        if key not in call.live:
            return None
        for site in sites:
            found = [lc for lc in call.layers if lc.module is site.module]
            if len(found) != 1 or len(found[0].input) != len(call.x):
                return None
            layers.append(found[0])
    got = replay_cotangents([(c.live[key], s) for c, s in zip(calls, seeds, strict=True)], layers)
    if got is None:
        return None
    n = len(sites)
    inputs = [torch.cat([got[j * n + i][0] for j in range(len(calls))]) for i in range(n)]
    cot = [torch.cat([got[j * n + i][1] for j in range(len(calls))]) for i in range(n)]
    return inputs, cot


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


def _site_group_sums(
    sites: list[Site],
    inputs: Sequence[Tensor],
    cot: Sequence[Tensor | None],
    group: Tensor,
    num_groups: int,
    named: dict[str, nn.Parameter],
) -> list[dict[str, Tensor | None]]:
    """Σ_{b∈g} ∇θ ℓ_b^dec of every structured site's parameters, for every group g.

    Rows are sorted by ``group`` (unused rows, -1, first), so a group is a slice: no copies.
    """
    out: list[dict[str, Tensor | None]] = [dict.fromkeys(named) for _ in range(num_groups)]
    start = int((group < 0).sum())
    sizes = torch.bincount(group[start:], minlength=num_groups).tolist()
    for site, a, d in zip(sites, inputs, cot, strict=True):
        if not site.params or d is None:
            continue
        a, d = a[start:], d[start:]
        if site.kind == "norm":
            sums = _norm_sums(site, a, d, group[start:], num_groups)
        else:
            sums = _patch_sums(site, a, d, sizes, group[start:])
        for role, full in site.params.items():
            for g in range(num_groups):
                out[g][full] = sums[role][g].reshape(named[full].shape)
    return out


def _patch_sums(site: Site, a: Tensor, d: Tensor, sizes: list[int], group: Tensor) -> dict[str, Tensor]:
    """Linear / Conv2d weight and bias gradients per group: per-sample gradients summed by group when
    they are small (a head, a first convolution), else one weight-gradient call per group."""
    m = site.module
    result: dict[str, Tensor] = {}
    if "weight" in site.params and len(a) * m.weight.numel() <= PER_SAMPLE_ELEMENTS:
        result["weight"] = _per_sample_weight_sums(m, a, d, group, len(sizes))
        if "bias" not in site.params:
            return result
    if isinstance(m, nn.Conv2d):
        a_parts, d_parts = a.split(sizes), d.split(sizes)
        if "weight" in site.params and "weight" not in result:
            result["weight"] = torch.stack(
                [
                    torch.nn.grad.conv2d_weight(
                        ai, m.weight.shape, di, m.stride, m.padding, m.dilation, m.groups
                    )
                    if len(ai)
                    else m.weight.new_zeros(m.weight.shape)
                    for ai, di in zip(a_parts, d_parts, strict=True)
                ]
            )
        if "bias" in site.params:
            result["bias"] = torch.stack([di.sum((0, 2, 3)) for di in d_parts])
        return result
    a2, d2 = a.reshape(len(a), -1, a.shape[-1]), d.reshape(len(d), -1, d.shape[-1])
    a_parts, d_parts = a2.split(sizes), d2.split(sizes)
    if "weight" in site.params and "weight" not in result:
        result["weight"] = torch.stack(
            [
                di.reshape(-1, di.shape[-1]).T @ ai.reshape(-1, ai.shape[-1])
                for ai, di in zip(a_parts, d_parts, strict=True)
            ]
        )
    if "bias" in site.params:
        result["bias"] = torch.stack([di.sum((0, 1)) for di in d_parts])
    return result


def _per_sample_weight_sums(m: nn.Module, a: Tensor, d: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """Σ_{b∈g} δ_b ⊗ a_b for every group g from per-sample weight gradients: (G, out, in·k²)."""
    if isinstance(m, nn.Conv2d):
        patches = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # (N, in·k², S)
        per_sample = torch.bmm(d.flatten(2), patches.transpose(1, 2))  # (N, out, in·k²)
    else:
        a2, d2 = a.reshape(len(a), -1, a.shape[-1]), d.reshape(len(d), -1, d.shape[-1])
        per_sample = torch.bmm(d2.transpose(1, 2), a2)  # (N, out, in)
    flat = per_sample.reshape(len(a), -1)
    return flat.new_zeros(num_groups, flat.shape[1]).index_add_(0, group.to(flat.device), flat)


def _norm_sums(site: Site, xhat: Tensor, d: Tensor, group: Tensor, num_groups: int) -> dict[str, Tensor]:
    """Norm affine: per-sample Σ δ·x̂ (weight) and Σ δ (bias) over positions, summed per group."""
    if isinstance(site.module, nn.LayerNorm):
        width = int(torch.Size(site.module.normalized_shape).numel())

        def fold(t: Tensor) -> Tensor:
            return t.reshape(t.shape[0], -1, width).sum(1)
    else:

        def fold(t: Tensor) -> Tensor:
            return t.reshape(t.shape[0], t.shape[1], -1).sum(2)

    result = {}
    for role in site.params:
        per_sample = fold(d * xhat) if role == "weight" else fold(d)
        result[role] = per_sample.new_zeros(num_groups, per_sample.shape[1]).index_add_(
            0, group.to(per_sample.device), per_sample
        )
    return result


def _generic_group_sums(
    model: nn.Module,
    names: list[str],
    logits: Tensor,
    seed: Tensor,
    group: Tensor,
    grads: list[dict[str, Tensor | None]],
) -> None:
    """Parameters outside the structured sites: one backward per group on the decoupled graph."""
    named = named_trainable(model)
    params = [named[n] for n in names]
    for g in range(len(grads)):
        mask = (group == g).to(seed)[:, None]
        gr = torch.autograd.grad((logits * seed * mask).sum(), params, retain_graph=True, allow_unused=True)
        for n, v in zip(names, gr, strict=True):
            grads[g][n] = v
