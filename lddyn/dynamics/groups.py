"""Split a step's gradient into groups of samples: ∇θ L = Σ_g ∇θ L_g (+ the BatchNorm coupling).

A group is the set of samples sharing the selected keys (the term's name, per-sample columns);
the groups partition the samples. *Decoupled* group gradients hold BatchNorm's batch statistics at
the batch's values, so one backward seeded with the per-sample logit gradients G gives every
layer's output cotangent (``capture``), and a group's gradient is, per layer, a sum over its own
rows (Linear δ_gᵀ a_g, Conv2d the weight gradient of its rows, norm affine Σ δ·x̂ and Σ δ). The
rest, ∇θ L − Σ_g ∇θ L_g, is the coupling. Other layers, and terms whose logits are not rows of a
captured forward, take one backward per group (``group_backward``: also the *exact* route).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from lddyn.dynamics.capture import ForwardCall, LayerCall, Switch
from lddyn.dynamics.observations import fold, xhat
from lddyn.dynamics.structured import structured_kind

COUPLING_TERM = "bn_coupling"
EXACT, DECOUPLED = "exact", "decoupled"


@dataclass
class Term:
    """One registered loss term: per-sample losses of ``logits`` and the samples' columns."""

    name: str
    logits: Tensor  # (N, C) from the training forward
    losses: Tensor  # (N,) summing to the term's share of the loss
    columns: dict[str, np.ndarray]  # per-sample grouping values
    G: Tensor  # (N, C) ∂(Σ losses)/∂logits, from autograd
    inputs: Tensor | None = None
    seen: list[Tensor] = field(default_factory=list)  # ∂L/∂logits as the trained loss delivered it


def group_ids(terms: Sequence[Term], by: Sequence[str]) -> tuple[list[tuple], list[Tensor]]:
    """(sorted group keys, per term the (N_t,) group of each sample)."""
    rows = []
    for t in terms:
        cols = [np.full(len(t.G), t.name, dtype=object) if k == "term" else t.columns.get(k) for k in by]
        cols = [np.full(len(t.G), None, dtype=object) if c is None else c for c in cols]
        rows.append(
            [tuple(v.item() if hasattr(v, "item") else v for v in r) for r in zip(*cols, strict=True)]
        )
    if not by:
        rows = [[()] * len(t.G) for t in terms]
    keys = sorted(
        {k for r in rows for k in r}, key=lambda k: tuple((v is None, v if v is not None else 0) for v in k)
    )
    index = {k: i for i, k in enumerate(keys)}
    return keys, [torch.tensor([index[k] for k in r], dtype=torch.long) for r in rows]


