"""Progress display: a rich bar on a terminal, plain periodic lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

from lddyn.train.callbacks.tables import step_quantities
from lddyn.train.events import Callback

SHOWN = ("loss_sup", "loss_unsup", "mask_ratio", "kept_labeled", "kept_unlabeled")


def describe(q: dict[str, float]) -> str:
    return " ".join(f"{k.replace('loss_', '')}={q[k]:.3f}" for k in SHOWN if k in q)


def columns() -> list[ProgressColumn]:
    """Step count, speed and time left first, each kept whole; the loss quantities last, taking the
    width that is left and cut with an ellipsis, so a narrow terminal keeps it/s and the ETA."""
    fixed = dict(table_column=Column(no_wrap=True))
    return [
        TextColumn("[bold]train", **fixed),
        BarColumn(bar_width=10, table_column=Column(no_wrap=True)),
        TextColumn("{task.completed:.0f}/{task.total:.0f}", **fixed),
        TextColumn("{task.fields[rate]}", **fixed),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        TextColumn("eta", **fixed),
        TimeRemainingColumn(table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
    ]


class ProgressDisplay(Callback):
    name = "progress"

    def __init__(self, console: Console | None = None, lines: int = 20) -> None:
        self.console = console or Console(file=sys.stderr)
        self.lines = lines
        self.bar: Progress | None = None
        self.task = 0
        self.t0 = 0.0
        self.start_step = 0

    def on_train_start(self, trainer) -> None:  # noqa: ANN001
        self.t0, self.start_step = time.perf_counter(), trainer.state.step
        if self.console.is_terminal:
            self.bar = Progress(*columns(), console=self.console, expand=True)
            self.bar.start()
            self.task = self.bar.add_task("train", total=trainer.cfg.train.steps, info="", rate="")
            self.bar.update(self.task, completed=trainer.state.progress)

    def _rate(self, trainer) -> float:  # noqa: ANN001
        done = trainer.state.step - self.start_step
        return done / max(time.perf_counter() - self.t0, 1e-9)

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        step, total = trainer.state.step, trainer.cfg.train.steps
        if self.bar is not None:
            if step % 5 == 0 or trainer.finished:
                info = describe(step_quantities(trainer, ctx, terms))
                self.bar.update(
                    self.task,
                    completed=trainer.state.progress,
                    info=info,
                    rate=f"{self._rate(trainer):.1f} it/s",
                )
            return
        every = max(total // self.lines, 1)
        if step % every == 0 or trainer.finished:
            rate = self._rate(trainer)
            eta = (total - trainer.state.progress) / max(rate, 1e-9)
            info = describe(step_quantities(trainer, ctx, terms))
            self.console.print(
                f"step {step}/{total} {rate:.1f} it/s eta {eta:.0f}s {info}", highlight=False, soft_wrap=True
            )

    def on_train_end(self, trainer) -> None:  # noqa: ANN001
        if self.bar is not None:
            self.bar.stop()
