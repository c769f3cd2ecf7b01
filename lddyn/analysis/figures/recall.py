"""Per-class recall, head to tail, at the last evaluation of each run (raw and debiased).

One colour per run; solid lines are the debiased logits (after the methods' test-time hooks, e.g.
CDMAD's baseline subtraction), dashed the raw ones where they differ, so a test-time method's
gain on the tail classes is the gap between the two lines of one colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lddyn.analysis.dynamics import run_label
from lddyn.analysis.figures.theme import HEAD_TO_TAIL, colors, new_figure
from lddyn.analysis.load import distinct_names
from lddyn.sinks.parquet import read_table


def legend_names(run_dirs: Sequence[Path]) -> list[str]:
    """Distinct run names (parent folders added where two runs share one), with the methods when
    the name does not say them."""
    out = []
    for run_dir, name in zip(run_dirs, distinct_names(run_dirs), strict=True):
        methods = run_label(run_dir)
        out.append(name if methods in name else f"{name} ({methods})")
    return out


def draw_run(ax: Axes, last: pd.DataFrame, name: str, color: tuple) -> None:
    views = {d: rows.sort_values("cls") for d, rows in last.groupby("debiased")}
    raw, debiased = views.get(False), views.get(True)
    same = raw is not None and debiased is not None and np.allclose(raw.value, debiased.value)
    if same or debiased is None:
        rows = raw if raw is not None else debiased
        ax.plot(rows.cls, rows.value, marker="o", ms=3, color=color, label=name)
        return
    ax.plot(debiased.cls, debiased.value, marker="o", ms=3, color=color, label=f"{name}, debiased")
    if raw is not None:
        ax.plot(raw.cls, raw.value, marker="o", ms=2, ls="--", color=color, label=f"{name}, raw")


def plot(run_dirs: Sequence[Path]) -> Figure:
    fig, (ax,) = new_figure(1, width=5.0)
    names = legend_names(run_dirs)
    for run_dir, name, color in zip(run_dirs, names, colors(len(run_dirs)), strict=True):
        metrics = read_table(run_dir, "metrics")
        last = metrics[(metrics.step == metrics.step.max()) & (metrics.metric == "recall")]
        draw_run(ax, last, name, color)
    ax.set(
        xlabel=HEAD_TO_TAIL, ylabel="recall", ylim=(-0.02, 1.02), title="per-class recall, last evaluation"
    )
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig
