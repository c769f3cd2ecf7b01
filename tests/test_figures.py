"""Every figure builds from short digits runs; ``available`` follows the tables; the report writes
figures and the results table, and names what it could not read."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from typer.testing import CliRunner

from lddyn.analysis import dynamics
from lddyn.analysis.figures import FIGURES, MULTI_RUN, available, save
from lddyn.analysis.load import find_runs
from lddyn.analysis.report import write_report
from lddyn.analysis.results import results_table
from lddyn.cli.main import app
from lddyn.config import load_config
from lddyn.sinks.parquet import ParquetSink
from lddyn.sinks.runinfo import write_json_atomic
from lddyn.train.run import start_run

COMMON = [
    "train.steps=12",
    "train.eval_every=4",
    "train.checkpoint_every=12",
    "train.log_every=4",
    "train.threads=1",
    "probe.baseline=true",
    "probe.every=4",
    "record.dynamics=true",
    "record.every=4",
]
RUNS = {
    "dytrim": ("digits-dytrim", ["methods.cdmad.start_step=2", "methods.dytrim.prior_start_step=2"]),
    "la": ("digits-fixmatch", ["methods=logit_adjust", "probe.baseline=false"]),
}
# figure -> (axis index, attribute, text it must contain)
LABELS = {
    "recall": [(0, "ylabel", "recall"), (0, "xlabel", "head → tail")],
    "baseline_prior": [(0, "ylabel", "softmax(z(I))"), (1, "ylabel", "KL")],
    "step_dynamics": [(0, "ylabel", "Δ log π"), (0, "title", "obs"), (0, "xlabel", "target class")],
    "bias_accumulation": [(0, "ylabel", "source class"), (1, "title", "by term"), (2, "xlabel", "step")],
    "unified": [
        (0, "title", "supervised"),
        (1, "title", "consistency"),
        (2, "title", "source"),
        (3, "title", "prior"),
    ],
    "pruning": [(0, "title", "labeled"), (1, "title", "unlabeled"), (2, "ylabel", "weight")],
    "realised": [(0, "xlabel", "predicted"), (0, "ylabel", "measured"), (1, "title", "residual")],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        name: start_run(load_config(preset, COMMON + extra), root / name, progress=False)
        for name, (preset, extra) in RUNS.items()
    }


def axis_text(fig, index: int, attr: str) -> str:  # noqa: ANN001
    return getattr(fig.axes[index], f"get_{attr}")()


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_figure_builds(name: str, runs: dict[str, Path], tmp_path: Path) -> None:
    given = list(runs.values()) if name in MULTI_RUN else [runs["dytrim"]]
    fig = FIGURES[name](given)
    for index, attr, text in LABELS[name]:
        assert text in axis_text(fig, index, attr), (name, index, attr)
    paths = save(fig, tmp_path / name)
    assert [p.suffix for p in paths] == [".pdf", ".png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_figure_content(runs: dict[str, Path]) -> None:
    prior_fig = FIGURES["baseline_prior"]([runs["dytrim"]])
    assert any("pseudo-labels" in line.get_label() for line in prior_fig.axes[1].get_lines())
    unified = FIGURES["unified"](list(runs.values()))
    labels = unified.axes[0].get_legend_handles_labels()[1]
    assert any(lbl.startswith("cdmad+dytrim") for lbl in labels)
    assert any(lbl.startswith("logit_adjust: G direction") for lbl in labels)
    with pytest.raises(ValueError, match="recorded steps"):
        FIGURES["step_dynamics"]([runs["dytrim"]], step=5)


def legends_and_data(fig) -> tuple[list, list]:  # noqa: ANN001
    """Window extents of the figure's legends and of every plotted artist (lines, bars, meshes)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    boxes = [
        artist.get_window_extent(renderer)
        for ax in fig.axes
        for artist in (*ax.lines, *ax.collections, *ax.patches)
        if artist.get_visible()
    ]
    drawn = [b for b in boxes if np.isfinite(b.bounds).all() and (b.width > 0 or b.height > 0)]
    return [lg.get_window_extent(renderer) for lg in legends], drawn


