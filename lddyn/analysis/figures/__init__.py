"""One module per figure family; each exposes ``plot(run_dirs, **options) -> Figure``.

``FIGURES`` maps names to plot functions, ``REQUIRES`` names the tables each one reads, and
``MULTI_RUN`` the figures that compare runs (the others draw the first run given). Importing this
package chooses no matplotlib backend: that is for headless entry points (the CLI, the tests).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import duckdb
from matplotlib.figure import Figure

from lddyn.analysis.dynamics import has_table
from lddyn.analysis.figures import (
    baseline_prior,
    bias_accumulation,
    pruning,
    realised,
    recall,
    step_dynamics,
    unified,
)
from lddyn.analysis.figures.theme import save
from lddyn.sinks.parquet import CorruptPartError

FIGURES: dict[str, Callable[..., Figure]] = {
    "recall": recall.plot,
    "baseline_prior": baseline_prior.plot,
    "step_dynamics": step_dynamics.plot,
    "bias_accumulation": bias_accumulation.plot,
    "unified": unified.plot,
    "pruning": pruning.plot,
    "realised": realised.plot,
}
REQUIRES: dict[str, tuple[str, ...]] = {
    "recall": ("metrics",),
    "baseline_prior": ("baseline",),
    "step_dynamics": ("dynamics", "observations"),
    "bias_accumulation": ("dynamics", "observations"),
    "unified": ("dynamics", "observations"),
    "pruning": ("pruning",),
    "realised": ("dynamics", "observations"),
}
MULTI_RUN = ("recall", "unified")
# What a figure raises when its input is missing, empty or unreadable (not a bug in the figure).
SKIPPABLE = (FileNotFoundError, ValueError, KeyError, CorruptPartError, duckdb.Error)


def available(run_dir: Path) -> list[str]:
    """Figures whose input tables the run has (at least one readable-looking part each)."""
    return [name for name, tables in REQUIRES.items() if all(has_table(run_dir, t) for t in tables)]


def plot_all(run_dir: Path, out: Path) -> list[Path]:
    """Every available figure of one run, as ``out/NAME.pdf`` and ``out/NAME.png``.

    A figure whose tables exist but cannot be drawn (e.g. no test observations were recorded) is
    skipped with a warning: the end of a finished run must not fail on a figure.
    """
    written: list[Path] = []
    for name in available(run_dir):
        try:
            written += save(FIGURES[name]([run_dir]), out / name)
        except SKIPPABLE as exc:
            warnings.warn(f"figure {name} not drawn for {run_dir}: {exc}", stacklevel=2)
    return written


__all__ = ["FIGURES", "MULTI_RUN", "REQUIRES", "SKIPPABLE", "available", "plot_all", "save"]
