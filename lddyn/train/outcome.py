"""How a run ended, written to run.json whatever stopped it.

Every exception between writing run.json and the last step, from building the data to a loss that
stops being finite, leaves ``status: failed`` with the error; Ctrl-C and SIGTERM (what schedulers
send before killing a job) leave ``status: interrupted``. Only SIGKILL, which no process can see,
leaves ``running`` behind; a sweep resumes such a run like an interrupted one.
"""

from __future__ import annotations

import signal
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from lddyn.sinks.runinfo import set_status

if TYPE_CHECKING:
    from lddyn.train.trainer import Trainer


class RunInterrupted(KeyboardInterrupt):
    """A signal asked the run to stop (SIGTERM); handled like Ctrl-C."""


class NonFiniteLoss(RuntimeError):
    """A loss term (or the parameters about to be saved) stopped being finite."""


def describe(exc: BaseException) -> str:
    """One line: the exception's type and message (``KeyboardInterrupt`` has no message)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises RunInterrupted (in the main thread; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise RunInterrupted(f"stopped by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Outcome:
    """Filled in while the block runs: the trainer once it exists (for its step and its rows)."""

    trainer: Trainer | None = None

    @property
    def step(self) -> int:
        return self.trainer.state.step if self.trainer is not None else 0


@contextmanager
def recorded_outcome(run_dir: Path, main: bool) -> Iterator[Outcome]:
    """Mark the run failed or interrupted in run.json if the block raises, then re-raise."""
    outcome = Outcome()
    try:
        with sigterm_interrupts():
            yield outcome
    except BaseException as exc:
        if outcome.trainer is not None:
            outcome.trainer.sink.flush()  # rows past the last checkpoint are dropped again on resume
        if main:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=8))
            set_status(run_dir, status, error=describe(exc), traceback=tb, step=outcome.step)
        raise
