"""Tidy views of the dynamics tables (docs/dynamics.md) that the figures share.

Rows are read through DuckDB with the filter pushed into the scan, so a long run's ``dynamics``
table is never loaded whole when a figure needs one quantity. Observation metadata (kind, true
label) is joined by id, as the schema intends.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from lddyn.sinks.runinfo import read_run_json

# Consistency contributions by pseudo-label correctness (`correct`: 1 right, 0 wrong, -1 unknown).
CONSISTENCY = {1: "consistency, correct", 0: "consistency, incorrect", -1: "consistency, unknown"}
#: What flows through BatchNorm's batch statistics (``record.groups=decoupled``): no source sample.
COUPLING = "BatchNorm coupling"
SPLIT_ORDER = ["supervised", *CONSISTENCY.values(), COUPLING]


def parts(run_dir: str | Path, table: str) -> list[str]:
    return [str(p) for p in sorted((Path(run_dir) / table).glob("part-*.parquet"))]


def has_table(run_dir: str | Path, table: str) -> bool:
    return bool(parts(run_dir, table))


def select(run_dir: str | Path, table: str, where: str = "TRUE", columns: str = "*") -> pd.DataFrame:
    """``SELECT columns FROM table WHERE where`` over the run's part files (empty frame if none)."""
    files = parts(run_dir, table)
    if not files:
        return pd.DataFrame()
    sql = f"SELECT {columns} FROM read_parquet(?, union_by_name = true) WHERE {where}"
    with duckdb.connect() as con:
        return con.execute(sql, [files]).df()


def observations(run_dir: str | Path) -> pd.DataFrame:
    return select(run_dir, "observations", columns="observation, kind, true_label, dataset_index")


def contributions(run_dir: str | Path, quantity: str = "pred_logp", table: str = "dynamics") -> pd.DataFrame:
    """Rows of one quantity joined with their observation's kind and true label."""
    rows = select(run_dir, table, f"quantity = '{quantity}'")
    if rows.empty:
        raise FileNotFoundError(f"{run_dir} has no {quantity!r} rows in its {table!r} table")
    return rows.merge(observations(run_dir), on="observation", how="left")


def split_label(frame: pd.DataFrame) -> pd.Series:
    """supervised / consistency by pseudo-label correctness / BatchNorm coupling / any other term
    by its name (a method's own term), per row (needs `term`, `correct`)."""
    term = frame["term"].astype(str)
    correct = frame["correct"].astype("Float64").fillna(-1).astype(int)
    labels = correct.map(CONSISTENCY).fillna(CONSISTENCY[-1])
    labels = labels.where(term.isin(["unsup", "sup"]), term)
    labels = labels.where(term != "bn_coupling", COUPLING)
    return labels.where(term != "sup", "supervised")


def groups_only(frame: pd.DataFrame) -> pd.DataFrame:
    """The group rows: totals carry a null `term` (and every other grouping column)."""
    return frame[frame["term"].notna()]


def step_split(frame: pd.DataFrame, step: int) -> pd.DataFrame:
    """Δlog π at one step per observation and target class, split supervised / consistency by
    correctness: columns observation, target_class and one per split."""
    rows = groups_only(frame[frame.step == step])
    rows = rows.assign(split=split_label(rows))
    wide = rows.pivot_table(
        index=["observation", "target_class"], columns="split", values="value", aggfunc="sum", fill_value=0.0
    )
    order = [s for s in SPLIT_ORDER if s in wide.columns]
    order += sorted(c for c in wide.columns if c not in SPLIT_ORDER)  # methods' own terms
    return wide.reindex(columns=order).reset_index()


def accumulated(
    frame: pd.DataFrame, kind: str = "test", by: tuple[str, ...] = ("source_class",)
) -> pd.DataFrame:
    """Σ over recorded steps, mean over observations of ``kind``: one value per (by..., target_class)."""
    rows = groups_only(frame[frame.kind == kind])
    per_obs = rows.groupby([*by, "target_class", "observation"], observed=True).value.sum()
    return per_obs.groupby(level=[*by, "target_class"], observed=True).mean().reset_index()


def cumulative_by_target(frame: pd.DataFrame, kind: str = "test") -> pd.DataFrame:
    """Running Σ over steps of the net Δlog π of each target class (mean over observations):
    rows steps, columns target classes."""
    rows = groups_only(frame[frame.kind == kind])
    per = rows.groupby(["step", "target_class", "observation"]).value.sum()
    mean = per.groupby(level=["step", "target_class"]).mean().unstack("target_class").fillna(0.0)
    return mean.sort_index().cumsum()


def source_share(frame: pd.DataFrame, kind: str = "test") -> pd.Series:
    """Share of Σ|Δlog π| coming from each source class: where the update's mass comes from."""
    rows = groups_only(frame[frame.kind == kind])
    mass = rows.assign(value=rows.value.abs()).groupby("source_class").value.sum()
    return mass / mass.sum()


def run_label(run_dir: str | Path) -> str:
    """A run's methods as a short label ("fixmatch" when it uses none)."""
    cfg = read_run_json(run_dir).get("config", {})
    names = [m.get("name", "") for m in cfg.get("methods", [])]
    return "+".join(names) if names else "fixmatch"
