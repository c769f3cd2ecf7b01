"""``--record dynamics``: lddyn's trainer through the public ``lddyn.dynamics.Recorder``.

The observation sets come from ``record.*`` (test images per class and tracked training samples
with running statistics; the baseline images of ``probe.colors`` in ``record.baseline_norm``
mode, their own statistics by default). At a recorded step the block opens at ``step_start``
(before the step's first forward), every loss term is registered at ``loss_terms`` and the block
closes at ``step_end`` (after the optimiser step and the EMA step's decoupled decay, callback
order: EMA first). Tables: ``observations`` (once) and ``dynamics`` (docs/dynamics.md).
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from torch import Tensor

from lddyn.config import ConfigError, RecordConfig
from lddyn.data.sets import unit_images
from lddyn.dynamics import ObservationSet, Recorder, StepRecord
from lddyn.train.events import Callback
from lddyn.train.forward import baseline_image

BYTES_PER_ROW = 6.0  # measured on a digits run: dictionary-encoded parquet


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


def observation_sets(trainer, cfg: RecordConfig) -> list[ObservationSet]:  # noqa: ANN001
    """test (running), baseline (``cfg.baseline_norm``), labeled / unlabeled tracked (running)."""
    data, norm = trainer.data, trainer.aug.normalize
    pos = spread_over_classes(data.y_test.cpu(), cfg.obs_per_class * data.num_classes)
    x_test, y_test = data.x_test[pos.to(data.x_test.device)], data.y_test.cpu()[pos]
    sets = [ObservationSet("test", norm(x_test), "running", y_test, pos)]
    if cfg.baseline:
        x = torch.cat([baseline_image(k, data.image_shape, trainer.device) for k in trainer.cfg.probe.colors])
        sets.append(ObservationSet("baseline", x, cfg.baseline_norm))
    for which, x, y in (("labeled", data.x_lb, data.y_lb), ("unlabeled", data.x_ulb, data.y_ulb)):
        pos = spread_over_classes(y.cpu(), cfg.tracked) if cfg.tracked else []
        if len(pos):
            xs = norm(unit_images(x[pos.to(x.device)]))
            sets.append(ObservationSet(which, xs, "running", y[pos.to(y.device)].cpu(), pos))
    return [ObservationSet(s.name, s.x.to(trainer.device), s.norm, s.labels, s.index) for s in sets]


def is_recorded(cfg: RecordConfig, step: int) -> bool:
    return step <= cfg.dense_until or step % cfg.every == 0


def recorded_steps(cfg: RecordConfig, total: int) -> int:
    return sum(1 for s in range(1, total + 1) if is_recorded(cfg, s))


def estimate_rows(cfg: RecordConfig, num_obs: int, num_classes: int, terms: int = 2) -> int:
    """An upper bound on rows per recorded step: every grouping value present in every term (one
    labeled term, whose correctness is always "not applicable"), plus the BatchNorm coupling;
    kg, gd_logp and update_logp per group, four update parts, measured, bn_drift and residual."""
    per_term = (num_classes if "source_class" in cfg.by else 1) * (3 if "status" in cfg.by else 1)
    correct = "correct" in cfg.by
    if "term" in cfg.by:
        groups = per_term + per_term * (2 if correct else 1) * max(terms - 1, 0)
    else:
        groups = per_term * (3 if correct else 1)
    groups += 1 if cfg.groups == "decoupled" else 0
    return (3 * groups + 4 + 3) * num_obs * num_classes


class DynamicsRecorder(Callback):
    name = "dynamics"

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stderr)
        self.block: StepRecord | None = None

    def on_train_start(self, trainer) -> None:  # noqa: ANN001
        cfg = self.cfg = trainer.cfg.record
        if trainer.cfg.train.compile:
            raise ConfigError("record.dynamics", True, "false with train.compile (it hooks eager layers)")
        sets = observation_sets(trainer, cfg)
        self.recorder = Recorder(trainer.model, trainer.optimizer, sets, by=cfg.by, groups=cfg.groups)
        if trainer.state.step == 0:
            frame = self.recorder.observations()
            frame["image_hash"] = [image_hash(x) for s in sets for x in s.x]
            trainer.sink.add_columns("observations", frame.assign(step=0))
        steps, num_obs = recorded_steps(cfg, trainer.cfg.train.steps), sum(len(s.x) for s in sets)
        terms = 2 + sum(m.extra_terms for m in trainer.methods)
        rows = steps * estimate_rows(cfg, num_obs, trainer.data.num_classes, terms)
        self.console.print(
            f"dynamics: {num_obs} observations x {trainer.data.num_classes} classes at {steps} steps"
            f": at most {rows:,} rows, about {rows * BYTES_PER_ROW / 2**20:.1f} MiB on disk",
            highlight=False,
            soft_wrap=True,
        )

    def on_step_start(self, trainer, ctx) -> None:  # noqa: ANN001
        if is_recorded(self.cfg, ctx.step):
            self.block = self.recorder.step(ctx.step).__enter__()

    def on_loss_terms(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        if self.block is None:
            return
        for t in terms:
            columns = {"source_class": t.source_class, "correct": t.correct, "status": t.status}
            self.block.term(t.name, logits=t.logits, losses=t.per_sample(), inputs=t.inputs, **columns)

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        if self.block is None:
            return
        block, self.block = self.block, None
        block.__exit__(None, None, None)
        frame = block.rows()
        n = len(frame)
        frame["phase"] = pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), [ctx.phase])
        frame["grad_mode"] = pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), [self.cfg.groups])
        trainer.sink.add_columns("dynamics", frame)

    def on_train_end(self, trainer) -> None:  # noqa: ANN001
        if self.block is not None:  # a run stopped inside a recorded step: leave the model as it was
            self.block.__exit__(RuntimeError, None, None)
            self.block = None
