"""Predicted against measured Δlog π, with the residual (the ``realised`` table).

Left: each point is one (step, observation, target class); x the prediction from the optimiser's
realised update (Σ parts + BN drift: first order in the *actual* Δθ, Adam's preconditioner
included), y the change measured by forwards before and after the step. The plain gradient-descent
prediction −η T K G (``dynamics``) is drawn too: Adam moves far from it. Right: the residual per
step, which is second order in the step size and should stay well below the measured change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lddyn.analysis.dynamics import has_table, select
from lddyn.analysis.figures.theme import colors, new_figure

KEYS = ["step", "observation", "target_class"]


def realised_frame(run: Path) -> pd.DataFrame:
    """Per (step, observation, target): measured, predicted (Σ parts + bn_drift), residual."""
    rows = select(run, "realised")
    if rows.empty:
        raise FileNotFoundError(f"{run} has no realised rows (record.realised was off?)")
    parts = rows[rows.quantity == "pred_logp"].groupby(KEYS).value.sum().rename("parts")
    wide = rows[rows.quantity != "pred_logp"].pivot_table(index=KEYS, columns="quantity", values="value")
    out = wide.join(parts, how="left").fillna({"parts": 0.0, "bn_drift": 0.0})
    return out.assign(predicted=out.parts + out.bn_drift).reset_index()


def plain_gd(run: Path) -> pd.Series:
    """−η T K G along the full gradient (``pred_logp_total``), indexed like ``realised_frame``."""
    if not has_table(run, "dynamics"):
        return pd.Series(dtype=float)
    rows = select(run, "dynamics", "quantity = 'pred_logp_total'")
    return rows.set_index(KEYS).value


def plot(run_dirs: Sequence[Path]) -> Figure:
    run = Path(run_dirs[0])
    frame = realised_frame(run)
    gd = plain_gd(run).reindex(pd.MultiIndex.from_frame(frame[KEYS])).to_numpy()
    fig, (ax, ax_res) = new_figure(2, width=4.2, height=3.6)
    first, second = colors(2)
    ax.scatter(frame.predicted, frame.measured, s=5, color=first, label="realised update (Σ parts)")
    if np.isfinite(gd).any():
        ax.scatter(gd, frame.measured, s=5, color=second, alpha=0.5, label="plain GD −η T K G")
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
