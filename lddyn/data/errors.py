"""The one error every data source raises for a bad file, and the checks they share."""

from __future__ import annotations

from pathlib import Path


class DataFileError(ValueError):
    """A data file that is missing, unreadable or of the wrong shape; the message names it."""


def require_root(root: str | Path | None, what: str) -> Path:
    """data.root as a Path; sources never download, so an unset root is an error naming the files."""
    if root is None:
        raise DataFileError(f"data.root is not set; point it at the folder holding {what}")
    return Path(root)


def first_existing(candidates: list[Path], what: str) -> Path:
    """The first candidate that exists, or an error listing every place that was looked at."""
    for path in candidates:
        if path.exists():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise DataFileError(f"{what} is missing; looked for {tried}")


def check_labels(path: Path, labels: object, low: int, high: int, note: str = "") -> None:
    """Raise unless every label lies in low..high (inclusive)."""
    import numpy as np

    values = np.asarray(labels)
    if values.size and (values.min() < low or values.max() > high):
        found = f"{int(values.min())}..{int(values.max())}"
        raise DataFileError(f"{path}: labels {found} outside {low}..{high}{note}")
