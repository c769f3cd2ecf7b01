"""Split a step's gradient into groups of samples: ∇θ L = Σ_g ∇θ L_g (+ the BatchNorm coupling).

A group is the set of samples sharing the selected keys (the term's name and any per-sample
columns: source class, pseudo-label correctness, pruning status, ...). The groups partition the
samples, so each group's share of the step is exact, not an approximation.

BatchNorm's batch statistics couple the samples of a training batch. *Decoupled* group gradients
hold them at the batch's values: each sample's gradient then depends on that sample alone, and one
backward seeded with the per-sample logit gradients G (``capture.DecoupledBatchNorm`` in its
decoupled mode) gives every layer's output cotangent; a group's gradient is then, per layer, a
product over the group's rows only (Linear δ_gᵀ a_g, Conv2d the weight gradient of the group's
rows, norm affine Σ δ·x̂ and Σ δ). What flows through the statistics, ∇θ L − Σ_g ∇θ L_g^dec, is
the coupling (term ``bn_coupling``). Parameters of other layers, and terms whose logits are not
rows of the captured forwards, take one backward per group through the same decoupled graph
(``group_backward``), which is also the *exact* route when the statistics are not held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from lddyn.dynamics.capture import ForwardCall, LayerCall, Switch
from lddyn.dynamics.norms import fold, xhat
from lddyn.dynamics.structured import structured_kind

#: lddyn's grouping keys; a recorder accepts any per-sample column as a key.
GROUP_KEYS = ("term", "source_class", "correct", "status")
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

    Seeds the rows with their own numbers and reads the gradient at the captured forwards'
    outputs: a pure selection of rows (cat, split, indexing, adding a constant) delivers each
    number intact to one output row; anything else (a transform, a head on stored features)
    does not, and the term takes ``group_backward`` instead. Numbers are exact in every dtype
    (low-precision dtypes take several passes of smaller digits).
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
) -> tuple[dict[str, Tensor], list[bool], list[str]]:
    """Σ_{b∈g} ∇θ ℓ_b^dec per parameter, stacked (G + 1, *shape) with a spare last row (the
    coupling's), from one decoupled backward and per-layer sums; plus which terms were located
    and the parameters left to ``group_backward`` (layers of other kinds, or called twice)."""
    per_call, mapped = row_groups(terms, ids, calls)
    live = [t for t, m in zip(terms, mapped, strict=True) if m]
    stacked = {n: p.new_zeros(num_groups + 1, *p.shape) for n, p in named.items()}
    done: set[str] = set()
    if live:
        layers = [(k, lc) for k, c in enumerate(calls) if bool((per_call[k] >= 0).any()) for lc in c.layers]
        switch.decoupled = True
        try:
            cot = torch.autograd.grad(
                [t.logits for t in live],
                [lc.delta for _, lc in layers],
                [t.G for t in live],
                retain_graph=True,
                allow_unused=True,
            )
        finally:
            switch.decoupled = False
        by_module: dict[nn.Module, list] = {}
        for (k, lc), d in zip(layers, cot, strict=True):
            by_module.setdefault(lc.module, []).append((k, lc, d))
        names = {id(p): n for n, p in named.items()}
        for module, pieces in by_module.items():
            own = {r: names[id(p)] for r, p in module.named_parameters(recurse=False) if id(p) in names}
            if not _summable(module, pieces, calls):
                continue
            rows = [(lc, d, per_call[k].to(d.device)) for k, lc, d in pieces]
            for role, value in _layer_sums(module, rows, num_groups + 1).items():
                if role in own:
                    stacked[own[role]] = value.reshape(num_groups + 1, *named[own[role]].shape)
                    done.add(own[role])
    return stacked, mapped, [n for n in named if n not in done]


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


def _layer_sums(m: nn.Module, rows: list[tuple[LayerCall, Tensor, Tensor]], size: int) -> dict[str, Tensor]:
    """Per-group parameter gradients of one layer: role -> (size, *) sums over each group's rows."""
    if structured_kind(m) == "norm":
        per_row = [(lc.input, d, g) for lc, d, g in rows]
        xh = [xhat(m, lc.input, lc.mode) for lc, _, _ in rows]
        return {
            "weight": _index_sum(
                [(fold(m, d * x), g) for (_, d, g), x in zip(per_row, xh, strict=True)], size
            ),
            "bias": _index_sum([(fold(m, d), g) for _, d, g in per_row], size),
        }
    conv = isinstance(m, nn.Conv2d)
    used = [(lc.input[g >= 0], d[g >= 0], g[g >= 0]) for lc, d, g in rows]
    a, d, g = (torch.cat([u[i] for u in used]) for i in range(3))
    order = torch.argsort(g, stable=True)
    a, d, counts = a[order], d[order], torch.bincount(g, minlength=size).tolist()
    weight = m.weight.new_zeros(size, *m.weight.shape)
    for j, (ag, dg) in enumerate(zip(a.split(counts), d.split(counts), strict=True)):
        if len(ag) and conv:
            weight[j] = torch.nn.grad.conv2d_weight(ag, m.weight.shape, dg, m.stride, m.padding, m.dilation)
        elif len(ag):
            weight[j] = dg.reshape(-1, dg.shape[-1]).T @ ag.reshape(-1, ag.shape[-1])
    out = {"weight": weight}
    if m.bias is not None:
        dims = tuple(range(2, d.dim())) if conv else tuple(range(1, d.dim() - 1))
        out["bias"] = _index_sum([(dd.sum(dims) if dims else dd, gg) for _, dd, gg in used], size)
    return out


def _index_sum(values: list[tuple[Tensor, Tensor]], size: int) -> Tensor:
    """(size, *) sums of per-row values by their group ids (rows with id -1 dropped)."""
    first = values[0][0]
    out = first.new_zeros(size, *first.shape[1:])
    for v, g in values:
        keep = g >= 0
        out.index_add_(0, g[keep], v[keep])
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
