"""The trainer: builds a run's parts from its config and runs a loop that only dispatches events.

Everything that acts at a step boundary (EMA, evaluation, probes, tables, checkpoints, the
progress display, the dynamics recorder) is a callback; every debiasing method is a plug-in.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lddyn.config import RunConfig
from lddyn.data.augment import AugmentConfig, Augmenter
from lddyn.data.samplers import IndexStream, PassRules, RandomPasses
from lddyn.data.sets import SSLData, build_data
from lddyn.losses import LossTerm, total_loss
from lddyn.methods import Method, RunInfo, StepContext, build_methods
from lddyn.methods.base import DEFAULT_PHASE
from lddyn.models import build_model
from lddyn.sinks.parquet import ParquetSink
from lddyn.train.device import (
    autocast,
    compile_model,
    float_data,
    place_data,
    prepare_model,
    resolve_device,
    set_deterministic,
    step_dtype,
)
from lddyn.train.distributed import Distributed, world_from_env
from lddyn.train.events import Callback
from lddyn.train.forward import baseline_image, baseline_logits
from lddyn.train.optim import build_optimizer
from lddyn.train.step import fixmatch_terms


@dataclass
class TrainState:
    step: int = 0  # steps completed
    progress: float = 0.0  # schedule position (equals step unless a method shortens the schedule)
    wall_seconds: float = 0.0  # training wall time, summed over resumed segments


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        callbacks: list[Callback] | None = None,
        data: SSLData | None = None,
    ) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = resolve_device(cfg.train.device, world_from_env()[2])
        self.dist = Distributed.from_config(cfg, self.device)  # one process: every call is a no-op
        set_deterministic(cfg.train.deterministic)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self.dtype = step_dtype(cfg.train)  # of the model, the batches and the optimiser state
        placed = place_data(data or build_data(cfg.data), self.device, cfg.train.data_placement)
        self.data = float_data(placed, self.dtype)
        self.aug = Augmenter(self._augment_config())
        self.model = self._build_model().to(self.device)
        labeled_counts = self.data.class_counts("labeled").cpu()
        batch = cfg.ssl.batch_size
        self.info = RunInfo(
            self.data,
            cfg.train.steps,
            labeled_counts,
            seed=cfg.train.seed,
            labeled_batch=batch,
            unlabeled_batch=batch * cfg.ssl.uratio,
            passes=PassRules(cfg.ssl.loader_restart, cfg.ssl.loader_lookahead),
        )
        self.methods = build_methods(cfg.methods, self.info)
        for method in self.methods:  # extra heads are part of the model: trained, averaged, saved
            self.model = method.extend_model(self.model).to(self.device)
        self.model = self.dist.prepare_model(prepare_model(self.model, cfg.train)).to(self.device, self.dtype)
        self.term_builder = self._term_builder()
        self.ema_model = copy.deepcopy(self.model).eval()
        for p in self.ema_model.parameters():
            p.requires_grad_(False)
        compile_model(self.model, cfg.train)  # after the EMA copy, which stays eager
        self.optimizer, self.scheduler = build_optimizer(cfg.optim, self.model, cfg.train.steps)
        self.dist.attach(self.optimizer)
        self.streams = {which: self._stream(which) for which in ("labeled", "unlabeled")}
        self.gen_data = torch.Generator().manual_seed(cfg.train.seed)
        self.gen_aug = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.sink = ParquetSink(self.run_dir)
        self.state = TrainState()
        self.callbacks = list(callbacks or [])
        shape = self.data.image_shape
        self.baseline = baseline_image(cfg.ssl.baseline_value, shape, self.device, self.dtype)

    # --- construction -----------------------------------------------------------------------------

    def _augment_config(self) -> AugmentConfig:
        d = self.cfg.data
        return AugmentConfig(
            image_size=self.data.image_shape[-1],
            mean=self.data.mean,
            std=self.data.std,
            flip=d.flip,
            ra_n=d.ra_n,
            ra_m=d.ra_m,
        )

    def _build_model(self) -> torch.nn.Module:
        m = self.cfg.model
        return build_model(
            m.name,
            num_classes=self.data.num_classes,
            image_shape=self.data.image_shape,
            width=m.width,
            norm=m.norm,
            bn_momentum=m.bn_momentum,
            bn_eps=m.bn_eps,
        )

    def _stream(self, which: str) -> IndexStream:
        offered = [(m.name, s) for m in self.methods if (s := m.stream(which)) is not None]
        if len(offered) > 1:
            names = [name for name, _ in offered]
            raise ValueError(f"methods {names} each replace the {which} sampler; use at most one of them")
        if offered:
            return offered[0][1]
        size = len(self.data.y_lb if which == "labeled" else self.data.y_ulb)
        return RandomPasses(size, rules=self.info.passes)

    def _term_builder(self) -> Method | None:
        """The one method that builds the step's base terms itself, if any (else FixMatch does)."""
        builders = [m for m in self.methods if type(m).build_terms is not Method.build_terms]
        if len(builders) > 1:
            names = [m.name for m in builders]
            raise ValueError(f"methods {names} each replace the step's base terms; use at most one of them")
        return builders[0] if builders else None

    # --- the loop ---------------------------------------------------------------------------------

    def dispatch(self, event: str, *args: object) -> None:
        for cb in self.callbacks:
            getattr(cb, f"on_{event}")(self, *args)

    @property
    def finished(self) -> bool:
        return self.state.progress >= self.cfg.train.steps

    def student_baseline_logits(self) -> Tensor:
        """The student's logits on the baseline image, forwarded in the mode the config asks for."""
        return baseline_logits(self.model, self.baseline, self.cfg.ssl.pseudo_label_mode == "train")

    def fit(self) -> TrainState:
        self.dispatch("train_start")
        while not self.finished:
            started = time.perf_counter()
            ctx, terms = self.train_step()
            self.state.wall_seconds += time.perf_counter() - started
            self.dispatch("step_end", ctx, terms)
        self.dispatch("train_end")
        return self.state

    def train_step(self) -> tuple[StepContext, list[LossTerm]]:
        step = self.state.step + 1
        self.model.train()
        ctx = self.context(step)
        self.dispatch("step_start", ctx)
        with autocast(self.cfg.train, self.device):
            terms = self.step_terms(ctx)
        self.dispatch("loss_terms", ctx, terms)
        self.optimizer.zero_grad(set_to_none=True)
        total_loss(terms).backward()
        self.optimizer.step()
        self.scheduler.step()
        terms = self.dist.after_step(self.model, ctx, terms)  # the global step's terms, in every process
        for method in self.methods:
            method.after_step(ctx, terms)
        self.state.step = step
        self.state.progress += math.prod(m.schedule_increment() for m in self.methods)
        return ctx, terms

    def context(self, step: int) -> StepContext:
        """The context of 1-based ``step``, in the phase the methods name (``main`` when none does)."""
        phase = next((p for m in self.methods if (p := m.phase(step)) is not None), DEFAULT_PHASE)
        baseline = self.student_baseline_logits
        return StepContext(step, self.state.progress, self.cfg.train.steps, self.model, baseline, phase=phase)

    def step_terms(self, ctx: StepContext) -> list[LossTerm]:
        """The loss terms of one step (graph alive): the base terms, then every method's reshaping."""
        builder = self.term_builder
        terms = builder.build_terms(self, ctx) if builder is not None else None
        if terms is None:
            terms = fixmatch_terms(self, ctx)
        for method in self.methods:
            terms = method.reshape_losses(ctx, terms)
        return terms