@pytest.mark.parametrize("name", ["baseline_prior", "bias_accumulation", "pruning"])
def test_legends_never_cover_data(name: str, runs: dict[str, Path]) -> None:
    legends, drawn = legends_and_data(FIGURES[name]([runs["dytrim"]]))
    assert legends and len(drawn) > 10
    for legend in legends:
        covered = [b for b in drawn if legend.overlaps(b)]
        assert not covered, (name, legend, covered[:3])


def test_labeled_prior_is_in_the_baseline_prior_legend(runs: dict[str, Path]) -> None:
    fig = FIGURES["baseline_prior"]([runs["dytrim"]])
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "labeled prior" in texts and "0" in texts
    dotted = [line for line in fig.axes[0].lines if line.get_linestyle() == ":" and len(line.get_xdata())]
    assert len(dotted) == 10  # one labeled-prior line per class


def test_available_lists_only_present_tables(runs: dict[str, Path], tmp_path: Path) -> None:
    assert available(runs["dytrim"]) == list(FIGURES)
    assert "baseline_prior" not in available(runs["la"])  # probe.baseline=false
    bare = tmp_path / "bare"
    bare.mkdir()
    write_json_atomic(bare / "run.json", {"status": "running", "config": {}})
    sink = ParquetSink(bare)
    sink.add("metrics", [dict(step=1, split="test", cls=0, metric="recall", value=0.5, debiased=False)])
    sink.flush()
    assert available(bare) == ["recall"]


def test_step_figure_shows_the_update_share_and_the_measured_change(runs: dict[str, Path]) -> None:
    """By default the step figure draws update_logp (each group's share of the Adam update, its
    carry and decay as their own splits) next to the measured change, and says so; gd_logp is one
    option away."""
    fig = FIGURES["step_dynamics"]([runs["dytrim"]])
    assert "update_logp" in fig.axes[0].get_ylabel() and "update_logp" in fig.texts[0].get_text()
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert {"momentum carry", "post-step decay", "measured − BN drift", "supervised"} <= set(labels)
    gd = FIGURES["step_dynamics"]([runs["dytrim"]], quantity="gd_logp")
    assert (
        "gd_logp" in gd.axes[0].get_ylabel()
        and "momentum carry" not in gd.axes[0].get_legend_handles_labels()[1]
    )
    for name in ("bias_accumulation", "unified"):
        fig = FIGURES[name]([runs["dytrim"]])
        assert "update_logp" in fig.texts[0].get_text(), name


def test_split_of_a_step_sums_to_its_prediction(runs: dict[str, Path]) -> None:
    """The splits of update_logp at a step add up with the drift and residual to the measured change."""
    frame = dynamics.contributions(runs["dytrim"])
    step = int(frame.step.max())
    split = dynamics.step_split(frame, step).set_index(["observation", "target_class"]).sum(axis=1)
    rest = sum(
        dynamics.quantity_rows(runs["dytrim"], q, f"step = {step}")
        .set_index(["observation", "target_class"])
        .value
        for q in ("bn_drift", "residual")
    )
    measured = dynamics.quantity_rows(runs["dytrim"], "measured", f"step = {step}")
    measured = measured.set_index(["observation", "target_class"]).value.reindex(split.index)
    assert (split + rest.reindex(split.index) - measured).abs().max() <= 1e-5


