"""The unified view: the same observation set under several methods, one line per run.

Every method reshapes the same first-order step Δlog π = −η T K G (docs/design.md). Panels: the
supervised and the consistency contributions to each target class (Σ over recorded steps, mean
over test observations) show changes of G's direction (logit adjustment on the supervised term,
CDMAD on the consistency term); the share of the update's mass by source class shows changes of
the sum's measure and weights (resampling, reweighting, DyTrim's pruning and 1/r); the baseline
prior at the end shows what each run absorbed. The legend names the factor each method changes.
The contributions are ``update_logp`` (each group's share of the optimiser's real update) unless
``quantity`` asks for ``gd_logp`` or ``kg``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lddyn.analysis.dynamics import (
    QUANTITY_LABELS,
    accumulated,
    contributions,
    has_table,
    run_label,
    source_share,
)
from lddyn.analysis.figures.theme import HEAD_TO_TAIL, colors, new_figure
from lddyn.analysis.load import distinct_names
from lddyn.analysis.prior import distributions, prior
from lddyn.sinks.parquet import read_table

FACTOR = {
    "fixmatch": "none (reference)",
    "logit_adjust": "G direction (logits in the loss)",
    "reweight": "G scale per class",
    "resample": "measure of the sum",
    "cdmad": "consistency G (pseudo-targets)",
    "dytrim": "participation and 1/r scale",
}


def legend_label(run: Path, name: str | None = None) -> str:
    """The methods and the factor each changes, after the run's ``name`` when one is given."""
    names = run_label(run).split("+")
    label = f"{'+'.join(names)}: " + "; ".join(FACTOR.get(n, "?") for n in names)
    return f"{name}, {label}" if name else label


def legend_labels(runs: Sequence[Path]) -> list[str]:
    """One label per run; runs of the same methods are told apart by their distinct names."""
    methods = [run_label(r) for r in runs]
    names = distinct_names(runs)
    return [
        legend_label(r, n if methods.count(m) > 1 else None)
        for r, n, m in zip(runs, names, methods, strict=True)
    ]


def term_profile(frame: pd.DataFrame, term: str, kind: str) -> pd.Series:
    """Σ_steps Δlog π per target class from one loss term (mean over observations of ``kind``)."""
    rows = accumulated(frame, kind, by=("term",))
    return rows[rows.term == term].set_index("target_class").value.sort_index()


def final_prior(run: Path) -> pd.Series | None:
    """π_θ(I) of the student (batch statistics) at the first colour at the last probe, if probed."""
    if not has_table(run, "baseline"):
        return None
    frame = read_table(run, "baseline")
    color = frame.color.dropna()
    if color.empty:
        return None
    return distributions(frame, "student_train", float(color.iloc[0])).iloc[-1]


def plot(run_dirs: Sequence[Path], kind: str = "test", quantity: str = "update_logp") -> Figure:
    runs = [Path(r) for r in run_dirs]
    fig, axes = new_figure(4, width=3.6, height=3.4)
    titles = ("supervised term", "consistency term", "update mass by source class", "baseline prior π(I)")
    labeled = None
    for run, label, color in zip(runs, legend_labels(runs), colors(len(runs)), strict=True):
        frame = contributions(run, quantity)
        for ax, term in zip(axes[:2], ("sup", "unsup"), strict=True):
            profile = term_profile(frame, term, kind)
            ax.plot(profile.index, profile.values, "o-", ms=3, color=color, label=label)
        share = source_share(frame, kind)
        axes[2].plot(share.index, share.values, "o-", ms=3, color=color)
        final = final_prior(run)
        if final is not None:
            axes[3].plot(final.index, final.values, "o-", ms=3, color=color)
            labeled = prior(read_table(run, "baseline"))
    if labeled is not None:
        axes[3].plot(labeled.index, labeled.values, color="grey", ls=":", label="labeled prior")
        axes[3].legend(fontsize="x-small")
    for ax, title in zip(axes, titles, strict=True):
        ax.set(title=title, xlabel=HEAD_TO_TAIL)
        ax.axhline(0, color="black", lw=0.5)
    axes[0].set(ylabel=f"Σ_steps {quantity} (target class)")
    axes[2].set(ylabel="share of Σ |Δ log π|", xlabel=f"source {HEAD_TO_TAIL}")
    axes[3].set(ylabel="softmax(z(I))")
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(runs), 3), fontsize="small"
    )
    fig.suptitle(
        f"unified view at {kind} observations, {QUANTITY_LABELS[quantity]}:\n"
        "which factor of T K G each method changes"
    )
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(runs) - 1) // 3), 1, 1))
    return fig
