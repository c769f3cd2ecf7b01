"""The dynamics recorder: a callback that decomposes recorded steps at a fixed observation set.

At ``loss_terms`` (graph alive, before backward) it takes the group gradients (``record.groups``:
decoupled from the training batches captured at ``step_start``, or exact through the training
graph) and the optimiser's predicted update parts; at ``step_end`` (after the optimiser step and
the EMA step's decoupled decay) it reads ∇θ L from the trainer's ``.grad`` (the decoupled
coupling is the rest), maps every group to the observations at the parameters saved before the
step (-eta T K G per group), and measures the change at the observations. Tables:
``observations`` (once, step 0), ``dynamics`` (groups and totals), ``realised`` (update parts,
measured change, BN drift, residual) and ``dynamics_samples`` (exact per-sample contributions of
tracked training samples).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from torch import Tensor

from lddyn.config import RecordConfig
from lddyn.data.sets import unit_images
from lddyn.dynamics import tidy
from lddyn.dynamics.decompose import (
    TrackedSamples,
    decompose_grads,
    take_group_gradients,
    track_samples,
)
from lddyn.dynamics.decoupled import ForwardCapture
from lddyn.dynamics.functional import Params, clone_state, frozen_state, trainable_params
from lddyn.dynamics.groups import DECOUPLED, GroupGradients, live_total, named_trainable
from lddyn.dynamics.realised import UpdatePrediction, predict_update
from lddyn.losses import LossTerm
from lddyn.train.events import Callback
from lddyn.train.forward import baseline_image
from lddyn.train.optim import current_lr

BYTES_PER_ROW = 8.0  # measured on a digits run: ~7.5 bytes per row of dictionary-encoded parquet


@dataclass
class PendingStep:
    """What ``loss_terms`` leaves for ``step_end``: group gradients and the state before the step."""

    step: int
    lr: float
    grads: GroupGradients
    names: list[str]
    params: Params  # trainable parameters before the optimiser step
    state: Params  # buffers at ``loss_terms``
    tracked: TrackedSamples | None
    prediction: UpdatePrediction | None


@dataclass
class ObservationSet:
    x: Tensor  # (O, C, H, W) normalised inputs
    rows: list[dict[str, Any]]  # one metadata row per observation
    tracked: dict[str, Tensor]  # "labeled" / "unlabeled" -> set positions of tracked samples


def spread_over_classes(labels: Tensor, n: int) -> Tensor:
    """The first ``n`` positions taking classes round-robin (first of each class, then second, ...)."""
    rank = torch.zeros_like(labels)
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        rank[idx] = torch.arange(len(idx))
    order = torch.argsort(rank * (int(labels.max()) + 2) + labels, stable=True)
    return order[:n]


def image_hash(x: Tensor) -> str:
    return hashlib.sha1(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def build_observations(trainer, cfg: RecordConfig) -> ObservationSet:  # noqa: ANN001
    data, norm = trainer.data, trainer.aug.normalize
    xs, rows = [], []

    def add(x: Tensor, kind: str, label: int, index: int) -> None:
        rows.append(
            dict(
                step=0,
                observation=len(rows),
                kind=kind,
                true_label=label,
                dataset_index=index,
                image_hash=image_hash(x),
            )
        )
        xs.append(x)

    for pos in spread_over_classes(data.y_test.cpu(), cfg.obs_per_class * data.num_classes).tolist():
        add(norm(data.x_test[pos : pos + 1])[0], "test", int(data.y_test[pos]), pos)
    if cfg.baseline:
        for k in trainer.cfg.probe.colors:
            add(baseline_image(k, data.image_shape, trainer.device)[0], "baseline", -1, -1)
    tracked = {}
    for which, x, y in (("labeled", data.x_lb, data.y_lb), ("unlabeled", data.x_ulb, data.y_ulb)):
        tracked[which] = (
            spread_over_classes(y.cpu(), cfg.tracked) if cfg.tracked else torch.zeros(0, dtype=torch.long)
        )
        for pos in tracked[which].tolist():
            add(norm(unit_images(x[pos : pos + 1]))[0], which, int(y[pos]), pos)
    return ObservationSet(torch.stack(xs), rows, tracked)


def recorded_steps(cfg: RecordConfig, total: int) -> int:
    return sum(1 for s in range(1, total + 1) if is_recorded(cfg, s))


def is_recorded(cfg: RecordConfig, step: int) -> bool:
    return step <= cfg.dense_until or step % cfg.every == 0


def estimate_rows(cfg: RecordConfig, num_obs: int, num_classes: int, terms: int = 2) -> int:
    """An upper bound on rows per recorded step: every grouping value present in every term (one
    labeled term, whose correctness is always "not applicable", the others counted as unlabeled),
    plus the BatchNorm coupling of decoupled groups."""
    per_term = (num_classes if "source_class" in cfg.by else 1) * (2 if "status" in cfg.by else 1)
    correct = "correct" in cfg.by
    if "term" in cfg.by:
        groups = per_term + per_term * (2 if correct else 1) * max(terms - 1, 0)
    else:
        groups = per_term * (3 if correct else 1)  # right, wrong and not applicable in one term
    groups += 1 if cfg.groups == DECOUPLED else 0
    per_obs = num_obs * num_classes
    rows = (2 * groups + 2) * per_obs
    if cfg.realised:
        rows += (groups + 2 + 3) * per_obs
    return rows


class DynamicsRecorder(Callback):
    name = "dynamics"

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stderr)
        self.obs: ObservationSet | None = None
        self.pending: PendingStep | None = None
        self.capture: ForwardCapture | None = None

    @property
    def cfg(self) -> RecordConfig:
        return self.trainer_cfg.record

    def on_train_start(self, trainer) -> None:  # noqa: ANN001
        self.trainer_cfg = trainer.cfg
        self.obs = build_observations(trainer, self.cfg)
        if trainer.state.step == 0:
            trainer.sink.add("observations", self.obs.rows)
        steps = recorded_steps(self.cfg, trainer.cfg.train.steps)
        terms = 2 + sum(m.extra_terms for m in trainer.methods)
        rows = steps * estimate_rows(self.cfg, len(self.obs.x), trainer.data.num_classes, terms)
        self.console.print(
            f"dynamics: {len(self.obs.x)} observations x {trainer.data.num_classes} classes at {steps} steps"
            f": at most {rows:,} rows, about {rows * BYTES_PER_ROW / 2**20:.1f} MiB on disk",
            highlight=False,
            soft_wrap=True,
        )

    def on_step_start(self, trainer, ctx) -> None:  # noqa: ANN001
        self._stop_capture()
        if self.cfg.groups == DECOUPLED and is_recorded(self.cfg, ctx.step):
            self.capture = ForwardCapture(trainer.model)  # the step's training batches

    def _stop_capture(self) -> list | None:
        calls = self.capture.remove() if self.capture is not None else None
        self.capture = None
        return calls

    def on_loss_terms(self, trainer, ctx, terms: list[LossTerm]) -> None:  # noqa: ANN001
        self.pending = None
        calls = self._stop_capture()
        if not is_recorded(self.cfg, ctx.step):
            return
        assert self.obs is not None
        model, lr, x = trainer.model, current_lr(trainer.optimizer), self.obs.x
        grads = take_group_gradients(model, terms, self.cfg.by, self.cfg.groups, calls)
        if grads.mode == DECOUPLED and getattr(trainer.dist, "world", 1) > 1:
            grads.set_total(live_total(model, terms))  # .grad will hold the all-reduced gradient
        track, inputs = self._track(ctx.step, terms)
        tracked = track_samples(model, terms, grads, x, track, inputs or None) if track else None
        prediction = None
        if self.cfg.realised:
            decay = trainer.cfg.optim.ema_weight_decay * lr
            prediction = predict_update(
                model,
                trainer.optimizer,
                terms,
                x,
                by=self.cfg.by,
                post_decay=decay,
                step=ctx.step,
                grads=grads,
            )
        params, state = clone_state(trainable_params(model)), clone_state(frozen_state(model))
        names = [t.name for t in terms]
        self.pending = PendingStep(ctx.step, lr, grads, names, params, state, tracked, prediction)

    def _track(self, step: int, terms: list[LossTerm]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        every = self.cfg.per_sample_every
        if not every or step % every or self.obs is None:
            return {}, {}
        track, inputs = {}, {}
        for term in terms:
            wanted = self.obs.tracked["labeled" if term.labeled else "unlabeled"]
            rows = torch.nonzero(torch.isin(term.index.cpu(), wanted)).flatten()
            if len(rows):
                track[term.name] = rows
                if term.inputs is not None:
                    inputs[term.name] = term.inputs[rows.to(term.inputs.device)]
        return track, (inputs if len(inputs) == len(track) else {})

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        grads, prediction = pending.grads, pending.prediction
        assert self.obs is not None
        if grads.mode == DECOUPLED and grads.coupling is None:  # ∇θ L from the trainer's backward
            grads.set_total({n: p.grad for n, p in named_trainable(trainer.model).items()})
        decomposition = decompose_grads(
            trainer.model,
            grads,
            pending.names,
            self.obs.x,
            pending.lr,
            step=pending.step,
            tracked=pending.tracked,
            params=pending.params,
            state=pending.state,
        )
        phase = ctx.phase
        trainer.sink.add_columns("dynamics", _typed(decomposition.to_columns(), phase))
        if decomposition.tracked is not None:
            trainer.sink.add_columns("dynamics_samples", _typed(decomposition.sample_columns(), phase))
        if prediction is not None:
            measured = prediction.measure(trainer.model).to_columns()
            trainer.sink.add_columns("realised", _typed(measured, phase))


def _typed(columns: dict[str, Any], phase: str) -> pd.DataFrame:
    """A typed frame of tidy columns plus the step's training ``phase``."""
    frame = tidy.frame(columns)
    frame["phase"] = pd.Categorical.from_codes(np.zeros(len(frame), dtype=np.int8), [phase])
    return frame
