"""Bias accumulation: Σ over recorded steps of each source class's push on each target class.

Left: a source × target map of Σ_steps Δlog π (mean over test observations), sources ordered head
to tail; under imbalance the head rows are the large ones, and their mass lands on their own
columns, which is how a long-tailed batch pushes the classifier toward the majority classes.
Middle: the same summed over sources, by loss term. Right: the running sum per target class over
training. The sums run over *recorded* steps only (every ``record.every``), a sample of the path.
The quantity is ``update_logp`` (the share of the optimiser's real update) unless asked otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from lddyn.analysis.dynamics import QUANTITY_LABELS, accumulated, contributions, cumulative_by_target
from lddyn.analysis.figures.theme import DIVERGING, HEAD_TO_TAIL, colors, legend_outside, new_figure


def plot(run_dirs: Sequence[Path], kind: str = "test", quantity: str = "update_logp") -> Figure:
    """Three panels for the first run; ``kind`` picks the observations averaged over."""
    run = Path(run_dirs[0])
    frame = contributions(run, quantity)
    label = f"Σ_steps {quantity}"
    if not (frame.kind == kind).any():
        raise ValueError(f"{run} has no observations of kind {kind!r}; kinds: {sorted(frame.kind.unique())}")
    fig, (ax_map, ax_term, ax_run) = new_figure(3, width=4.2, height=3.4)
    grid = accumulated(frame, kind).pivot(index="source_class", columns="target_class", values="value")
    grid = grid.reindex(grid.columns)  # a source class absent from every recorded batch: an empty row
    bound = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
    sns.heatmap(grid, ax=ax_map, cmap=DIVERGING, center=0, vmin=-bound, vmax=bound, cbar_kws={"label": label})
    ax_map.set(xlabel="target class", ylabel=f"source {HEAD_TO_TAIL}", title="push of each source class")
    by_term = accumulated(frame, kind, by=("term",)).pivot(
        index="target_class", columns="term", values="value"
    )
    names = {"sup": "supervised", "unsup": "consistency"}
    by_term.rename(columns=names).plot.bar(ax=ax_term, color=colors(len(by_term.columns)), width=0.8, rot=0)
    ax_term.axhline(0, color="black", lw=0.5)
    ax_term.set(xlabel=f"target {HEAD_TO_TAIL}", ylabel=label, title="summed over sources, by term")
    legend_outside(ax_term)
    running = cumulative_by_target(frame, kind)
    for cls, color in zip(running.columns, colors(len(running.columns)), strict=True):
        ax_run.plot(running.index, running[cls], color=color, label=str(cls))
    ax_run.axhline(0, color="black", lw=0.5)
    ax_run.set(xlabel="step", ylabel=f"running {label}", title="net push per target class")
    legend_outside(ax_run, title="target")
    fig.suptitle(f"{run.name}: bias accumulation at {kind} observations, {QUANTITY_LABELS[quantity]}")
    fig.tight_layout()
    return fig
