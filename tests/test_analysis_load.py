"""Loading many runs: statuses, schema versions that only add columns, unreadable parts skipped by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from lddyn.analysis.load import find_runs, load_table, runs_frame
from lddyn.sinks.parquet import ParquetSink
from lddyn.sinks.runinfo import write_json_atomic


def fake_run(root: Path, name: str, status: str, rows: list[dict]) -> Path:
    run = root / name
    run.mkdir(parents=True)
    write_json_atomic(
        run / "run.json", {"status": status, "config": {"preset": "p", "methods": [{"name": "cdmad"}]}}
    )
    sink = ParquetSink(run)
    for row in rows:
        sink.add("metrics", [row])
        sink.flush()
    return run


def test_many_runs_with_added_columns_and_statuses(tmp_path: Path) -> None:
    fake_run(tmp_path, "old", "finished", [{"step": 1, "value": 0.5}, {"step": 2, "value": 0.6}])
    fake_run(tmp_path, "new", "running", [{"step": 1, "value": 0.7, "extra": "x"}])
    runs = find_runs(str(tmp_path / "*"))
    assert {r.name: r.status for r in runs} == {"old": "finished", "new": "running"}
    frame = load_table(runs, "metrics")
    assert len(frame) == 3 and set(frame.columns) >= {"step", "value", "extra", "run", "status"}
    assert frame[frame.run == "old"].extra.isna().all()
    assert runs_frame(runs).set_index("run").loc["new", "methods"] == "cdmad"


def test_unreadable_part_is_named_and_the_rest_loads(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "r", "failed", [{"step": 1, "value": 0.5}, {"step": 2, "value": 0.6}])
    bad = sorted((run / "metrics").glob("part-*.parquet"))[0]
    bad.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=bad.name):
        runs = find_runs(run)
    frame = load_table(runs, "metrics")
    assert frame.step.tolist() == [2]
    assert runs[0].bad_parts == [bad]


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no lddyn run directory"):
        find_runs(str(tmp_path / "nothing*"))


def test_categorical_columns_whose_categories_differ_between_steps_keep_their_values(tmp_path: Path) -> None:
    """One flush of steps whose categorical columns have different categories (a term present in
    one step only): every value comes back, stored as a dictionary column, not Python objects."""
    import pandas as pd
    import pyarrow.parquet as pq

    sink = ParquetSink(tmp_path)
    steps = {1: ["sup", "unsup", "sup"], 2: ["bn_coupling", "sup"], 3: ["unsup"]}
    for step, terms in steps.items():
        frame = pd.DataFrame({"step": step, "term": pd.Categorical(terms), "value": range(len(terms))})
        sink.add_columns("dynamics", frame)
    (path,) = sink.flush()
    column = pq.read_table(path).column("term")
    assert str(column.type).startswith("dictionary")
    assert column.to_pylist() == [t for terms in steps.values() for t in terms]
