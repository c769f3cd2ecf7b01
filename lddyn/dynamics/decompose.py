"""First-order decomposition of one training step at observation points (DESIGN.md §1).

For an SGD step Δθ = −η ∇θ L the observed log-probabilities move by
    Δ log π(·|x_o) = −η T(x_o) Σ_g K(x_o, ·) G_g + O(η²),   T = I − 1 πᵀ,
and a group's K·G sum is J_o ∇θ L_g: one gradient of the group loss, then one product with the
observation Jacobian (``obs_jacobian``: layer factors of J_o, all groups at once). Shapes:
O observations, C classes, Gn groups, N_t samples of term t. Observation forwards run with
normalisation layers in eval mode (running statistics) and never update buffers.

Exactness, stated per value:

* ``kg`` (per group), ``mode="exact"``: exact for the step taken, the group gradient goes through
  the actual training forward, BatchNorm batch coupling included. Σ_g kg = ``kg_total``.
* ``kg`` (per group), ``mode="decoupled"`` (``decoupled.py``): the group's samples through the
  training forward with the batch statistics held constant, about one backward for all groups;
  the rest, J_o (∇θ L − Σ_g ∇θ L_g^dec), is ``kg_coupling`` (term ``bn_coupling`` in the tables),
  so Σ_g kg + kg_coupling = ``kg_total``. Without train-mode BatchNorm the coupling is zero and
  the decoupled groups equal the exact ones.
* ``TrackedSamples.kg_exact`` (per sample, gradient of ℓ_b through the training graph) is exact
  in the same sense; with batch coupling it includes ℓ_b's effect through the batch statistics.
* ``TrackedSamples.kg_entk`` = K(x_o, x_b) G_b uses the per-sample eNTK in eval mode. It equals
  ``kg_exact`` only without batch coupling (LayerNorm / no norm / BN in eval); ``gap`` shows the
  difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lddyn.dynamics import tidy
from lddyn.dynamics.decoupled import ForwardCall, decoupled_group_gradients
from lddyn.dynamics.entk import empirical_ntk
from lddyn.dynamics.functional import Params, sensitivity, trainable_params
from lddyn.dynamics.groups import (
    COUPLING_TERM,
    DECOUPLED,
    EXACT,
    GROUP_KEYS,
    GroupGradients,
    as_tangent,
    group_gradients,
    live_total,
    named_trainable,
)
from lddyn.dynamics.obs_jacobian import ObservationJacobian
from lddyn.losses import LossTerm


@dataclass
class TrackedSamples:
    """Exact per-sample contributions for a tracked subset of S training samples."""

    term: list[str]  # (S,) term of each sample
    row: Tensor  # (S,) position inside its term
    index: Tensor  # (S,) dataset index
    source_class: Tensor  # (S,)
    correct: Tensor  # (S,)
    status: Tensor  # (S,)
    G: Tensor  # (S, C) logit gradient G_b
    kg_exact: Tensor  # (S, O, C) J_o ∇θ ℓ_b through the training graph (exact for the step)
    kg_entk: Tensor | None = None  # (S, O, C) K(x_o, x_b) G_b with the eval-mode eNTK

    @property
    def gap(self) -> Tensor | None:
        """kg_entk − kg_exact (S, O, C): zero without batch coupling, nonzero with train-mode BN."""
        return None if self.kg_entk is None else self.kg_entk - self.kg_exact

    def meta(self) -> list[dict]:
        cols = zip(
            self.term,
            self.index.tolist(),
            self.source_class.tolist(),
            self.correct.tolist(),
            self.status.tolist(),
            strict=True,
        )
        return [
            {"term": t, "index": i, "source_class": s, "correct": c, "status": st} for t, i, s, c, st in cols
        ]


@dataclass
class StepDecomposition:
    """Per-group logit-space push and predicted log-prob change of one step at O observations."""

    step: int
    lr: float
    by: tuple[str, ...]  # grouping keys
    groups: list[tuple]  # Gn key tuples, values in ``by`` order
    group_sizes: Tensor  # (Gn,)
    logits: Tensor  # (O, C) observation logits before the step
    probs: Tensor  # (O, C)
    kg: Tensor  # (Gn, O, C) J_o ∇θ L_g
    kg_total: Tensor  # (O, C) J_o ∇θ L from one JVP along the full gradient
    G: dict[str, Tensor]  # term name -> (N_t, C) per-sample logit gradients
    group_id: dict[str, Tensor]  # term name -> (N_t,) group of each sample
    obs_ids: Tensor  # (O,)
    tracked: TrackedSamples | None = None
    mode: str = EXACT  # how the group gradients were taken (``record.groups``)
    kg_coupling: Tensor | None = None  # (O, C) decoupled mode: J_o (∇θ L − Σ_g ∇θ L_g^dec)

    @property
    def pred_logp(self) -> Tensor:
        """(Gn, O, C): −η T(x_o) KG_g, each group's first-order Δ log π."""
        return -self.lr * sensitivity(self.kg, self.probs)

    @property
    def pred_logp_total(self) -> Tensor:
        """(O, C): −η T(x_o) J_o ∇θ L."""
        return -self.lr * sensitivity(self.kg_total, self.probs)

    def group_meta(self) -> list[dict]:
        return [dict(zip(self.by, key, strict=True)) for key in self.groups]

    def to_columns(self) -> dict[str, np.ndarray]:
        """Tidy columns: "kg", "pred_logp" per group (and the coupling), "kg_total", "pred_logp_total".

        Every row carries ``grad_mode``; in decoupled mode the coupling is one more group whose
        ``term`` is ``bn_coupling`` (other grouping columns null), so Σ ``kg`` = ``kg_total``.
        """
        meta, s, ids, kg = self.group_meta(), self.step, self.obs_ids, self.kg
        if self.kg_coupling is not None:
            meta, kg = [*meta, {"term": COUPLING_TERM}], torch.cat([kg, self.kg_coupling[None]])
        cols = tidy.concat(
            [
                tidy.block(s, ids, kg, meta, "kg"),
                tidy.block(s, ids, -self.lr * sensitivity(kg, self.probs), meta, "pred_logp"),
                tidy.block(s, ids, self.kg_total[None], [{}], "kg_total"),
                tidy.block(s, ids, self.pred_logp_total[None], [{}], "pred_logp_total"),
            ]
        )
        return tidy.constant(cols, "grad_mode", self.mode)

    def to_rows(self) -> list[dict]:
        return tidy.rows(self.to_columns())

    def sample_columns(self) -> dict[str, np.ndarray]:
        """Tidy columns of the tracked samples (with a dataset ``index`` column), or empty."""
        t = self.tracked
        if t is None:
            return {}
        meta, s, ids = t.meta(), self.step, self.obs_ids
        blocks = [tidy.block(s, ids, t.kg_exact, meta, "kg_exact", ("index",))]
        if t.kg_entk is not None:
            blocks.append(tidy.block(s, ids, t.kg_entk, meta, "kg_entk", ("index",)))
        cols = tidy.concat(blocks)
        return tidy.constant(cols, "grad_mode", EXACT)  # per-sample values: through the training graph


