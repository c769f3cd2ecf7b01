"""The absorbed class prior: KL(π_θ(I) ‖ prior) over training, read from the ``baseline`` table."""

from __future__ import annotations

import numpy as np
import pandas as pd

MODEL_SOURCES = ("student_train", "student_eval", "ema_eval")


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) along the last axis, with 0 log 0 = 0."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0)
    return terms.sum(-1)


def prior(frame: pd.DataFrame, source: str = "labeled_prior") -> pd.Series:
    """A class distribution written once per probe (its last value), indexed by class."""
    rows = frame[frame.source == source]
    if rows.empty:
        raise ValueError(f"the baseline table has no {source!r} rows")
    return rows[rows.step == rows.step.max()].set_index("cls").prob.sort_index()


def distributions(frame: pd.DataFrame, source: str, color: float | None = None) -> pd.DataFrame:
    """One distribution per step (rows steps, columns classes); ``color`` None for the priors."""
    rows = frame[frame.source == source]
    if color is not None:
        rows = rows[np.isclose(rows.color, color)]
    return rows.pivot_table(index="step", columns="cls", values="prob", observed=True).sort_index()


def kl_to_prior(
    frame: pd.DataFrame, source: str, color: float | None = None, reference: str = "labeled_prior"
) -> pd.Series:
    """KL(source's distribution ‖ reference prior) per step."""
    probs = distributions(frame, source, color)
    ref = prior(frame, reference).reindex(probs.columns).to_numpy()
    return pd.Series(kl(probs.to_numpy(), ref), index=probs.index, name="kl")


def kl_table(frame: pd.DataFrame, reference: str = "labeled_prior") -> pd.DataFrame:
    """Long frame step, series, kl: each model source at each colour, and the pseudo-labels."""
    out = []
    for source in MODEL_SOURCES:
        for color in sorted(frame[frame.source == source].color.dropna().unique()):
            series = kl_to_prior(frame, source, color, reference)
            out.append(series.reset_index().assign(series=f"{source}, k={color:g}"))
    if (frame.source == "pseudo_labels").any():
        out.append(
            kl_to_prior(frame, "pseudo_labels", None, reference).reset_index().assign(series="pseudo_labels")
        )
    return pd.concat(out, ignore_index=True)[["step", "series", "kl"]] if out else pd.DataFrame()
