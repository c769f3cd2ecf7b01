"""The training progress line at 80 columns keeps its step count, speed and time left whole: the
loss quantities take the width that is left."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from lddyn.train.callbacks import progress

QUANTITIES = {"loss_sup": 1.2345, "loss_unsup": 0.5432, "mask_ratio": 0.9876, "kept_labeled": 0.75}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def shown_lines(console: Console, steps: int, total: int) -> list[str]:
    """Drive the display over ``steps`` steps; the lines written, control sequences removed."""
    state = SimpleNamespace(step=0, progress=0)
    trainer = SimpleNamespace(
        state=state, cfg=SimpleNamespace(train=SimpleNamespace(steps=total)), finished=False
    )
    display = progress.ProgressDisplay(console, lines=total // steps)
    display.on_train_start(trainer)
    for step in range(1, steps + 1):
        state.step = state.progress = step
        display.on_step_end(trainer, None, None)
    if display.bar is not None:
        display.bar.refresh()
    display.on_train_end(trainer)
    text = ANSI.sub("", console.file.getvalue())
    return [line.rstrip() for line in re.split(r"[\r\n]", text) if line.strip()]


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_line_at_80_columns_keeps_speed_and_eta(
    monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    monkeypatch.setattr(progress, "step_quantities", lambda trainer, ctx, terms: QUANTITIES)
    console = Console(file=io.StringIO(), width=80, force_terminal=terminal, color_system="standard")
    last = shown_lines(console, steps=30, total=300)[-1]
    assert "30/300" in last and re.search(r"\d it/s", last), last
    assert re.search(r"eta (\d+:\d\d:\d\d|\d+s)", last), last
    assert "sup=1.234" in last  # the quantities follow, as far as the width allows
    if terminal:
        assert len(last) <= 80 and last.endswith("…"), last  # cut at the end, not in the middle
