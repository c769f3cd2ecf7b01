"""Crash-safe tidy tables: buffered rows flushed as immutable, atomically renamed parquet parts.

Layout: ``RUN_DIR/<table>/part-<first step>-<last step>.parquet``. Readers glob ``*.parquet`` only,
so a half-written temporary file is never read. On resume, parts past the checkpoint's step are
removed, which is what makes a killed-and-resumed run free of lost or duplicated rows.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# 2: the dynamics quantities kg, gd_logp, update_logp, measured, bn_drift, residual (docs/dynamics.md)
SCHEMA_VERSION = 2
PART_RE = re.compile(r"^part-(\d+)-(\d+)(?:-\d+)?\.parquet$")


class CorruptPartError(RuntimeError):
    pass


class ParquetSink:
    """Buffers rows per table; ``flush`` writes one part per table holding rows.

    ``listeners`` see every block of rows as it is added (a live view such as TensorBoard).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.buffers: dict[str, list[pd.DataFrame]] = defaultdict(list)
        self.listeners: list[Callable[[str, pd.DataFrame], None]] = []

    def add(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Buffer row records (dicts with the same keys, ``step`` among them)."""
        if rows:
            self.add_columns(table, pd.DataFrame(rows))

    def add_columns(self, table: str, columns: dict[str, list] | pd.DataFrame) -> None:
        """Buffer a block of rows given as columns (the cheap path for large tables)."""
        frame = columns if isinstance(columns, pd.DataFrame) else pd.DataFrame(columns)
        if "step" not in frame.columns:
            raise KeyError(f"rows for table {table!r} have no 'step' column: {list(frame.columns)}")
        if len(frame):
            self.buffers[table].append(frame)
            for listen in self.listeners:
                listen(table, frame)

    def pending(self) -> int:
        return sum(len(f) for frames in self.buffers.values() for f in frames)

    def flush(self) -> list[Path]:
        written = [self._write(table, frames) for table, frames in self.buffers.items() if frames]
        self.buffers.clear()
        return written

    def _write(self, table: str, frames: list[pd.DataFrame]) -> Path:
        frame = _concat(frames)
        for col in frame.columns:  # strings are stored as dictionaries (categoricals)
            if not pd.api.types.is_string_dtype(frame[col]):
                continue
            values = frame[col].dropna()
            if len(values) and (frame[col].dtype != object or values.map(type).eq(str).all()):
                frame[col] = frame[col].astype("category")
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        meta = {b"lddyn_schema_version": str(SCHEMA_VERSION).encode(), b"lddyn_table": table.encode()}
        arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **meta})
        folder = self.run_dir / table
        folder.mkdir(parents=True, exist_ok=True)
        first, last = int(frame["step"].min()), int(frame["step"].max())
        final = folder / f"part-{first:09d}-{last:09d}.parquet"
        if final.exists():  # a second flush within the same step range: keep both, never overwrite
            n = len(list(folder.glob(f"part-{first:09d}-{last:09d}*.parquet")))
            final = folder / f"part-{first:09d}-{last:09d}-{n}.parquet"
        tmp = folder / f".{final.name}.tmp"
        pq.write_table(arrow, tmp)
        os.replace(tmp, final)
        return final

    def check_parts(self) -> None:
        """Raise CorruptPartError naming the first part file whose footer cannot be read."""
        for path in sorted(self.run_dir.glob("*/part-*.parquet")):
            try:
                pq.read_metadata(path)
            except Exception as exc:
                raise CorruptPartError(f"part file {path} is truncated or corrupt: {exc}") from exc

    def truncate_after(self, step: int) -> list[Path]:
        """Drop rows past ``step``: remove later parts, rewrite a part that straddles it, clear temps."""
        removed = []
        for path in sorted(self.run_dir.glob("*/.*.tmp")):
            path.unlink()
        for path in sorted(self.run_dir.glob("*/part-*.parquet")):
            m = PART_RE.match(path.name)
            if m is None:
                continue
            first, last = int(m.group(1)), int(m.group(2))
            if first > step:
                path.unlink()
                removed.append(path)
            elif last > step:
                _rewrite_until(path, step)
        self.buffers.clear()
        return removed


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The frames as one; a column categorical in every frame stays categorical, over the union of
    the frames' categories (pandas turns it into Python objects when the categories differ)."""
    if len(frames) == 1:
        return frames[0]
    union: dict[str, pd.Index] = {}
    for col in set.intersection(*(set(f.columns) for f in frames)):
        dtypes = [f[col].dtype for f in frames]
        if all(isinstance(d, pd.CategoricalDtype) for d in dtypes) and len(set(dtypes)) > 1:
            union[col] = pd.Index(np.concatenate([d.categories.to_numpy(object) for d in dtypes])).unique()
    if union:
        frames = [f.assign(**{c: f[c].cat.set_categories(cats) for c, cats in union.items()}) for f in frames]
    return pd.concat(frames, ignore_index=True)


def _rewrite_until(path: Path, step: int) -> None:
    table = pq.read_table(path)
    kept = table.filter(pa.compute.less_equal(table["step"], step))
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(kept, tmp)
    new = path.with_name(f"part-{int(kept['step'].to_numpy().min()):09d}-{step:09d}.parquet")
    os.replace(tmp, new)
    if new != path:
        path.unlink()


def read_table(run_dir: str | Path, table: str) -> pd.DataFrame:
    """All parts of one table, in step order. A part that cannot be read raises naming the file."""
    parts = sorted((Path(run_dir) / table).glob("part-*.parquet"))
    frames = []
    for path in parts:
        try:
            frames.append(pq.read_table(path).to_pandas())
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise CorruptPartError(f"part file {path} is truncated or corrupt: {exc}") from exc
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values("step", kind="stable").reset_index(drop=True)
