"""Load one or many run directories into tidy pandas frames (DuckDB over the part files).

Never imports the training code: a run is its ``run.json`` and its parquet parts. Finished,
running and failed runs are told apart by ``status``; an unreadable part is reported by name and
skipped, so the rest of the run still loads.
"""

from __future__ import annotations

import glob
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from lddyn.sinks.runinfo import read_run_json


@dataclass
class Run:
    path: Path
    info: dict
    bad_parts: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return str(self.info.get("status", "unknown"))

    def good_parts(self, table: str) -> list[Path]:
        return [p for p in sorted((self.path / table).glob("part-*.parquet")) if p not in self.bad_parts]


def find_runs(patterns: str | Path | list[str | Path]) -> list[Run]:
    """Run directories matching glob patterns (a directory with a run.json), checked part by part."""
    items = patterns if isinstance(patterns, list) else [patterns]
    paths = sorted(
        {Path(p) for pat in items for p in glob.glob(str(pat))} | {Path(p) for p in items if Path(p).is_dir()}
    )
    runs = [Run(p, read_run_json(p)) for p in paths if (p / "run.json").exists()]
    if not runs:
        raise FileNotFoundError(f"no lddyn run directory matches {items}")
    for run in runs:
        run.bad_parts = _unreadable_parts(run.path)
    return runs


def _unreadable_parts(run_dir: Path) -> list[Path]:
    bad = []
    for path in sorted(run_dir.glob("*/part-*.parquet")):
        try:
            pq.read_metadata(path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            warnings.warn(f"skipping unreadable part {path}: {exc}", stacklevel=2)
            bad.append(path)
    return bad


def load_table(runs: list[Run] | str | Path, table: str) -> pd.DataFrame:
    """One table of many runs as one frame with ``run`` and ``status`` columns (columns unioned by name)."""
    runs = (
        find_runs(runs) if not isinstance(runs, list) or not all(isinstance(r, Run) for r in runs) else runs
    )
    frames = []
    con = duckdb.connect()
    for run in runs:
        parts = [str(p) for p in run.good_parts(table)]
        if not parts:
            continue
        frame = con.execute("SELECT * FROM read_parquet(?, union_by_name = true)", [parts]).df()
        frames.append(frame.assign(run=run.name, status=run.status))
    con.close()
    if not frames:
        return pd.DataFrame()
    return (
        pd.concat(frames, ignore_index=True)
        .sort_values(["run", "step"], kind="stable")
        .reset_index(drop=True)
    )


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run: name, status, preset, methods, seed, path, unreadable parts."""
    rows = []
    for run in runs:
        cfg = run.info.get("config", {})
        rows.append(
            dict(
                run=run.name,
                status=run.status,
                preset=cfg.get("preset"),
                methods=",".join(m.get("name", "") for m in cfg.get("methods", [])),
                seed=cfg.get("train", {}).get("seed"),
                path=str(run.path),
                bad_parts=len(run.bad_parts),
            )
        )
    return pd.DataFrame(rows)
