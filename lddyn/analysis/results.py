"""The results table of a report: one row per run and view (raw / debiased logits).

Final bACC, GM and many/medium/few recall at the last evaluation, and, because a single
evaluation of a semi-supervised run is noisy, the mean and median bACC of the last 20 evaluations
and the best bACC with its step (the statistics the papers report). ``last20_evals`` says how many
evaluations the last-20 statistics used: fewer than 20 in a short or unfinished run.
Runs appear under their distinct label (the folder name, with parents where two runs share it).
"""

from __future__ import annotations

import pandas as pd

from lddyn.analysis.load import Run, load_table, runs_frame
from lddyn.analysis.summary import SUMMARY_METRICS

LAST = 20


def view_row(rows: pd.DataFrame, last: int = LAST) -> dict:
    """Statistics of one run's summary rows for one view."""
    final = rows[rows.step == rows.step.max()].set_index("metric").value
    bacc = rows[rows.metric == "bacc"].sort_values("step")
    tail = bacc.value.iloc[-last:]
    best = bacc.loc[bacc.value.idxmax()] if len(bacc) else None
    return {
        "step": int(rows.step.max()),
        **{m: final.get(m, float("nan")) for m in SUMMARY_METRICS},
        f"bacc_last{last}_mean": tail.mean(),
        f"bacc_last{last}_median": tail.median(),
        f"last{last}_evals": len(tail),
        "bacc_best": best.value if best is not None else float("nan"),
        "best_step": int(best.step) if best is not None else -1,
    }


def results_table(runs: list[Run], last: int = LAST) -> pd.DataFrame:
    """Rows (run, view); runs without metrics keep a row with their status and no numbers."""
    info = runs_frame(runs).set_index("run_id")
    metrics = load_table(runs, "metrics")
    out = []
    for run in runs:
        mine = metrics[(metrics.run_id == run.run_id) & (metrics.cls == -1)] if len(metrics) else metrics
        row = info.loc[run.run_id]
        base = {"run": row["label"], "methods": row["methods"] or "fixmatch", "status": run.status}
        ids = {"run_id": run.run_id, "path": str(run.path)}
        if mine.empty:
            out.append({**base, "view": "none", **ids})
            continue
        for debiased, rows in mine.groupby("debiased"):
            out.append({**base, "view": "debiased" if debiased else "raw", **view_row(rows, last), **ids})
    return pd.DataFrame(out)


def to_markdown(frame: pd.DataFrame, percent: tuple[str, ...] = ()) -> str:
    """A GitHub Markdown table; ``percent`` columns are shown ×100 with one decimal."""

    def cell(col: str, value: object) -> str:
        if isinstance(value, float):
            if pd.isna(value):
                return ""
            return f"{100 * value:.1f}" if col in percent else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in frame.columns) + " |")
    return "\n".join(lines) + "\n"


def percent_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    return tuple(c for c in frame.columns if c in SUMMARY_METRICS or c.startswith("bacc_"))


def short_statistics(table: pd.DataFrame, last: int = LAST) -> list[str]:
    """One note per run whose last-``last`` statistics used fewer evaluations."""
    col = f"last{last}_evals"
    if col not in table.columns:
        return []
    short = table[table[col] < last].drop_duplicates("run")
    return [
        f"bacc_last{last}_* of {r.run} used its {int(r[col])} evaluations only" for _, r in short.iterrows()
    ]
