"""Pruning per class over time: the share of each class kept in the pool of every pass.

DyTrim prunes well-learned samples; because head classes are learned first, their share drops
first, which rebalances what the step sees. The right panel shows the 1/r weight of the kept
well-learned unlabeled samples (mean weight of the kept ones). Without pruning every line is 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lddyn.analysis.figures.theme import colors, legend_outside, new_figure
from lddyn.sinks.parquet import read_table


def draw_classes(ax: Axes, rows: pd.DataFrame, value: str) -> None:
    """One step line per class of ``value`` over the pass starts."""
    wide = rows.pivot_table(index="step", columns="cls", values=value, observed=True).sort_index()
    for cls, color in zip(wide.columns, colors(len(wide.columns)), strict=True):
        ax.step(wide.index, wide[cls], where="post", color=color, label=str(cls))


def plot(run_dirs: Sequence[Path]) -> Figure:
    run = Path(run_dirs[0])
    frame = read_table(run, "pruning")
    if frame.empty:
        raise FileNotFoundError(f"{run} has no pruning rows")
    frame = frame[frame.cls >= 0].assign(share=lambda f: f.kept / f.total)
    fig, axes = new_figure(3, width=3.8)
    for ax, which in zip(axes[:2], ("labeled", "unlabeled"), strict=True):
        draw_classes(ax, frame[frame.set == which], "share")
        ax.set(xlabel="step (pass start)", ylabel="kept / total", ylim=(-0.02, 1.05), title=f"{which} set")
    draw_classes(axes[2], frame[frame.set == "unlabeled"], "mean_weight")
    axes[2].set(xlabel="step (pass start)", ylabel="mean loss weight of kept", title="unlabeled rescaling")
    legend_outside(axes[2], title="class")  # shared by the three panels
    fig.suptitle(f"{run.name}: pruning per class (head → tail)")
    fig.tight_layout()
    return fig
