"""The project's files send readers to the project's own docs, never to documents outside it."""

from __future__ import annotations

from tests.conftest import ROOT

OUTSIDE = tuple(f"{name}.md" for name in ("DESIGN", "PIPELINE", "BASELINES", "STYLE")) + (
    "/".join(("shared", "docs")),
)
SCANNED = ("README.md", "docs/*.md", "experiments/**/*.y*ml", "lddyn/**/*.py", "tests/*.py", "bench/*.py",
           "notebooks/*.py", "figures/*.md")  # fmt: skip


def test_no_file_points_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for pattern in SCANNED
        for path in sorted(ROOT.glob(pattern))
        for name in OUTSIDE
        if name in path.read_text(encoding="utf-8")
    ]
    assert not found, found


def test_schema_many_runs_query_tells_the_runs_apart(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The DuckDB example of docs/schema.md, run as written from a folder holding ``runs/``."""
    import re

    import duckdb

    from lddyn.sinks.parquet import ParquetSink

    for name, value in (("x", 0.25), ("y", 0.5)):
        sink = ParquetSink(tmp_path / "runs" / name)
        sink.add("metrics", [dict(step=10, split="test", cls=-1, metric="bacc", value=value, debiased=False)])
        sink.flush()
    text = (ROOT / "docs" / "schema.md").read_text()
    query = re.search(r"## Example: DuckDB over many runs.*?```sql\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    frame = duckdb.sql(query).df()
    assert dict(zip(frame.run, frame.bacc, strict=True)) == {"runs/x": 0.25, "runs/y": 0.5}
