"""The shared look of every figure: seaborn's colour-blind palette, small paper-style fonts.

No backend is chosen here (the CLI and the tests choose Agg). A figure is created through pyplot, so
the environment's backend draws it (inline in a notebook), then released from pyplot at once: the
caller owns the returned figure, a notebook shows it once, and a report of many figures keeps none open.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend import Legend

PALETTE = "colorblind"
DIVERGING = "vlag"  # blue-white-red, readable with the common colour-vision deficiencies
HEAD_TO_TAIL = "class (head → tail)"


def apply_theme() -> None:
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE)


def colors(n: int) -> list[tuple[float, float, float]]:
    """n colours of the shared palette (cycled past its 10)."""
    return sns.color_palette(PALETTE, n)


def new_figure(ncols: int = 1, width: float = 4.0, height: float = 3.0) -> tuple[Figure, list[Axes]]:
    apply_theme()
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    plt.close(fig)  # the caller's figure, not pyplot's: never shown twice, never left open
    return fig, list(axes[0])


def legend_outside(ax: Axes, max_rows: int = 12, **options: object) -> Legend:
    """The axes' legend to its right, outside the plotting area, so it never covers data; the
    figure's tight layout and the tight bounding box of ``save`` make room for it. Entries run
    in columns of at most ``max_rows``."""
    entries = len(ax.get_legend_handles_labels()[1])
    options = {"fontsize": "x-small", "ncol": max(-(-entries // max_rows), 1), **options}
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **options)


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.pdf`` and ``stem.png``; returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".pdf"), stem.with_suffix(".png")]
    for path in paths:
        fig.savefig(path, bbox_inches="tight", dpi=150)
    return paths
