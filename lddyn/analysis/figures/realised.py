"""Predicted against measured Δlog π, with the residual (quantities of the ``dynamics`` table).

Left: each point is one (step, observation, target class); y the change measured by forwards
before and after the step, x the first-order prediction from the optimiser's actual update
(Σ ``update_logp`` over groups and parts, plus the measured BatchNorm drift). The plain
gradient-descent prediction Σ ``gd_logp`` (−η T K G) is drawn too: under Adam it is far from what
happened. Right: the residual per step, second order in the step size, well below the change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lddyn.analysis.dynamics import quantity_rows
from lddyn.analysis.figures.theme import colors, new_figure

KEYS = ["step", "observation", "target_class"]


def summed(run: Path, quantity: str) -> pd.Series:
    """Σ over groups and parts of one quantity per (step, observation, target class)."""
    rows = quantity_rows(run, quantity)
    return rows.groupby(KEYS).value.sum() if not rows.empty else pd.Series(dtype=float)


def realised_frame(run: Path) -> pd.DataFrame:
    """Per (step, observation, target): measured, predicted (Σ update_logp + bn_drift), residual, gd."""
    measured = summed(run, "measured")
    if measured.empty:
        raise FileNotFoundError(f"{run} has no measured rows in its dynamics table")
    frame = pd.DataFrame({"measured": measured})
    for name, quantity in (
        ("parts", "update_logp"),
        ("bn_drift", "bn_drift"),
        ("residual", "residual"),
        ("gd", "gd_logp"),
    ):
        frame[name] = summed(run, quantity).reindex(frame.index)
    frame = frame.fillna({"parts": 0.0, "bn_drift": 0.0})
    return frame.assign(predicted=frame.parts + frame.bn_drift).reset_index()


def plot(run_dirs: Sequence[Path]) -> Figure:
    run = Path(run_dirs[0])
    frame = realised_frame(run)
    fig, (ax, ax_res) = new_figure(2, width=4.2, height=3.6)
    first, second = colors(2)
    ax.scatter(
        frame.predicted, frame.measured, s=5, color=first, label="optimiser's update (Σ update_logp + drift)"
    )
    if frame.gd.notna().any():
        ax.scatter(frame.gd, frame.measured, s=5, color=second, alpha=0.5, label="plain GD (Σ gd_logp)")
    lim = float(np.nanmax(np.abs(frame[["predicted", "measured"]].to_numpy()))) * 1.05 or 1.0
    ax.plot([-lim, lim], [-lim, lim], color="black", lw=0.6, ls="--")
    ax.set(xlabel="predicted Δ log π", ylabel="measured Δ log π", title="first order vs measured")
    ax.legend(fontsize="x-small")
    per_step = frame.assign(res=frame.residual.abs(), meas=frame.measured.abs()).groupby("step")
    ax_res.semilogy(
        per_step.res.median().index, per_step.res.median(), "o-", color=first, label="|residual|, median"
    )
    ax_res.semilogy(per_step.res.max().index, per_step.res.max(), "^--", color=first, label="|residual|, max")
    ax_res.semilogy(
        per_step.meas.median().index, per_step.meas.median(), "s:", color=second, label="|measured|, median"
    )
    ax_res.set(xlabel="step", ylabel="|Δ log π|", title="residual (second order)")
    ax_res.legend(fontsize="x-small")
    fig.suptitle(f"{run.name}: predicted vs measured change of log π")
    fig.tight_layout()
    return fig