def take_group_gradients(
    model: nn.Module,
    terms: Sequence[LossTerm],
    by: Sequence[str] = GROUP_KEYS,
    mode: str = EXACT,
    calls: Sequence[ForwardCall] | None = None,
) -> GroupGradients:
    """Group gradients by ``mode``; decoupled falls back to exact when the step cannot be re-formed.

    ``calls``: the step's captured training forwards (``decoupled.ForwardCapture``), needed by the
    decoupled mode. The result's ``mode`` says which route was taken.
    """
    if mode not in (EXACT, DECOUPLED):
        raise ValueError(f"group gradient mode {mode!r} is not one of {EXACT!r}, {DECOUPLED!r}")
    if mode == DECOUPLED and calls:
        grads = decoupled_group_gradients(model, terms, calls, by)
        if grads is not None:
            return grads
    return group_gradients(model, terms, by, with_total=False)


def decompose_step(
    model: nn.Module,
    terms: Sequence[LossTerm],
    x_obs: Tensor,
    lr: float,
    *,
    by: Sequence[str] = GROUP_KEYS,
    step: int = 0,
    obs_ids: Tensor | None = None,
    track: dict[str, Tensor] | None = None,
    track_inputs: dict[str, Tensor] | None = None,
    grads: GroupGradients | None = None,
    mode: str = EXACT,
    calls: Sequence[ForwardCall] | None = None,
) -> StepDecomposition:
    """Decompose the step about to be taken on ``terms`` (training graph alive) at ``x_obs``.

    ``track`` maps term name -> rows (positions inside the term) whose exact per-sample
    contributions to compute (one gradient + one JVP each); ``track_inputs`` maps term name ->
    the inputs of those rows, adding the eval-mode eNTK value K(x_o, x_b) G_b. ``grads`` reuses
    group gradients already taken (e.g. shared with ``realised.predict_update``); otherwise they
    are taken by ``mode`` (see ``take_group_gradients``). A decoupled step without a known total
    takes ∇θ L by one backward. The graph is retained and no ``.grad`` is written, so the
    trainer's backward runs afterwards as usual.
    """
    grads = take_group_gradients(model, terms, by, mode, calls) if grads is None else grads
    if grads.mode == DECOUPLED and grads.coupling is None:
        grads.set_total(live_total(model, terms))
    tracked = track_samples(model, terms, grads, x_obs, track, track_inputs) if track else None
    return decompose_grads(
        model, grads, [t.name for t in terms], x_obs, lr, step=step, obs_ids=obs_ids, tracked=tracked
    )