def test_first_schema_runs_are_read_under_the_new_names(tmp_path: Path) -> None:
    """A run written by the first table schema (pred_logp; the split in a realised table)."""
    run = tmp_path / "old"
    run.mkdir()
    write_json_atomic(run / "run.json", {"status": "finished", "config": {}})
    sink = ParquetSink(run)
    key = dict(step=10, observation=0, target_class=1, correct=None, status=None)
    sink.add("observations", [dict(step=0, observation=0, kind="test", true_label=1, dataset_index=3)])
    sink.add(
        "dynamics",
        [
            dict(**key, term="sup", source_class=1, quantity="pred_logp", value=0.5),
            dict(**key, term=None, source_class=None, quantity="pred_logp_total", value=0.5),
        ],
    )
    sink.add(
        "realised",
        [
            dict(**key, term="sup", source_class=1, part="group", quantity="pred_logp", value=2.0),
            dict(**key, term=None, source_class=None, part="post_decay", quantity="pred_logp", value=-0.1),
        ],
    )
    sink.flush()
    assert dynamics.contributions(run, "gd_logp").value.tolist() == [0.5]
    upd = dynamics.contributions(run)
    assert sorted(upd.part) == ["group", "post_step"] and upd.value.sum() == pytest.approx(1.9)


def test_coupling_is_its_own_split_not_an_unknown_pseudo_label(runs: dict[str, Path]) -> None:
    """Decoupled groups (the default) record a bn_coupling term with no correctness: it is labelled
    as BatchNorm coupling, and every consistency row of digits has a known correctness."""
    frame = dynamics.contributions(runs["dytrim"])
    split = dynamics.step_split(frame, int(frame.step.max()))
    assert dynamics.COUPLING in split.columns
    assert "consistency, unknown" not in split.columns
    coupling = frame[frame.term.astype(str) == "bn_coupling"].value
    assert float(coupling.abs().sum()) > 0  # the CNN trains with batch statistics


def test_results_table_statistics(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    write_json_atomic(run / "run.json", {"status": "finished", "config": {"methods": [{"name": "cdmad"}]}})
    rows = [
        dict(step=s, split="test", cls=-1, metric=m, value=v, debiased=d)
        for s, v in zip(range(1, 26), [i / 100 for i in range(25)], strict=True)
        for m in ("bacc", "gm", "many", "medium", "few")
        for d in (False, True)
    ]
    sink = ParquetSink(run)
    sink.add("metrics", rows)
    sink.flush()
    table = results_table(find_runs(run)).set_index("view")
    raw = table.loc["raw"]
    assert raw.bacc == pytest.approx(0.24) and raw.step == 25 and raw.methods == "cdmad"
    assert raw.bacc_last20_mean == pytest.approx(sum(range(5, 25)) / 2000)  # evaluations 6..25
    assert raw.bacc_last20_median == pytest.approx(0.145)
    assert (raw.bacc_best, raw.best_step) == (pytest.approx(0.24), 25)


def test_report_cli(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["report", *map(str, runs.values()), "--out", str(out), "--per-run", "dytrim"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and set(table.view) == {"raw", "debiased"}
    assert {"bacc", "gm", "many", "medium", "few", "bacc_last20_mean", "bacc_best"} <= set(table.columns)
    assert "| run |" in (out / "results.md").read_text()
    assert (out / "unified.png").exists() and (out / "recall.pdf").exists()
    assert (out / "dytrim" / "realised.png").exists() and not (out / "la").exists()
    assert "![step_dynamics]" in (out / "report.md").read_text()


def test_report_names_an_unreadable_part_and_writes_the_rest(runs: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(runs["la"], broken)
    bad = sorted((broken / "dynamics").glob("part-*.parquet"))[0]
    bad.write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match=bad.name):
        report = write_report([broken], tmp_path / "out")
    assert any(s.startswith("step_dynamics") for s in report.skipped)
    assert (tmp_path / "out" / "broken" / "pruning.png").exists()
    text = (tmp_path / "out" / "report.md").read_text()
    assert bad.name in text and "Not drawn" in text


def test_analysis_and_checks_never_import_training() -> None:
    code = (
        "import sys, lddyn.analysis.report, lddyn.checks.prop3, lddyn.checks.prior, lddyn.cli.analysis_cmds; "
        "bad = sorted(m for m in sys.modules if m.startswith('lddyn.train')); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