def locate(logits: Tensor, calls: Sequence[ForwardCall]) -> list[tuple[int, Tensor, Tensor]] | None:
    """Where each row of ``logits`` was computed: [(call, term rows, call rows)], or None.

    Seeds the rows with their own numbers and reads the gradient at the forwards' outputs: a
    selection of rows (cat, split, indexing, adding a constant) delivers each number intact to
    one output row, anything else does not (low-precision dtypes take passes of smaller digits).
    """
    outs = [(k, o) for k, c in enumerate(calls) for o in c.outputs]
    n = len(logits)
    if not outs or n == 0:
        return None
    base = int(1 / torch.finfo(logits.dtype).eps)
    ids = [torch.zeros(len(o), dtype=torch.long, device=o.device) for _, o in outs]
    hit = [torch.zeros(len(o), dtype=torch.bool, device=o.device) for _, o in outs]
    code, scale = torch.arange(n, device=logits.device), 1
    while True:
        digit = ((code // scale) % base + 1).to(logits.dtype)[:, None].expand_as(logits)
        grads = torch.autograd.grad(logits, [o for _, o in outs], digit, retain_graph=True, allow_unused=True)
        for j, g in enumerate(grads):
            if g is None:
                continue
            col = g[:, 0]
            if not (torch.equal(g, col[:, None].expand_as(g)) and torch.equal(col, col.round())):
                return None
            if not bool(((col >= 0) & (col <= base)).all()):
                return None
            hit[j] |= col > 0
            ids[j] += (col.long() - 1).clamp(min=0) * scale
        scale *= base
        if scale >= n:
            break
    found = torch.cat([i[h] for i, h in zip(ids, hit, strict=True)]).cpu()
    if len(found) != n or not torch.equal(found.sort().values, torch.arange(n)):
        return None
    return [
        (outs[j][0], ids[j][hit[j]].cpu(), torch.nonzero(hit[j]).flatten().cpu())
        for j in range(len(outs))
        if hit[j].any()
    ]


def row_groups(
    terms: Sequence[Term], ids: Sequence[Tensor], calls: Sequence[ForwardCall]
) -> tuple[list[Tensor], list[bool]]:
    """Per captured forward the group of each of its rows (-1: no term), and which terms were located."""
    per_call = [torch.full((c.rows,), -1, dtype=torch.long) for c in calls]
    mapped = []
    for term, gid in zip(terms, ids, strict=True):
        where = locate(term.logits, calls)
        free = where is not None and all(bool((per_call[k][r] < 0).all()) for k, _, r in where)
        for k, t_rows, c_rows in where if free else []:
            per_call[k][c_rows] = gid[t_rows]
        mapped.append(free)
    return per_call, mapped


def decoupled_sums(
    terms: Sequence[Term],
    ids: Sequence[Tensor],
    num_groups: int,
    calls: Sequence[ForwardCall],
    switch: Switch,
    named: dict[str, nn.Parameter],
) -> dict[str, Tensor]:
    """Σ_{b∈g} ∇θ ℓ_b^dec per parameter, stacked (G + 1, *shape) with a spare last row (the
    coupling's), from one decoupled backward and per-layer sums; ``group_backward`` takes the
    terms not located in the forwards, and the layers the sums do not know (or called twice)."""
    per_call, mapped = row_groups(terms, ids, calls)
    used = [k for k in range(len(calls)) if bool((per_call[k] >= 0).any())]
    bottom = list({id(p): p for k in used for p in calls[k].bottom}.values())
    mapped = [m and bool(bottom) for m in mapped]  # nowhere to stop the pass: per-group backwards
    live = [t for t, m in zip(terms, mapped, strict=True) if m]
    stacked: dict[str, Tensor] = {}
    if live:
        switch.decoupled = True
        try:  # the layers' hooks keep their cotangents; the pass stops at the first layers' weights
            torch.autograd.grad([t.logits for t in live], bottom, [t.G for t in live], retain_graph=True)
        finally:
            switch.decoupled = False
        by_module: dict[nn.Module, list] = {}
        for k in used:
            for lc in calls[k].layers:
                by_module.setdefault(lc.module, []).append((k, lc, lc.cotangent))
        names = {id(p): n for n, p in named.items()}
        for module, pieces in by_module.items():
            own = {r: names[id(p)] for r, p in module.named_parameters(recurse=False) if id(p) in names}
            if not _summable(module, pieces, calls):
                continue
            rows = [(lc, d, per_call[k].to(d.device)) for k, lc, d in pieces]
            for role, value in _layer_sums(module, rows, num_groups + 1).items():
                if role in own:
                    stacked[own[role]] = value.reshape(num_groups + 1, *named[own[role]].shape)
    rest = {n: p for n, p in named.items() if n not in stacked}
    stacked.update({n: p.new_zeros(num_groups + 1, *p.shape) for n, p in rest.items()})
    pairs = [[(t, i) for t, i, m in zip(terms, ids, mapped, strict=True) if m is on] for on in (False, True)]
    for chosen, params in zip(pairs, (named, rest), strict=True):  # terms not located: every parameter
        if chosen and params:
            for n, g in group_backward(*zip(*chosen, strict=True), num_groups, params, switch, True).items():
                stacked[n] += g
    return stacked


def _summable(module: nn.Module, pieces: list, calls: Sequence[ForwardCall]) -> bool:
    """One call per forward, batch rows preserved, a cotangent, a kind the sums know."""
    ks = [k for k, _, _ in pieces]
    ok_rows = all(len(lc.input) == calls[k].rows for k, lc, _ in pieces)
    return (
        structured_kind(module) is not None
        and len(set(ks)) == len(ks)
        and ok_rows
        and all(d is not None for _, _, d in pieces)
    )


#: Per-sample weight gradients of a layer are formed and summed by group up to this many elements
#: (rows x weight size: a first convolution, a head); larger layers take one call per group.
PER_SAMPLE_ELEMENTS = 1 << 20


def _layer_sums(m: nn.Module, rows: list[tuple[LayerCall, Tensor, Tensor]], size: int) -> dict[str, Tensor]:
    """Per-group parameter gradients of one layer: role -> (size, *) sums over each group's rows.

    ``rows``: per captured call, (the call, the output cotangent, each row's group, -1 = none)."""
    if structured_kind(m) == "norm":
        xh = [(xhat(m, lc.input, lc.mode, lc.stats), d, g) for lc, d, g in rows]
        return {
            "weight": _index_sum([(fold(m, d * x), g) for x, d, g in xh], size),
            "bias": _index_sum([(fold(m, d), g) for _, d, g in xh], size),
        }
    conv = isinstance(m, nn.Conv2d)
    pieces = [(lc.input, d, g) for lc, d, g in rows]
    if sum(len(g) for _, _, g in pieces) * m.weight.numel() <= PER_SAMPLE_ELEMENTS:
        weight = _index_sum([(_per_sample_weight(m, a, d), g) for a, d, g in pieces], size)
    else:
        weight = _per_group_weight(m, pieces, size)
    out = {"weight": weight.view(size, *m.weight.shape)}
    if m.bias is not None:
        dims = tuple(range(2, rows[0][1].dim())) if conv else tuple(range(1, rows[0][1].dim() - 1))
        out["bias"] = _index_sum([(d.sum(dims) if dims else d, g) for _, d, g in pieces], size)
    return out


def _per_sample_weight(m: nn.Module, a: Tensor, d: Tensor) -> Tensor:
    """(N, out·in·k²) weight gradients of each row alone: δ_b ⊗ patches_b summed over positions."""
    if isinstance(m, nn.Conv2d):
        patches = torch.nn.functional.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)
        return torch.bmm(d.flatten(2), patches.transpose(1, 2)).flatten(1)
    a, d = a.reshape(len(a), -1, a.shape[-1]), d.reshape(len(d), -1, d.shape[-1])
    return torch.bmm(d.transpose(1, 2), a).flatten(1)


def _per_group_weight(m: nn.Module, pieces: list[tuple[Tensor, Tensor, Tensor]], size: int) -> Tensor:
    """One weight-gradient call per group on its rows, gathered from every call in one copy."""
    g_all = torch.cat([g for _, _, g in pieces])
    counts = torch.bincount(g_all[g_all >= 0], minlength=size).tolist()
    order = torch.argsort(g_all, stable=True)[int((g_all < 0).sum()) :]
    dest = torch.empty_like(g_all).index_copy_(0, order, torch.arange(len(order), device=g_all.device))
    a_s = pieces[0][0].new_empty(len(order), *pieces[0][0].shape[1:])
    d_s = pieces[0][1].new_empty(len(order), *pieces[0][1].shape[1:])
    start = 0
    for a, d, g in pieces:
        rows, keep = dest[start : start + len(g)], g >= 0
        start += len(g)
        a, d, rows = (a, d, rows) if bool(keep.all()) else (a[keep], d[keep], rows[keep])
        a_s.index_copy_(0, rows, a)
        d_s.index_copy_(0, rows, d)
    weight = m.weight.new_zeros(size, *m.weight.shape)
    for j, (ag, dg) in enumerate(zip(a_s.split(counts), d_s.split(counts), strict=True)):
        if len(ag) and isinstance(m, nn.Conv2d):
            weight[j] = torch.nn.grad.conv2d_weight(ag, m.weight.shape, dg, m.stride, m.padding, m.dilation)
        elif len(ag):
            weight[j] = dg.reshape(-1, dg.shape[-1]).T @ ag.reshape(-1, ag.shape[-1])
    return weight


def _index_sum(values: list[tuple[Tensor, Tensor]], size: int) -> Tensor:
    """(size, *) sums of per-row values by their group ids (rows with id -1 dropped)."""
    first = values[0][0]
    out = first.new_zeros(size, *first.shape[1:])
    for v, g in values:
        keep = g >= 0
        out.index_add_(0, g, v) if bool(keep.all()) else out.index_add_(0, g[keep], v[keep])
    return out


def group_backward(
    terms: Sequence[Term],
    ids: Sequence[Tensor],
    num_groups: int,
    named: dict[str, nn.Parameter],
    switch: Switch,
    decoupled: bool,
) -> dict[str, Tensor]:
    """One backward per group through the training graph (kept alive), (G + 1, *shape) per
    parameter: batch statistics held when ``decoupled``, the exact coupled gradient otherwise."""
    out = {n: p.new_zeros(num_groups + 1, *p.shape) for n, p in named.items()}
    if not named:
        return out
    switch.decoupled = decoupled
    try:
        for g in range(num_groups):
            picked = [
                (t, (i == g).to(t.G.device)) for t, i in zip(terms, ids, strict=True) if bool((i == g).any())
            ]
            if not picked:
                continue
            grads = torch.autograd.grad(
                [t.logits for t, _ in picked],
                list(named.values()),
                [t.G * m[:, None] for t, m in picked],
                retain_graph=True,
                allow_unused=True,
            )
            for n, gr in zip(named, grads, strict=True):
                if gr is not None:
                    out[n][g] = gr
    finally:
        switch.decoupled = False
    return out
