"""Runs are told apart by identity: two sweeps that give their runs the same names stay two sets of
runs in every frame, table, report folder and figure legend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lddyn.analysis.figures import recall
from lddyn.analysis.figures.unified import legend_labels
from lddyn.analysis.load import distinct_names, find_runs, load_table, path_id, runs_frame
from lddyn.analysis.results import results_table
from lddyn.analysis.table import paper_table
from lddyn.config import load_config
from lddyn.sinks.parquet import ParquetSink
from lddyn.sinks.runinfo import new_run_json, write_json_atomic
from tests.conftest import cli

NAME = "g20-fixmatch-s0"


def fake_run(run: Path, evaluations: int, bacc: float, run_id: bool = True) -> Path:
    """A finished run with ``evaluations`` evaluations of 10 classes (no training)."""
    run.mkdir(parents=True)
    info = {**new_run_json(load_config("digits-fixmatch").to_dict(), {"seed": 0, "data_seed": 0})}
    info["status"] = "finished"
    if not run_id:
        info.pop("run_id")
    write_json_atomic(run / "run.json", info)
    rows = []
    for step in range(10, 10 * evaluations + 1, 10):
        for debiased in (False, True):
            rows += [dict(step=step, split="test", cls=c, metric="recall", value=bacc, debiased=debiased)
                     for c in range(10)]  # fmt: skip
            rows += [dict(step=step, split="test", cls=-1, metric=m, value=bacc, debiased=debiased)
                     for m in ("bacc", "gm", "many", "medium", "few")]  # fmt: skip
    sink = ParquetSink(run)
    sink.add("metrics", rows)
    sink.add(
        "pruning", [dict(step=1, set="labeled", cls=c, kept=5, total=5, mean_weight=1.0) for c in range(10)]
    )
    sink.flush()
    return run


@pytest.fixture
def two_sweeps(tmp_path: Path) -> Path:
    fake_run(tmp_path / "sweeps" / "a" / NAME, 4, 0.6)  # 4 x 2 x 15 = 120 rows
    fake_run(tmp_path / "sweeps" / "b" / NAME, 2, 0.3)  # 60 rows
    return tmp_path / "sweeps"


def test_every_run_gets_its_own_id() -> None:
    cfg = load_config("digits-fixmatch").to_dict()
    ids = {new_run_json(cfg, {})["run_id"] for _ in range(50)}
    assert len(ids) == 50


def test_frames_carry_id_and_path_and_never_merge_same_names(two_sweeps: Path) -> None:
    runs = find_runs([str(two_sweeps / "a" / "*"), str(two_sweeps / "b" / "*")])
    metrics = load_table(runs, "metrics")
    assert {"run", "run_id", "path"} <= set(metrics.columns)
    sizes = metrics.groupby("path").run_id.agg(["nunique", "size"])
    assert sizes["nunique"].tolist() == [1, 1] and sorted(sizes["size"]) == [60, 120]
    assert metrics.run_id.nunique() == 2 and metrics.run.nunique() == 1
    frame = runs_frame(runs)
    assert frame.label.tolist() == [f"a/{NAME}", f"b/{NAME}"] and frame.run_id.nunique() == 2
    table = results_table(runs)
    assert table.run.nunique() == 2 and set(table.groupby("run").bacc.first()) == {0.6, 0.3}
    paper = paper_table(runs, stats=["final"], views=["raw"])
    assert paper.seeds.tolist() == [2]  # one setting, two runs: both counted


def test_runs_without_an_id_get_a_stable_one_from_their_path(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a" / NAME, 1, 0.5, run_id=False)
    b = fake_run(tmp_path / "b" / NAME, 1, 0.5, run_id=False)
    first, second = find_runs([a, b]), find_runs([a, b])
    assert [r.run_id for r in first] == [r.run_id for r in second] == [path_id(a), path_id(b)]
    assert first[0].run_id != first[1].run_id


def test_a_copied_run_directory_is_still_a_second_run(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a" / NAME, 1, 0.5)
    shutil.copytree(a, tmp_path / "b" / NAME)
    with pytest.warns(UserWarning, match="copied"):
        runs = find_runs([str(tmp_path / "*" / NAME)])
    assert len({r.run_id for r in runs}) == 2


def test_report_over_two_sweeps_with_the_same_names(two_sweeps: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = cli("report", str(two_sweeps / "a" / "*"), str(two_sweeps / "b" / "*"), "--out", str(out))
    results = pd.read_csv(out / "results.csv")
    assert sorted(results.run.unique()) == [f"a/{NAME}", f"b/{NAME}"] and results.run_id.nunique() == 2
    assert (out / "a" / NAME / "pruning.png").exists() and (out / "b" / NAME / "pruning.png").exists()
    assert "bacc_last20_* of b/" in proc.stderr and "2 evaluations only" in proc.stderr
    assert "4 evaluations only" in (out / "report.md").read_text()
    assert list(results.last20_evals.unique()) in ([4, 2], [2, 4])


def test_recall_legend_tells_same_named_runs_apart(two_sweeps: Path) -> None:
    fig = recall.plot([two_sweeps / "a" / NAME, two_sweeps / "b" / NAME])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 2 and len(set(labels)) == 2 and labels[0].startswith(f"a/{NAME}")


def test_unified_legend_tells_runs_of_one_method_apart(two_sweeps: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    info = json.loads((two_sweeps / "a" / NAME / "run.json").read_text())
    info["config"]["methods"] = [{"name": "cdmad"}]
    (other / "run.json").write_text(json.dumps(info))
    runs = [two_sweeps / "a" / NAME, two_sweeps / "b" / NAME, other]
    labels = legend_labels(runs)
    assert len(set(labels)) == 3
    assert labels[0].startswith(f"a/{NAME}, fixmatch") and labels[2].startswith("cdmad:")


def test_distinct_names_only_lengthen_what_collides() -> None:
    paths = [Path("/x/sweeps/a/r"), Path("/x/sweeps/b/r"), Path("/x/sweeps/b/q")]
    assert distinct_names(paths) == ["a/r", "b/r", "q"]
