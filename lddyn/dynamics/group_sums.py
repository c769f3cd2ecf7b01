"""Per-group parameter gradients of the structured layers from their inputs and output cotangents.

With BatchNorm's statistics held constant each sample's gradient depends on that sample alone, so
one backward gives every sample's cotangent δ at every layer output, and a group's gradient is a
per-layer product restricted to its rows: Linear δ_gᵀ a_g, Conv2d the weight gradient of the
group's rows, norm affine Σ δ·x̂ and Σ δ. Rows arrive sorted by group, so a group is a slice.
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


def site_group_sums(
    sites: list[Site],
    inputs: Sequence[Tensor],
    cot: Sequence[Tensor | None],
    group: Tensor,
    num_groups: int,
    named: dict[str, nn.Parameter],
) -> list[dict[str, Tensor | None]]:
    """Σ_{b∈g} ∇θ ℓ_b^dec of every site's parameters, for every group g.

    ``inputs`` (x̂ for a norm site) and ``cot`` have their rows sorted by ``group`` (unused rows,
    -1, first).
    """
    out: list[dict[str, Tensor | None]] = [dict.fromkeys(named) for _ in range(num_groups)]
    start = int((group < 0).sum())
    used = group[start:]
    sizes = torch.bincount(used, minlength=num_groups).tolist()
    for site, a, d in zip(sites, inputs, cot, strict=True):
        if not site.params or d is None:
            continue
        a, d = a[start:], d[start:]
        sums = (
            _norm_sums(site, a, d, used, num_groups)
            if site.kind == "norm"
            else _patch_sums(site, a, d, sizes, used)
        )
        for role, full in site.params.items():
            for g in range(num_groups):
                out[g][full] = sums[role][g].reshape(named[full].shape)
    return out


def _patch_sums(site: Site, a: Tensor, d: Tensor, sizes: list[int], group: Tensor) -> dict[str, Tensor]:
    """Linear / Conv2d weight and bias gradients per group: per-sample gradients summed by group when
    they are small (a head, a first convolution), else one weight-gradient call per group."""
    m = site.module
    conv = isinstance(m, nn.Conv2d)
    if not conv:  # (N, positions, features)
        a, d = a.reshape(len(a), -1, a.shape[-1]), d.reshape(len(d), -1, d.shape[-1])
    result: dict[str, Tensor] = {}
    if "weight" in site.params:
        if len(a) * m.weight.numel() <= PER_SAMPLE_ELEMENTS:
            result["weight"] = _per_sample_weight_sums(m, a, d, group, len(sizes))
        else:
            parts = zip(a.split(sizes), d.split(sizes), strict=True)
            result["weight"] = torch.stack([_weight_grad(m, ai, di) for ai, di in parts])
    if "bias" in site.params:
        result["bias"] = torch.stack([di.sum((0, 2, 3) if conv else (0, 1)) for di in d.split(sizes)])
    return result


def _weight_grad(m: nn.Module, a: Tensor, d: Tensor) -> Tensor:
    """Σ over the rows of one group of the weight gradient (zeros for an empty group)."""
    if not isinstance(m, nn.Conv2d):
        return d.reshape(-1, d.shape[-1]).T @ a.reshape(-1, a.shape[-1])
    if not len(a):
        return m.weight.new_zeros(m.weight.shape)
    return torch.nn.grad.conv2d_weight(a, m.weight.shape, d, m.stride, m.padding, m.dilation, m.groups)


def _per_sample_weight_sums(m: nn.Module, a: Tensor, d: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """Σ_{b∈g} δ_b ⊗ a_b for every group g from per-sample weight gradients: (G, out, in·k²)."""
    if isinstance(m, nn.Conv2d):
        patches = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # (N, in·k², S)
        per_sample = torch.bmm(d.flatten(2), patches.transpose(1, 2))  # (N, out, in·k²)
    else:
        per_sample = torch.bmm(d.transpose(1, 2), a)  # (N, out, in)
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
