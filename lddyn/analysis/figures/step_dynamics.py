"""The dynamics of one step (the paper's MNIST figure).

For a few observation points, the first-order change of log π for every target class, split into
the supervised term and the consistency term, the latter by whether the pseudo-label was correct,
plus any method-specific term, the BatchNorm coupling (the part of the step that flows through the
batch statistics, attributable to no single sample) and, for the optimiser's update, its parts
that belong to no group (momentum carry, decays). By default the quantity is ``update_logp``, each
group's share of the update the optimiser really made (Adam through its preconditioner); the
measured change (minus BatchNorm drift) is drawn next to it. ``quantity="gd_logp"`` shows the
plain-gradient-descent formula −η T K G instead.
Reading it: the bars of the observation's own class (shaded) say which part of the loss pulled its
prediction up or down at that step; wrong pseudo-labels push mass toward the classes they name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lddyn.analysis.dynamics import QUANTITY_AXES, QUANTITY_LABELS, contributions, quantity_rows, step_split
from lddyn.analysis.figures.theme import colors, new_figure

KEYS = ["observation", "target_class"]


def default_observations(obs: pd.DataFrame) -> list[int]:
    """Test images of the head, a middle and the tail class, then the first baseline image."""
    test = obs[obs.kind == "test"].sort_values(["true_label", "observation"])
    labels = sorted(test.true_label.unique())
    chosen = [labels[0], labels[len(labels) // 2], labels[-1]] if labels else []
    picked = [int(test[test.true_label == c].observation.iloc[0]) for c in dict.fromkeys(chosen)]
    baseline = obs[obs.kind == "baseline"].observation
    return picked + [int(baseline.iloc[0])] if len(baseline) else picked


def describe(row: pd.Series) -> str:
    if row.kind == "baseline":
        return f"obs {row.observation}: baseline image"
    return f"obs {row.observation}: {row.kind} image, class {row.true_label}"


def draw_panel(
    ax: Axes, split: pd.DataFrame, total: pd.Series, measured: pd.Series | None, info: pd.Series, ylabel: str
) -> None:
    """Grouped bars per target class, one per split, the total as a black dot, the measured change
    (minus BatchNorm drift) as a cross."""
    columns = [c for c in split.columns if c not in KEYS]
    x, width = split.target_class.to_numpy(), 0.8 / max(len(columns), 1)
    for i, (name, color) in enumerate(zip(columns, colors(len(columns)), strict=True)):
        ax.bar(x + (i - (len(columns) - 1) / 2) * width, split[name], width, label=name, color=color)
    ax.plot(total.index, total.values, "o", color="black", ms=3, label="total (Σ of the splits)")
    if measured is not None:
        ax.plot(measured.index, measured.values, "x", color="black", ms=5, label="measured − BN drift")
    if info.true_label >= 0:
        ax.axvspan(info.true_label - 0.5, info.true_label + 0.5, color="grey", alpha=0.15, lw=0)
    ax.axhline(0, color="black", lw=0.5)
    ax.set(xlabel="target class", ylabel=ylabel, title=describe(info), xticks=np.unique(x))


def measured_change(run: Path, step: int) -> pd.Series | None:
    """measured − bn_drift per (observation, target class) at ``step``: what the parameters did."""
    rows = quantity_rows(run, "measured", f"step = {step}")
    if rows.empty:
        return None
    drift = quantity_rows(run, "bn_drift", f"step = {step}").set_index(KEYS).value
    return rows.set_index(KEYS).value.sub(drift, fill_value=0.0)


def plot(
    run_dirs: Sequence[Path],
    step: int | None = None,
    observations: Sequence[int] | None = None,
    quantity: str = "update_logp",
) -> Figure:
    """One panel per observation at ``step`` (default: the last recorded step) of the first run."""
    run = Path(run_dirs[0])
    frame = contributions(run, quantity)
    steps = sorted(frame.step.unique())
    step = int(steps[-1] if step is None else step)
    if step not in steps:
        raise ValueError(f"step {step} was not recorded in {run}; recorded steps: {steps}")
    obs = frame.drop_duplicates("observation")[["observation", "kind", "true_label"]]
    chosen = list(observations) if observations is not None else default_observations(obs)
    unknown = sorted(set(chosen) - set(obs.observation))
    if unknown or not chosen:
        raise ValueError(f"observations {unknown or chosen} not in {run}; known: {sorted(obs.observation)}")
    split = step_split(frame, step)
    totals = frame[frame.step == step].groupby(KEYS).value.sum()
    measured = measured_change(run, step) if quantity == "update_logp" else None
    label = QUANTITY_LABELS[quantity]
    fig, axes = new_figure(len(chosen), width=3.6, height=3.0)
    for ax, o in zip(axes, chosen, strict=True):
        total = totals.loc[o].sort_index()
        meas = None if measured is None else measured.loc[o].sort_index()
        info = obs[obs.observation == o].iloc[0]
        draw_panel(ax, split[split.observation == o], total, meas, info, QUANTITY_AXES[quantity])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize="small")
    fig.suptitle(f"{run.name}, step {step}: {label}, by term and pseudo-label correctness")
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(labels) - 1) // 5), 1, 1))
    return fig
