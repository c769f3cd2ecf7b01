"""Final-evaluation summaries read from a run's ``metrics`` table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lddyn.sinks.parquet import read_table

SUMMARY_METRICS = ("bacc", "gm", "many", "medium", "few")


def final_summary(run_dir: str | Path) -> pd.DataFrame:
    """bACC, GM and many/medium/few-shot recall at the last evaluation: rows metrics, columns raw/debiased."""
    metrics = read_table(run_dir, "metrics")
    if metrics.empty:
        raise FileNotFoundError(f"{run_dir} has no metrics rows yet")
    last = metrics[(metrics.step == metrics.step.max()) & metrics.metric.isin(SUMMARY_METRICS)]
    wide = last.pivot_table(index="metric", columns="debiased", values="value", observed=True)
    wide = wide.rename(columns={False: "raw", True: "debiased"}).reindex(list(SUMMARY_METRICS))
    wide.columns.name = None
    return wide
