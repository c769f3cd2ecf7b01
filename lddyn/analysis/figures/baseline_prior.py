"""π_θ(I) per class over training against the labeled prior, with KL(π(I) ‖ prior).

The KL panel also shows the distribution of the pseudo-labels drawn between probes: the class
distribution the consistency term actually trains toward, next to the one the model absorbed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from lddyn.analysis.figures.theme import colors, legend_outside, new_figure
from lddyn.analysis.prior import distributions, kl_to_prior, prior
from lddyn.sinks.parquet import read_table

__all__ = ["kl_to_prior", "plot"]


def plot(run_dirs: Sequence[Path], source: str = "student_train", color: float | None = None) -> Figure:
    frame = read_table(run_dirs[0], "baseline")
    color = float(frame.color.dropna().iloc[0]) if color is None else color
    fig, (ax_p, ax_kl) = new_figure(2)
    probs = distributions(frame, source, color)
    labeled = prior(frame)
    for cls, c in zip(probs.columns, colors(len(probs.columns)), strict=True):
        ax_p.plot(probs.index, probs[cls], label=str(cls), color=c)
        if cls in labeled.index:  # the class's labeled prior, dotted in the class's colour
            ax_p.axhline(labeled[cls], color=c, lw=0.8, ls=":")
    ax_p.plot([], [], color="grey", lw=0.8, ls=":", label="labeled prior")  # the dotted lines' entry
    ax_p.set(xlabel="step", ylabel=f"softmax(z(I)), {source}, k={color:g}", title="baseline-image prior")
    legend_outside(ax_p, title="class")
    kl = kl_to_prior(frame, source, color)
    ax_kl.plot(kl.index, kl.values, label=f"π(I), {source}")
    if (frame.source == "pseudo_labels").any():
        pseudo = kl_to_prior(frame, "pseudo_labels")
        ax_kl.plot(pseudo.index, pseudo.values, ls="--", label="pseudo-labels since previous probe")
    ax_kl.set(xlabel="step", ylabel="KL(· ‖ labeled prior)", title="distance to the labeled prior")
    legend_outside(ax_kl)
    fig.tight_layout()
    return fig
