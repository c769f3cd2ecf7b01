"""The paper-style results table: mean ± std over seeds of bACC, GM and many/medium/few-shot recall,
raw and debiased, at the final evaluation, the best one and over the last 20 evaluations.

Runs are grouped by their configuration with the training seed (and settings that cannot change
results: threads, cadences, device) removed, so the seeds of one setting form one row. A single
evaluation of a semi-supervised run is noisy, hence the last-20 mean and median; "best" is the
evaluation with the highest bACC, every column read at that same evaluation (one model selection).
Where a run has fewer than 20 evaluations, the last-20 statistics say how many they used
(``last20_mean (12 evals)``). Runs are keyed by ``run_id``, so same-named runs of two sweeps are
two runs. Reads only run.json and the parquet parts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lddyn.analysis.load import Run, find_runs, load_table
from lddyn.analysis.results import LAST, to_markdown

METRICS = ("bacc", "gm", "many", "medium", "few")
STATS = ("final", "best", f"last{LAST}_mean", f"last{LAST}_median")
VIEWS = ("raw", "debiased")
FORMATS = ("markdown", "csv", "latex")
HEADERS = {"bacc": "bACC", "gm": "GM", "many": "many", "medium": "medium", "few": "few"}
# keys that never change what a run computes, so runs differing only there are the same setting
NOT_A_SETTING = {
    "train.seed", "train.threads", "train.device", "train.eval_every", "train.log_every",
    "train.checkpoint_every", "train.compile", "train.data_placement", "probe", "record", "preset",
}  # fmt: skip


def expand_run_paths(paths: Sequence[str | Path]) -> list[Run]:
    """Run directories, glob patterns, or folders of runs (a sweep's output folder)."""
    items: list[str | Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir() and not (path / "run.json").exists():
            items += sorted(str(c) for c in path.iterdir() if (c / "run.json").exists())
        else:
            items.append(str(p))
    return find_runs(items)


def _flat(config: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)
    return out


def setting_of(run: Run) -> dict[str, object]:
    """The run's configuration as flat ``key: value`` pairs, without the keys of NOT_A_SETTING."""
    flat = _flat(run.info.get("config", {}))
    return {k: v for k, v in flat.items() if k not in NOT_A_SETTING and k.split(".")[0] not in NOT_A_SETTING}


def group_labels(runs: list[Run]) -> dict[str, str]:
    """Run id -> a readable setting label: preset and methods, plus the keys that tell apart
    settings sharing that label."""
    settings = {r.run_id: setting_of(r) for r in runs}
    base = {}
    for r in runs:
        cfg = r.info.get("config", {})
        methods = "+".join(m.get("name", "") for m in cfg.get("methods", [])) or "fixmatch"
        base[r.run_id] = f"{cfg.get('preset', '?')} {methods}"
    labels = {}
    for name, label in base.items():
        rivals = [settings[n] for n, b in base.items() if b == label and settings[n] != settings[name]]
        differing = sorted({k for other in rivals for k in set(other) | set(settings[name])
                            if other.get(k) != settings[name].get(k)})  # fmt: skip
        extra = ", ".join(f"{k}={json.loads(str(settings[name].get(k, 'null')))}" for k in differing)
        labels[name] = f"{label} ({extra})" if extra else label
    return labels


def run_statistics(rows: pd.DataFrame, last: int = LAST) -> dict[tuple[str, str], float]:
    """(statistic, metric) -> value from one run's summary rows (cls == -1) of one view; the
    last-``last`` statistics use the evaluations there are when there are fewer."""
    wide = rows.pivot_table(index="step", columns="metric", values="value", observed=True).sort_index()
    wide = wide.reindex(columns=list(METRICS))
    tail = wide.iloc[-last:]
    best = wide.loc[wide["bacc"].idxmax()] if wide["bacc"].notna().any() else wide.iloc[-1] * float("nan")
    picks = {"final": wide.iloc[-1], "best": best, STATS[2]: tail.mean(), STATS[3]: tail.median()}
    return {(stat, m): float(values[m]) for stat, values in picks.items() for m in METRICS}


def long_statistics(runs: list[Run], last: int = LAST) -> pd.DataFrame:
    """One row per (run, view, statistic, metric) with the run's setting label, seed and number of
    evaluations."""
    metrics = load_table(runs, "metrics")
    if metrics.empty:
        raise FileNotFoundError(f"no metrics rows in {[r.name for r in runs]}")
    labels = group_labels(runs)
    summary = metrics[metrics.cls == -1]
    out = []
    for run in runs:
        mine = summary[summary.run_id == run.run_id]
        seed = run.info.get("config", {}).get("train", {}).get("seed")
        for debiased, rows in mine.groupby("debiased"):
            view, evals = "debiased" if debiased else "raw", rows.step.nunique()
            for (stat, metric), value in run_statistics(rows, last).items():
                out.append(dict(setting=labels[run.run_id], run=run.run_id, seed=seed, view=view,
                                statistic=stat, metric=metric, value=value, evals=evals))  # fmt: skip
    return pd.DataFrame(out)


def paper_table(
    runs: list[Run],
    stats: Sequence[str] = STATS,
    views: Sequence[str] = VIEWS,
    metrics: Sequence[str] = METRICS,
    last: int = LAST,
) -> pd.DataFrame:
    """Rows (setting, view, statistic); per metric a ``_mean`` and ``_std`` column over seeds
    (sample std, NaN for one seed), and ``seeds``, the number of runs averaged."""
    for name, given, allowed in (
        ("statistic", stats, STATS),
        ("view", views, VIEWS),
        ("metric", metrics, METRICS),
    ):
        bad = [g for g in given if g not in allowed]
        if bad:
            raise ValueError(f"{name} {bad[0]!r} is not one of {', '.join(allowed)}")
    long = long_statistics(runs, last)
    long = long[long.statistic.isin(stats) & long.view.isin(views) & long.metric.isin(metrics)]
    keys = ["setting", "view", "statistic"]
    agg = long.groupby([*keys, "metric"], sort=False).value.agg(["mean", "std"]).unstack("metric")
    seeds = long.groupby(keys, sort=False).run.nunique().rename("seeds")
    evals = long.groupby(keys, sort=False).evals.min()
    table = pd.DataFrame(index=agg.index)
    for m in metrics:
        table[f"{m}_mean"], table[f"{m}_std"] = agg[("mean", m)], agg[("std", m)]
    table = table.join(seeds).reset_index()
    order = {"view": list(views), "statistic": list(stats)}
    for col, values in order.items():
        table[col] = pd.Categorical(table[col], categories=values, ordered=True)
    table = table.sort_values(keys, kind="stable").reset_index(drop=True)
    used = evals.reindex(pd.MultiIndex.from_frame(table[keys].astype(str))).to_numpy()
    table["statistic"] = [
        f"{stat} ({n} evals)" if stat.startswith("last") and n < last else stat
        for stat, n in zip(table.statistic.astype(str), used, strict=True)
    ]
    return table


def _cell(mean: float, std: float, latex: bool) -> str:
    if pd.isna(mean):
        return ""
    if pd.isna(std):
        return f"{100 * mean:.1f}"
    return f"${100 * mean:.1f} \\pm {100 * std:.1f}$" if latex else f"{100 * mean:.1f} ± {100 * std:.1f}"


def display_frame(table: pd.DataFrame, latex: bool = False) -> pd.DataFrame:
    """Percent cells ``mean ± std`` per metric, for Markdown and LaTeX."""
    metrics = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    shown = table[["setting", "view", "statistic"]].astype(str).copy()
    for m in metrics:
        shown[HEADERS.get(m, m)] = [
            _cell(a, b, latex) for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)
        ]
    shown["seeds"] = table["seeds"].astype(int)
    return shown


def _latex(shown: pd.DataFrame) -> str:
    def esc(text: object) -> str:  # the cells' own $...\pm...$ stay as they are
        return str(text).replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")

    lines = [r"\begin{tabular}{lll" + "r" * (len(shown.columns) - 3) + "}", r"\toprule"]
    lines.append(" & ".join(esc(c) for c in shown.columns) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in shown.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def render(table: pd.DataFrame, fmt: str) -> str:
    """The table as Markdown (``mean ± std`` in percent), CSV (fractions, mean and std columns) or LaTeX."""
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "markdown":
        return to_markdown(display_frame(table))
    if fmt == "latex":
        return _latex(display_frame(table, latex=True))
    raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
