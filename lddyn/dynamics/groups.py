"""Group the samples of a step's loss terms, and take one gradient per group.

A group is the set of samples sharing the selected keys: the loss term's name, the source class
(true label, or pseudo-label for unlabeled samples), pseudo-label correctness (1/0/-1) and the
pruning status (kept/rescaled/pruned). The groups partition the samples, so Σ_g L_g = L and
Σ_g ∇θ L_g = ∇θ L: each group's share of the step is exact, not an approximation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lddyn.dynamics.functional import Params
from lddyn.losses import LossTerm

GROUP_KEYS = ("term", "source_class", "correct", "status")
#: How group gradients are taken (``record.groups``): through the training graph, or decoupled.
EXACT, DECOUPLED = "exact", "decoupled"
#: Term name of the batch-statistics coupling part of a decoupled step (∇θ L − Σ_g ∇θ L_g^dec).
COUPLING_TERM = "bn_coupling"


def check_keys(by: Sequence[str]) -> tuple[str, ...]:
    """The grouping keys as a tuple, in the canonical order; unknown keys are an error."""
    unknown = [k for k in by if k not in GROUP_KEYS]
    if unknown:
        raise ValueError(f"grouping keys {unknown} are not among {GROUP_KEYS}")
    return tuple(k for k in GROUP_KEYS if k in by)


def _columns(term: LossTerm) -> dict[str, list]:
    n = len(term.source_class)
    return {
        "term": [term.name] * n,
        "source_class": term.source_class.tolist(),
        "correct": term.correct.tolist(),
        "status": term.status.tolist(),
    }


def group_ids(terms: Sequence[LossTerm], by: Sequence[str]) -> tuple[list[tuple], list[Tensor]]:
    """(sorted group keys, per term the (N_t,) group index of each sample)."""
    by = check_keys(by)
    rows = []
    for term in terms:
        cols = _columns(term)
        rows.append(list(zip(*(cols[k] for k in by), strict=True)) if by else [()] * len(term.source_class))
    keys = sorted({k for r in rows for k in r})
    index = {k: i for i, k in enumerate(keys)}
    return keys, [torch.tensor([index[k] for k in r], dtype=torch.long) for r in rows]


@dataclass
class GroupGradients:
    """Per-group parameter gradients ∇θ L_g of one step, plus the per-sample logit gradients.

    ``stacked[name]`` is (num_groups, *shape): every group's gradient of one parameter, None
    where no group reaches it. Kept stacked because every consumer (the observation products,
    the optimiser split) works on all groups at once; ``grads`` gives per-group views.
    ``logit_grads[t]`` is G_t = ∂L_t/∂z_t (N_t, C) of term t, read from autograd.
    """

    by: tuple[str, ...]
    keys: list[tuple]  # one key tuple per group, values in ``by`` order
    ids: list[Tensor]  # per term: (N_t,) group of each sample
    stacked: dict[str, Tensor | None]
    logit_grads: list[Tensor]  # per term: (N_t, C)
    sizes: Tensor  # (num_groups,) samples per group
    total_direct: dict[str, Tensor | None] | None = None  # ∇θ L from its own backward, if taken
    mode: str = EXACT  # EXACT: through the training graph; DECOUPLED: batch statistics held constant
    # DECOUPLED only: ∇θ L − Σ_g ∇θ L_g, the part through the batch statistics (set by ``set_total``)
    coupling: dict[str, Tensor | None] | None = None
    # optional (num_groups + 1, *shape) tensors whose first rows are ``stacked``: ``set_total``
    # writes the coupling into the last row, so groups and coupling map to observations at once
    buffers: dict[str, Tensor | None] | None = None

    @property
    def grads(self) -> list[dict[str, Tensor | None]]:
        """Per group: parameter name -> gradient (a view into ``stacked``), None where unreached."""
        return [
            {n: None if s is None else s[g] for n, s in self.stacked.items()} for g in range(len(self.keys))
        ]

    def group_sum(self) -> dict[str, Tensor | None]:
        """Σ_g ∇θ L_g (None where no group reaches a parameter)."""
        return {n: None if s is None else s.sum(0) for n, s in self.stacked.items()}

    def total(self) -> dict[str, Tensor | None]:
        """∇θ L: the group sum, plus the coupling of a decoupled step once known."""
        out = self.group_sum()
        if self.coupling is None:
            return out
        for name, c in self.coupling.items():
            if c is not None:
                out[name] = c if out.get(name) is None else out[name] + c
        return out

    def set_total(self, total: dict[str, Tensor | None]) -> None:
        """Record ∇θ L; for a decoupled step the coupling becomes ∇θ L − Σ_g ∇θ L_g^dec."""
        self.total_direct = total
        if self.mode == DECOUPLED:
            summed = self.group_sum()
            self.coupling = {
                n: None if t is None else (t if summed.get(n) is None else t - summed[n])
                for n, t in total.items()
            }
            spare = self.buffers or {}
            for n, c in self.coupling.items():
                if c is not None and spare.get(n) is not None:
                    self.coupling[n] = spare[n][-1].copy_(c)

    def directions(self) -> tuple[dict[str, Tensor | None], int]:
        """(per parameter the stacked directions, K): the groups, then the coupling once set."""
        g = len(self.keys)
        if self.coupling is None:
            return self.stacked, g
        spare = self.buffers or {}
        if all(c is None or spare.get(n) is not None for n, c in self.coupling.items()):
            return spare, g + 1  # the coupling is already the last row
        return stack_groups([*self.grads, self.coupling], list(self.stacked)), g + 1

    def parts(self) -> tuple[list[tuple], list[dict[str, Tensor | None]]]:
        """(meta dicts, gradients) of the groups, then the coupling part when there is one."""
        meta = [dict(zip(self.by, key, strict=True)) for key in self.keys]
        if self.coupling is None:
            return meta, self.grads
        return [*meta, {"term": COUPLING_TERM}], [*self.grads, self.coupling]


def stack_groups(
    dicts: Sequence[dict[str, Tensor | None]], names: Sequence[str] | None = None
) -> dict[str, Tensor | None]:
    """Per-part parameter dicts as (num_parts, *shape) per parameter: zeros for a part that misses a
    parameter another part has, None where no part has it. ``names``: the keys of the result
    (default: every parameter some part has)."""
    if names is None:
        names = list(dict.fromkeys(n for d in dicts for n, v in d.items() if v is not None))
    out: dict[str, Tensor | None] = {}
    for name in names:
        vals = [d.get(name) for d in dicts]
        like = next((v for v in vals if v is not None), None)
        out[name] = (
            None
            if like is None
            else torch.stack([torch.zeros_like(like) if v is None else v.to(like) for v in vals])
        )
    return out


def named_trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def group_gradients(
    model: nn.Module,
    terms: Sequence[LossTerm],
    by: Sequence[str] = GROUP_KEYS,
    with_total: bool = True,
    batched: bool = True,
) -> GroupGradients:
    """The gradient of each group loss through the live training graph (kept alive).

    ``batched``: all groups in one vmapped backward (seeds = the groups' 0/1 sample masks over the
    per-sample losses), which pays the per-op overhead once instead of once per group; it falls
    back to one ``autograd.grad`` per group where an op has no batching rule.

    Exact for the step actually taken: with BatchNorm in train mode the batch statistics
    couple samples, and that coupling is part of each group's gradient. ``.grad`` is untouched.
    ``with_total`` also takes ∇θ L by its own backward, an independent check of Σ_g ∇θ L_g.
    """
    keys, ids = group_ids(terms, by)
    named = named_trainable(model)
    ell = [t.per_sample() for t in terms]
    logit_grads = [
        torch.autograd.grad(e.sum(), t.logits, retain_graph=True)[0] for e, t in zip(ell, terms, strict=True)
    ]
    dev_ids = [i.to(e.device) for e, i in zip(ell, ids, strict=True)]
    stacked = _batched_group_grads(ell, dev_ids, len(keys), named) if batched else None
    if stacked is None:
        grads = []
        for g in range(len(keys)):
            loss = sum(e[i == g].sum() for e, i in zip(ell, dev_ids, strict=True))
            gr = torch.autograd.grad(loss, list(named.values()), retain_graph=True, allow_unused=True)
            grads.append(dict(zip(named, gr, strict=True)))
        stacked = stack_groups(grads, list(named))
    sizes = torch.bincount(torch.cat(ids), minlength=len(keys)) if ids else torch.zeros(0, dtype=torch.long)
    total = None
    if with_total:
        gr = torch.autograd.grad(
            sum(e.sum() for e in ell), list(named.values()), retain_graph=True, allow_unused=True
        )
        total = dict(zip(named, gr, strict=True))
    return GroupGradients(check_keys(by), keys, ids, stacked, logit_grads, sizes, total)


def _batched_group_grads(
    ell: Sequence[Tensor], ids: Sequence[Tensor], num_groups: int, named: dict[str, nn.Parameter]
) -> dict[str, Tensor | None] | None:
    """Σ_{b in g} ∇θ ℓ_b for every group g at once, stacked (num_groups, *shape) per parameter, or
    None if the batched backward is unsupported."""
    if num_groups == 0:
        return {n: None for n in named}
    losses = torch.cat([e.reshape(-1) for e in ell])
    group = torch.cat(list(ids)).to(losses.device)
    seeds = (torch.arange(num_groups, device=losses.device)[:, None] == group[None, :]).to(losses.dtype)
    try:
        gr = torch.autograd.grad(
            losses, list(named.values()), seeds, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
    except RuntimeError:
        return None
    return dict(zip(named, gr, strict=True))


def live_total(model: nn.Module, terms: Sequence[LossTerm]) -> dict[str, Tensor | None]:
    """∇θ L through the live training graph (retained), ``.grad`` untouched."""
    named = named_trainable(model)
    loss = sum(t.per_sample().sum() for t in terms)
    grads = torch.autograd.grad(loss, list(named.values()), retain_graph=True, allow_unused=True)
    return dict(zip(named, grads, strict=True))


def as_tangent(grad: dict[str, Tensor | None], params: Params, scale: float = 1.0) -> Params:
    """A full parameter-space tangent from a gradient dict (None -> zeros), times ``scale``."""
    return {n: (torch.zeros_like(p) if grad.get(n) is None else scale * grad[n]) for n, p in params.items()}
