"""One module per figure family; each exposes ``plot(run_dirs) -> Figure``. ``FIGURES`` maps names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from lddyn.analysis.figures import baseline_prior, recall  # noqa: E402
from lddyn.analysis.figures.theme import save  # noqa: E402

FIGURES: dict[str, Callable[[Sequence[Path]], Figure]] = {
    "baseline_prior": baseline_prior.plot,
    "recall": recall.plot,
}


def available(run_dir: Path) -> list[str]:
    """Figures whose input tables the run has."""
    return [name for name in FIGURES if name != "baseline_prior" or (run_dir / "baseline").is_dir()]


def plot_all(run_dir: Path, out: Path) -> list[Path]:
    written: list[Path] = []
    for name in available(run_dir):
        written += save(FIGURES[name]([run_dir]), out / name)
    return written


__all__ = ["FIGURES", "available", "plot_all", "save"]
