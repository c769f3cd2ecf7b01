"""Per-class recall, head to tail, at the last evaluation of each run (raw and debiased)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from lddyn.analysis.figures.theme import new_figure
from lddyn.sinks.parquet import read_table


def plot(run_dirs: Sequence[Path]) -> Figure:
    fig, (ax,) = new_figure(1, width=5.0)
    for run_dir in run_dirs:
        metrics = read_table(run_dir, "metrics")
        last = metrics[(metrics.step == metrics.step.max()) & (metrics.metric == "recall")]
        for debiased, rows in last.groupby("debiased"):
            label = f"{Path(run_dir).name} ({'debiased' if debiased else 'raw'})"
            ax.plot(rows.cls, rows.value, marker="o", ls="-" if debiased else "--", label=label)
    ax.set(xlabel="class (head to tail)", ylabel="recall", ylim=(0, 1.02), title="per-class recall")
    ax.legend(fontsize="x-small")
    return fig
