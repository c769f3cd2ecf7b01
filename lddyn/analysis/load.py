"""Load one or many run directories into tidy pandas frames (DuckDB over the part files).

Never imports the training code: a run is its ``run.json`` and its parquet parts. Finished,
running, failed and interrupted runs are told apart by ``status``; an unreadable part is reported
by name and skipped, so the rest of the run still loads.

Runs are told apart by identity, not folder name: two sweeps give their runs the same names, so
every frame carries ``run_id`` (from run.json; derived from the resolved path for runs written
before run ids existed) and ``path``, and ``distinct_names`` gives labels that stay unique.
"""

from __future__ import annotations

import glob
import hashlib
import warnings
from collections import Counter
from collections.abc import Sequence
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
    copied: bool = False  # shares its run.json's run_id with another run given (a copied folder)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def run_id(self) -> str:
        stored = self.info.get("run_id")
        if stored and self.copied:
            return f"{stored}-{path_id(self.path)}"
        return str(stored or path_id(self.path))

    @property
    def status(self) -> str:
        return str(self.info.get("status", "unknown"))

    def good_parts(self, table: str) -> list[Path]:
        return [p for p in sorted((self.path / table).glob("part-*.parquet")) if p not in self.bad_parts]


def path_id(path: Path) -> str:
    """The stable id of a run whose run.json has none: 12 hex digits of the SHA-1 of its resolved path."""
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:12]


def distinct_names(paths: Sequence[str | Path]) -> list[str]:
    """Folder names, lengthened by parent folders only where two runs share one (``a/g20-s0``)."""
    full = [Path(p).resolve() for p in paths]
    names, depth = [p.name for p in full], 1
    while len(set(names)) < len(names) and depth < max(len(p.parts) for p in full):
        depth += 1
        shared = Counter(names)
        names = [
            ("/".join(p.parts[-depth:]) if shared[n] > 1 else n) for p, n in zip(full, names, strict=True)
        ]
    return names


def find_runs(patterns: str | Path | list[str | Path]) -> list[Run]:
    """Run directories matching glob patterns (a directory with a run.json), checked part by part;
    a directory matched twice is loaded once."""
    items = patterns if isinstance(patterns, list) else [patterns]
    found = [Path(p) for pat in items for p in sorted(glob.glob(str(pat)))]
    found += [Path(p) for p in items if Path(p).is_dir()]
    unique = {p.resolve(): p for p in reversed(found)}  # the first spelling of each directory
    paths = sorted(unique.values())
    runs = [Run(p, read_run_json(p)) for p in paths if (p / "run.json").exists()]
    if not runs:
        raise FileNotFoundError(f"no lddyn run directory matches {items}")
    for run in runs:
        run.bad_parts = _unreadable_parts(run.path)
    _tell_copies_apart(runs)
    return runs


def _tell_copies_apart(runs: list[Run]) -> None:
    """Runs sharing a stored run_id (a copied directory) get the path's id appended, with a warning."""
    ids = Counter(r.info.get("run_id") for r in runs if r.info.get("run_id"))
    for run in runs:
        if ids.get(run.info.get("run_id"), 0) > 1:
            run.copied = True
    copies = sorted({r.info["run_id"] for r in runs if r.copied})
    if copies:
        where = [str(r.path) for r in runs if r.copied]
        warnings.warn(f"run ids {copies} appear in several run directories {where} (copied?); "
                      "each is told apart by its path", stacklevel=3)  # fmt: skip


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
    """One table of many runs as one frame with ``run`` (the folder name), ``run_id``, ``path`` and
    ``status`` columns (columns unioned by name). Select a run's rows by ``run_id``: names repeat."""
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
        frames.append(frame.assign(run=run.name, run_id=run.run_id, path=str(run.path), status=run.status))
    con.close()
    if not frames:
        return pd.DataFrame()
    return (
        pd.concat(frames, ignore_index=True)
        .sort_values(["run", "path", "step"], kind="stable")
        .reset_index(drop=True)
    )


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run: name, distinct label, id, status, preset, methods, seed, path, unreadable parts."""
    rows = []
    for run, label in zip(runs, distinct_names([r.path for r in runs]), strict=True):
        cfg = run.info.get("config", {})
        rows.append(
            dict(
                run=run.name,
                label=label,
                run_id=run.run_id,
                status=run.status,
                preset=cfg.get("preset"),
                methods=",".join(m.get("name", "") for m in cfg.get("methods", [])),
                seed=cfg.get("train", {}).get("seed"),
                path=str(run.path),
                bad_parts=len(run.bad_parts),
            )
        )
    return pd.DataFrame(rows)
