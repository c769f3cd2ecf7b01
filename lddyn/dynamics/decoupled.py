"""Group gradients of one step at the cost of about one backward, with BatchNorm coupling split off.

The exact group gradient ∇θ L_g goes through the training forward, where BatchNorm's batch
statistics couple the samples, so it costs one backward per group. The *decoupled* route holds
each BatchNorm's batch mean and variance constant: the forward values are the training forward's,
while each sample's gradient now depends on that sample alone. One backward seeded with the
per-sample logit gradients G then gives every sample's output cotangent at every layer, and each
group's gradient is a per-layer product restricted to the group's samples (Linear: δ_gᵀ a_g;
Conv2d: the weight gradient of the group's rows; norm affine: Σ δ·x̂ and Σ δ), about one
weight-gradient pass for all groups together (``group_sums``).

That backward is replayed on the training graph itself (``replay``), from the layer calls the
capture hooked during the training forward: no second forward. When the graph holds something
the replay does not reproduce exactly (layers this module does not know, autocast, a layer called
twice), the step's batches are re-forwarded instead (``reforward``), all in one forward with
each row normalised by its own batch's statistics, and unknown layers' parameters take a
per-group backward on that decoupled graph (exact, slower).

What remains, ∇θ L − Σ_g ∇θ L_g^dec, is the part of the step that flows through the batch
statistics: the *coupling*, reported as its own group (term ``bn_coupling``). It is zero without
BatchNorm in train mode, where the decoupled groups equal the exact ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from lddyn.dynamics.functional import frozen_state, trainable_params
from lddyn.dynamics.group_sums import Rows, site_group_sums
from lddyn.dynamics.groups import (
    DECOUPLED,
    GROUP_KEYS,
    GroupGradients,
    check_keys,
    group_ids,
    named_trainable,
)
from lddyn.dynamics.reforward import reforward_group_sums
from lddyn.dynamics.replay import LayerCall, replay_cotangents
from lddyn.dynamics.structured import NORM_AFFINE, Site, cached_plan
from lddyn.losses import LossTerm

#: Layers whose calls the capture records for the replay.
STRUCTURED_KINDS = (nn.Linear, nn.Conv2d, *NORM_AFFINE)


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


def decoupled_group_gradients(
    model: nn.Module,
    terms: Sequence[LossTerm],
    calls: Sequence[ForwardCall],
    by: Sequence[str] = GROUP_KEYS,
) -> GroupGradients | None:
    """Decoupled group gradients (``mode="decoupled"``), or None when the step cannot be decoupled.

    ``calls`` are the step's grad-enabled forwards (``ForwardCapture``). None when a term's logits
    are not rows of those forwards (a method's head on stored features, a transformed logit), when
    two samples share one forward row, or when the graph cannot be replayed and the re-forward
    does not reproduce the training logits (e.g. dropout in an unknown layer): the caller then
    takes the exact route. ``coupling`` is left unset.
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
    batches, seeds = [calls[k] for k in active], [seeds[k] for k in active]
    named = named_trainable(model)
    rows = Rows([gid[k] for k in active], len(keys), calls[0].x.device, spare=1)  # + the coupling
    replayed = None if plan.generic else _replay(plan.sites, batches, key, seeds)
    buffers = None
    if replayed is not None:  # the training graph itself
        buffers = site_group_sums(plan.sites, *replayed, rows, named)
        grads = {n: None if b is None else b[: len(keys)] for n, b in buffers.items()}
    else:
        # one re-forward of all batches with their rows sorted by group (unused rows first)
        group = torch.cat([gid[k] for k in active])
        order = torch.argsort(group, stable=True)
        xs, outs = [c.x for c in batches], [c.outputs[key] for c in batches]
        grads = reforward_group_sums(model, plan, xs, outs, seeds, key, order, group[order], len(keys), named)
        if grads is None:
            return None
    sizes = torch.bincount(torch.cat(ids), minlength=len(keys)) if ids else torch.zeros(0, dtype=torch.long)
    by = check_keys(by)
    return GroupGradients(by, keys, ids, grads, logit_grads, sizes, mode=DECOUPLED, buffers=buffers)


def _replay(
    sites: list[Site], calls: Sequence[ForwardCall], key: str, seeds: Sequence[Tensor]
) -> tuple[list[list[Tensor]], list[list[Tensor]]] | None:
    """Per site and call, its inputs (x̂ for norms) and output cotangents, by the decoupled
    backward replayed on the training graph; None when the graph does not allow it."""
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
    inputs = [[got[j * n + i][0] for j in range(len(calls))] for i in range(n)]
    cot = [[got[j * n + i][1] for j in range(len(calls))] for i in range(n)]
    return inputs, cot
