"""``lddyn table``: seeds averaged per setting, the four statistics, the three formats, and the
rule that analysis code never imports the training code."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lddyn.analysis.table import expand_run_paths, paper_table, render
from lddyn.config import load_config
from lddyn.sinks.parquet import ParquetSink
from lddyn.sinks.runinfo import new_run_json, write_json_atomic
from tests.conftest import ROOT, cli

STEPS = range(10, 260, 10)  # 25 evaluations


def bacc(seed: int, step: int) -> float:
    return 0.5 + 0.01 * seed + step / 10_000


def fake_run(root: Path, name: str, seed: int, overrides: list[str], dip: bool = False) -> Path:
    """A finished run directory with a metrics table of known values (no training)."""
    run = root / name
    run.mkdir(parents=True)
    cfg = load_config("digits-fixmatch", [f"train.seed={seed}", *overrides]).to_dict()
    info = new_run_json(cfg, {"seed": seed, "data_seed": 0})
    write_json_atomic(run / "run.json", {**info, "status": "finished"})
    sink, rows = ParquetSink(run), []
    for step in STEPS:
        for debiased in (False, True):
            b = bacc(seed, step) + 0.1 * debiased
            if dip and step == 100:
                b = 0.9  # the best evaluation, not the last one
            values = {"bacc": b, "gm": b - 0.05, "many": 0.95, "medium": b, "few": b - 0.2}
            rows += [dict(step=step, split="test", cls=-1, metric=m, value=v, debiased=debiased)
                     for m, v in values.items()]  # fmt: skip
            rows.append(dict(step=step, split="test", cls=0, metric="recall", value=0.0, debiased=debiased))
    sink.add("metrics", rows)
    sink.flush()
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    for seed in (0, 1, 2):
        fake_run(tmp_path, f"fixmatch-s{seed}", seed, [], dip=seed == 0)
        fake_run(tmp_path, f"cdmad-g20-s{seed}", seed, ["methods=cdmad"])
        fake_run(tmp_path, f"cdmad-g50-s{seed}", seed, ["methods=cdmad", "data.imb_ratio=50"])
    return tmp_path


def test_seeds_are_averaged_per_setting(sweep: Path) -> None:
    table = paper_table(expand_run_paths([sweep]))
    assert set(table.seeds) == {3} and len(table) == 3 * 2 * 4  # settings x views x statistics
    settings = sorted(table.setting.unique())
    assert settings == [
        "digits-fixmatch cdmad (data.imb_ratio=20.0)",
        "digits-fixmatch cdmad (data.imb_ratio=50.0)",
        "digits-fixmatch fixmatch",
    ]
    row = table.set_index(["setting", "view", "statistic"]).loc[
        ("digits-fixmatch cdmad (data.imb_ratio=50.0)", "raw")
    ]
    finals = [bacc(s, 250) for s in (0, 1, 2)]
    assert row.loc["final", "bacc_mean"] == pytest.approx(sum(finals) / 3)
    assert row.loc["final", "bacc_std"] == pytest.approx(0.01)  # sample std of 0.00, 0.01, 0.02 offsets
    last = [sum(bacc(s, t) for t in STEPS[-20:]) / 20 for s in (0, 1, 2)]
    assert row.loc["last20_mean", "bacc_mean"] == pytest.approx(sum(last) / 3)
    assert row.loc["last20_median", "gm_mean"] == pytest.approx(sum(last) / 3 - 0.05)  # symmetric tail
    assert row.loc["final", "many_mean"] == pytest.approx(0.95) and row.loc["final", "many_std"] == 0
    debiased = table.set_index(["setting", "view", "statistic"]).loc[
        ("digits-fixmatch cdmad (data.imb_ratio=50.0)", "debiased", "final")
    ]
    assert debiased.bacc_mean == pytest.approx(sum(finals) / 3 + 0.1)


def test_best_reads_every_metric_at_the_best_bacc_evaluation(sweep: Path) -> None:
    runs = expand_run_paths([sweep / "fixmatch-s0"])
    table = paper_table(runs, stats=["best", "final"], views=["raw"]).set_index("statistic")
    assert table.loc["best", "bacc_mean"] == pytest.approx(0.9)
    assert table.loc["best", "gm_mean"] == pytest.approx(0.85) and table.loc[
        "best", "few_mean"
    ] == pytest.approx(0.7)
    assert table.loc["final", "bacc_mean"] == pytest.approx(bacc(0, 250))
    assert pd.isna(table.loc["best", "bacc_std"])  # one seed: no spread


def test_formats_carry_the_same_numbers(sweep: Path) -> None:
    table = paper_table(
        expand_run_paths([sweep]), stats=["final"], views=["debiased"], metrics=["bacc", "gm"]
    )
    csv = pd.read_csv(io.StringIO(render(table, "csv")))
    assert list(csv.columns) == [
        "setting",
        "view",
        "statistic",
        "bacc_mean",
        "bacc_std",
        "gm_mean",
        "gm_std",
        "seeds",
    ]
    md = render(table, "markdown")
    mean = 100 * (sum(bacc(s, 250) for s in (0, 1, 2)) / 3 + 0.1)
    assert f"{mean:.1f} ± 1.0" in md and md.startswith("| setting | view | statistic | bACC | GM | seeds |")
    latex = render(table, "latex")
    assert f"${mean:.1f} \\pm 1.0$" in latex and latex.count(r"\\") == 1 + len(table)
    assert r"\begin{tabular}{lllrrr}" in latex


def test_bad_statistic_is_named(sweep: Path) -> None:
    with pytest.raises(ValueError, match="'last5'"):
        paper_table(expand_run_paths([sweep]), stats=["last5"])


def test_table_cli_writes_the_chosen_format(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "table.tex"
    proc = cli("table", str(sweep), "--format", "latex", "--out", str(out), "--stat", "final,best")
    assert r"\toprule" in out.read_text() and "written" in proc.stdout
    proc = cli("table", str(sweep / "nope"), check=False)
    assert proc.returncode == 2 and "no lddyn run directory" in proc.stderr


def test_analysis_never_imports_training_code() -> None:
    code = (
        "import sys, importlib, pkgutil, lddyn.analysis as a\n"
        "for m in pkgutil.walk_packages(a.__path__, 'lddyn.analysis.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.startswith('lddyn.train'))\n"
        "assert 'lddyn.analysis.table' in sys.modules\n"
        "print(bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
