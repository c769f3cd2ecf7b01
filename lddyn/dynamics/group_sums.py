"""Per-group parameter gradients of the structured layers from their inputs and output cotangents.

With BatchNorm's statistics held constant each sample's gradient depends on that sample alone, so
one backward gives every sample's cotangent δ at every layer output, and a group's gradient is a
per-layer product restricted to its rows: Linear δ_gᵀ a_g, Conv2d the weight gradient of the
group's rows, norm affine Σ δ·x̂ and Σ δ. Rows arrive as one piece per training batch; only the
per-group weight-gradient calls need a group's rows together, and they get one sorted copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lddyn.dynamics.structured import Site

#: Per-sample weight gradients of a layer are formed and summed by group up to this many elements
#: (batch x weight size); larger layers take one weight-gradient call per group.
PER_SAMPLE_ELEMENTS = 1 << 20


class Rows:
    """The rows of a step's batches (one piece per batch) by group: ids, sizes, and a sorted gather.

    ``groups[k]`` (N_k,) is the group of each row of batch k, -1 for a row no term uses. Sums
    get ``spare`` extra zero rows after the groups (room for the coupling, filled later).
    """

    def __init__(
        self, groups: Sequence[Tensor], num_groups: int, device: torch.device, spare: int = 0
    ) -> None:
        self.num_groups, self.spare = num_groups, spare
        self.ids = [g.to(device) for g in groups]
        all_used = all(bool((g >= 0).all()) for g in groups)
        self.used = None if all_used else [i >= 0 for i in self.ids]
        flat = torch.cat(list(groups)) if groups else torch.zeros(0, dtype=torch.long)
        self.sizes = torch.bincount(flat[flat >= 0], minlength=num_groups).tolist()
        # where each used row lands when the rows are sorted by group (stable): per batch
        order = torch.argsort(flat, stable=True)[int((flat < 0).sum()) :]
        dest = torch.full_like(flat, -1)
        dest[order] = torch.arange(len(order))
        self.dest = [d.to(device) for d in dest.split([len(g) for g in groups])]

    def pieces(self, parts: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """(used rows of each piece, their group ids)."""
        if self.used is None:
            return list(zip(parts, self.ids, strict=True))
        return [(p[u], i[u]) for p, i, u in zip(parts, self.ids, self.used, strict=True)]

    def sorted(self, parts: Sequence[Tensor]) -> Tensor:
        """The used rows of all pieces in one tensor sorted by group: one copy."""
        out = parts[0].new_empty(sum(self.sizes), *parts[0].shape[1:])
        for part, dest in zip(parts, self.dest, strict=True):
            if self.used is not None:
                keep = dest >= 0
                part, dest = part[keep], dest[keep]
            out.index_copy_(0, dest, part)
        return out


def site_group_sums(
    sites: list[Site],
    inputs: Sequence[Sequence[Tensor]],
    cot: Sequence[Sequence[Tensor] | None],
    rows: Rows,
    named: dict[str, nn.Parameter],
) -> dict[str, Tensor | None]:
    """Σ_{b∈g} ∇θ ℓ_b^dec of every site's parameters for every group g, stacked (G + spare, *shape).

    Per site, ``inputs`` (x̂ for a norm site) and ``cot`` hold one piece per batch of ``rows``;
    parameters of no site (or whose site has no cotangent) stay None.
    """
    out: dict[str, Tensor | None] = dict.fromkeys(named)
    for site, a, d in zip(sites, inputs, cot, strict=True):
        if not site.params or d is None:
            continue
        sums = _norm_sums(site, a, d, rows) if site.kind == "norm" else _patch_sums(site, a, d, rows)
        for role, full in site.params.items():
            out[full] = sums[role].reshape(-1, *named[full].shape)
    return out


def _patch_sums(site: Site, a: Sequence[Tensor], d: Sequence[Tensor], rows: Rows) -> dict[str, Tensor]:
    """Linear / Conv2d weight and bias gradients per group: per-sample gradients summed by group when
    they are small (a head, a first convolution), else one weight-gradient call per group."""
    m, g = site.module, rows.num_groups
    conv = isinstance(m, nn.Conv2d)
    if not conv:  # (N, positions, features)
        a = [t.reshape(len(t), -1, t.shape[-1]) for t in a]
        d = [t.reshape(len(t), -1, t.shape[-1]) for t in d]
    result: dict[str, Tensor] = {}
    if "weight" in site.params:
        if max(len(t) for t in a) * m.weight.numel() <= PER_SAMPLE_ELEMENTS:
            result["weight"] = _per_sample_weight_sums(m, a, d, rows)
        else:
            parts = zip(rows.sorted(a).split(rows.sizes), rows.sorted(d).split(rows.sizes), strict=True)
            weight = m.weight.new_zeros(g + rows.spare, *m.weight.shape)
            torch.stack([_weight_grad(m, ai, di) for ai, di in parts], out=weight[:g])
            result["weight"] = weight
    if "bias" in site.params:
        dims = (2, 3) if conv else (1,)
        per_sample = [(t.sum(dims), i) for t, i in rows.pieces(d)]
        result["bias"] = _sum_by_group(per_sample, g + rows.spare)
    return result


def _weight_grad(m: nn.Module, a: Tensor, d: Tensor) -> Tensor:
    """Σ over the rows of one group of the weight gradient (zeros for an empty group)."""
    if not isinstance(m, nn.Conv2d):
        return d.reshape(-1, d.shape[-1]).T @ a.reshape(-1, a.shape[-1])
    if not len(a):
        return m.weight.new_zeros(m.weight.shape)
    return torch.nn.grad.conv2d_weight(a, m.weight.shape, d, m.stride, m.padding, m.dilation, m.groups)


def _per_sample_weight_sums(m: nn.Module, a: Sequence[Tensor], d: Sequence[Tensor], rows: Rows) -> Tensor:
    """Σ_{b∈g} δ_b ⊗ a_b for every group g from per-sample weight gradients: (G, out, in·k²)."""
    per_sample = []
    for (ak, ids), (dk, _) in zip(rows.pieces(a), rows.pieces(d), strict=True):
        if isinstance(m, nn.Conv2d):
            patches = F.unfold(ak, m.kernel_size, m.dilation, m.padding, m.stride)  # (N, in·k², S)
            grads = torch.bmm(dk.flatten(2), patches.transpose(1, 2))  # (N, out, in·k²)
        else:
            grads = torch.bmm(dk.transpose(1, 2), ak)  # (N, out, in)
        per_sample.append((grads.reshape(len(ak), -1), ids))
    return _sum_by_group(per_sample, rows.num_groups + rows.spare)


def _sum_by_group(per_sample: Sequence[tuple[Tensor, Tensor]], num_rows: int) -> Tensor:
    """(num_rows, *) sums of per-sample rows by their group ids, over all pieces."""
    first = per_sample[0][0]
    out = first.new_zeros(num_rows, *first.shape[1:])
    for values, ids in per_sample:
        out.index_add_(0, ids, values)
    return out


def _norm_sums(site: Site, xhat: Sequence[Tensor], d: Sequence[Tensor], rows: Rows) -> dict[str, Tensor]:
    """Norm affine: per-sample Σ δ·x̂ (weight) and Σ δ (bias) over positions, summed per group."""
    if isinstance(site.module, nn.LayerNorm):
        width = int(torch.Size(site.module.normalized_shape).numel())

        def fold(t: Tensor) -> Tensor:
            return t.reshape(t.shape[0], -1, width).sum(1)
    else:

        def fold(t: Tensor) -> Tensor:
            return t.reshape(t.shape[0], t.shape[1], -1).sum(2)

    pieces = list(zip(rows.pieces(xhat), rows.pieces(d), strict=True))
    result = {}
    for role in site.params:
        per_sample = [(fold(dk * xk) if role == "weight" else fold(dk), ids) for (xk, ids), (dk, _) in pieces]
        result[role] = _sum_by_group(per_sample, rows.num_groups + rows.spare)
    return result
