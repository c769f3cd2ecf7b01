"""pi_theta(I) per class over training against the labeled prior, with KL(pi(I) || prior)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lddyn.analysis.figures.theme import new_figure
from lddyn.sinks.parquet import read_table


def kl_to_prior(frame: pd.DataFrame, source: str, color: float) -> pd.Series:
    """KL(pi_source(I) || labeled prior) per step."""
    probs = frame[(frame.source == source) & (frame.color == color)].pivot(
        index="step", columns="cls", values="prob"
    )
    prior = frame[frame.source == "labeled_prior"].groupby("cls").prob.first().reindex(probs.columns)
    p = probs.to_numpy()
    return pd.Series((p * np.log(p / prior.to_numpy())).sum(1), index=probs.index, name="kl")


def plot(run_dirs: Sequence[Path], source: str = "student_train") -> Figure:
    frame = read_table(run_dirs[0], "baseline")
    color = float(frame.color.dropna().iloc[0])
    fig, (ax_p, ax_kl) = new_figure(2)
    shown = frame[(frame.source == source) & (frame.color == color)]
    for cls, rows in shown.groupby("cls"):
        ax_p.plot(rows.step, rows.prob, label=str(cls))
    prior = frame[frame.source == "labeled_prior"].groupby("cls").prob.first()
    for value in prior:
        ax_p.axhline(value, color="grey", lw=0.5, ls=":")
    ax_p.set(xlabel="step", ylabel=f"softmax(z(I)), {source}, k={color:g}", title="baseline-image prior")
    ax_p.legend(title="class", fontsize="x-small", ncol=2)
    kl = kl_to_prior(frame, source, color)
    ax_kl.plot(kl.index, kl.values)
    ax_kl.set(xlabel="step", ylabel="KL(pi(I) || labeled prior)", title="distance to the labeled prior")
    return fig