def decompose_grads(
    model: nn.Module,
    grads: GroupGradients,
    names: Sequence[str],
    x_obs: Tensor,
    lr: float,
    *,
    step: int = 0,
    obs_ids: Tensor | None = None,
    tracked: TrackedSamples | None = None,
    params: Params | None = None,
    state: Params | None = None,
) -> StepDecomposition:
    """The observation side of a decomposition from group gradients already taken.

    J_o (``ObservationJacobian``) along every group gradient and the coupling (decoupled mode);
    the total is their sum (linearity), or its own product along ``grads.total_direct`` in exact mode
    when that was taken, an independent check. Evaluated at ``params``/``state`` (default: the
    model's current ones); needs no graph, so a recorder can run it after the optimiser step
    with the parameters saved before it.
    """
    params = trainable_params(model) if params is None else params
    own_total = grads.mode == EXACT and grads.total_direct is not None  # an independent check
    jacobian = ObservationJacobian(model, x_obs, params, state)
    gn, logits = len(grads.keys), jacobian.logits
    kg = jacobian.apply_stacked(*grads.directions())  # the groups, then the coupling when set
    kg_coupling = kg[gn] if grads.coupling is not None else None
    kg_total = jacobian.apply([grads.total_direct])[0] if own_total else kg.sum(0)
    kg = kg[:gn]
    return StepDecomposition(
        step=step,
        lr=float(lr),
        by=grads.by,
        groups=grads.keys,
        group_sizes=grads.sizes,
        logits=logits,
        probs=F.softmax(logits, -1),
        kg=kg,
        kg_total=kg_total,
        G=dict(zip(names, grads.logit_grads, strict=True)),
        group_id=dict(zip(names, grads.ids, strict=True)),
        obs_ids=torch.arange(len(x_obs)) if obs_ids is None else obs_ids,
        tracked=tracked,
        mode=grads.mode,
        kg_coupling=kg_coupling,
    )


def track_samples(
    model: nn.Module,
    terms: Sequence[LossTerm],
    grads: GroupGradients,
    x_obs: Tensor,
    track: dict[str, Tensor],
    inputs: dict[str, Tensor] | None,
) -> TrackedSamples:
    """Exact per-sample contributions of the ``track`` rows (see ``decompose_step``)."""
    by_name = {t.name: (k, t) for k, t in enumerate(terms)}
    named, params = named_trainable(model), trainable_params(model)
    tangents, rows, meta = [], [], []
    for name, pos in track.items():
        k, term = by_name[name]
        ell = term.per_sample()
        for r in pos.tolist():
            g = torch.autograd.grad(ell[r], list(named.values()), retain_graph=True, allow_unused=True)
            tangents.append(as_tangent(dict(zip(named, g, strict=True)), params))
            rows.append(r)
            meta.append((name, term, grads.logit_grads[k][r]))
    kg_exact = ObservationJacobian(model, x_obs, params).apply(tangents)
    G = torch.stack([m[2] for m in meta])
    kg_entk = _entk_values(model, x_obs, track, inputs, G) if inputs is not None else None
    pick = [(m[1], r) for m, r in zip(meta, rows, strict=True)]
    return TrackedSamples(
        term=[m[0] for m in meta],
        row=torch.tensor(rows),
        index=torch.stack([t.index[r].cpu() for t, r in pick]),
        source_class=torch.stack([t.source_class[r].cpu() for t, r in pick]),
        correct=torch.stack([t.correct[r].cpu() for t, r in pick]),
        status=torch.stack([t.status[r].cpu() for t, r in pick]),
        G=G,
        kg_exact=kg_exact,
        kg_entk=kg_entk,
    )


def _entk_values(
    model: nn.Module, x_obs: Tensor, track: dict[str, Tensor], inputs: dict[str, Tensor], G: Tensor
) -> Tensor:
    """K(x_o, x_b) G_b for the tracked samples, in ``track`` order: (S, O, C)."""
    x_b = torch.cat([inputs[name] for name in track])
    k = empirical_ntk(model, x_obs, x_b)  # (O, S, C, C)
    return torch.einsum("oscd,sd->soc", k, G)
