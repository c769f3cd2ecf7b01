"""Tidy views of the dynamics tables (docs/dynamics.md) that the figures share.

Rows are read through DuckDB with the filter pushed into the scan, so a long run's ``dynamics``
table is never loaded whole when a figure needs one quantity. Observation metadata (kind, true
label) is joined by id, as the schema intends. Runs of the first table schema (``pred_logp`` in
``dynamics``, the update split in a ``realised`` table) are read under today's quantity names.
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
#: Parts of the optimiser's update that belong to no group of this step's samples (update_logp).
PARTS = {
    "carry": "momentum carry",
    "weight_decay": "weight decay",
    "decoupled_wd": "decoupled decay",
    "post_step": "post-step decay",
    "step": "update (unsplit)",
}
SPLIT_ORDER = ["supervised", *CONSISTENCY.values(), COUPLING, *PARTS.values()]
#: What each quantity is, for axis labels and titles.
QUANTITY_LABELS = {
    "update_logp": "Δ log π, share of the optimiser's update (update_logp)",
    "gd_logp": "Δ log π under plain gradient descent, −η T K G (gd_logp)",
    "kg": "logit push J_o ∇θ L_g (kg)",
}
#: Short axis labels.
QUANTITY_AXES = {
    "update_logp": "Δ log π (update_logp)",
    "gd_logp": "Δ log π (gd_logp)",
    "kg": "J_o ∇θ L_g (kg)",
}
#: Schema 1 names: quantity -> (table, stored quantity).
_SCHEMA1 = {
    "gd_logp": ("dynamics", "pred_logp"),
    "kg": ("dynamics", "kg"),
    "update_logp": ("realised", "pred_logp"),
    "measured": ("realised", "measured"),
    "bn_drift": ("realised", "bn_drift"),
    "residual": ("realised", "residual"),
}


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


def quantity_rows(run_dir: str | Path, quantity: str, where: str = "TRUE") -> pd.DataFrame:
    """Rows of one dynamics quantity (docs/dynamics.md), from either table schema."""
    if has_table(run_dir, "realised") and quantity in _SCHEMA1:  # the first schema
        table, stored = _SCHEMA1[quantity]
        rows = select(run_dir, table, f"quantity = '{stored}' AND {where}")
        if "part" in rows.columns:
            rows["part"] = rows["part"].replace({"post_decay": "post_step"})
        elif not rows.empty:
            rows["part"] = rows["term"].map(lambda t: None if pd.isna(t) else "group")
        return rows.assign(quantity=quantity)
    return select(run_dir, "dynamics", f"quantity = '{quantity}' AND {where}")


def contributions(run_dir: str | Path, quantity: str = "update_logp") -> pd.DataFrame:
    """Rows of one quantity joined with their observation's kind and true label."""
    if quantity not in QUANTITY_LABELS:
        raise ValueError(f"quantity={quantity!r} is not one of {list(QUANTITY_LABELS)}")
    rows = quantity_rows(run_dir, quantity)
    if rows.empty:
        raise FileNotFoundError(f"{run_dir} has no {quantity!r} rows in its dynamics table")
    return rows.merge(observations(run_dir), on="observation", how="left")


def split_label(frame: pd.DataFrame) -> pd.Series:
    """supervised / consistency by pseudo-label correctness / BatchNorm coupling / any other term
    by its name (a method's own term) / an update part by its name, per row."""
    term = frame["term"].astype(str)
    correct = frame["correct"].astype("Float64").fillna(-1).astype(int)
    labels = correct.map(CONSISTENCY).fillna(CONSISTENCY[-1])
    labels = labels.where(term.isin(["unsup", "sup"]), term)
    labels = labels.where(term != "bn_coupling", COUPLING)
    labels = labels.where(term != "sup", "supervised")
    part = frame["part"].astype(object) if "part" in frame else pd.Series(None, index=frame.index)
    return labels.where(frame["term"].notna(), part.map(PARTS))


def groups_only(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of groups of samples (and the coupling): update parts carry a null `term`."""
    return frame[frame["term"].notna()]


def step_split(frame: pd.DataFrame, step: int) -> pd.DataFrame:
    """Δlog π at one step per observation and target class, split supervised / consistency by
    correctness / coupling / update parts: columns observation, target_class and one per split."""
    rows = frame[frame.step == step]
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
    """Running Σ over steps of the net Δlog π of each target class (every group and part, mean
    over observations): rows steps, columns target classes."""
    rows = frame[frame.kind == kind]
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
