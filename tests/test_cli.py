"""The real CLI end to end on digits: tables, schemas, row counts, kill/resume, and bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lddyn.sinks.parquet import read_table
from tests.conftest import ROOT, cli, overrides

SHORT = ("train.steps=30", "train.eval_every=10", "probe.every=10", "train.checkpoint_every=10")
RECORDED = ("observations", "dynamics")
SCHEMAS = {
    "metrics": ["step", "split", "cls", "metric", "value", "debiased"],
    "train": ["step", "quantity", "value", "phase"],
    "baseline": ["step", "source", "color", "cls", "prob", "logit"],
    "pruning": ["step", "set", "cls", "kept", "total", "mean_weight"],
}


def test_run_end_to_end(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = cli("run", "--probe", "baseline", "--out", str(run), "-q", *overrides(*SHORT))
    assert "bacc" in proc.stdout and "debiased" in proc.stdout
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["config"]["train"]["steps"] == 30
    assert {"versions", "command", "git_revision", "seeds"} <= set(info)
    for table, columns in SCHEMAS.items():
        assert list(read_table(run, table).columns) == columns, table
    metrics = read_table(run, "metrics")
    assert sorted(metrics.step.unique()) == [10, 20, 30]
    assert len(metrics) == 3 * 2 * (10 + 5)  # evals x raw/debiased x (classes + summaries)
    train = read_table(run, "train")
    assert sorted(train.step.unique()) == list(range(5, 31, 5))
    assert {"loss", "loss_sup", "loss_unsup", "mask_ratio", "lr", "wall_seconds"} <= set(train.quantity)
    baseline = read_table(run, "baseline")
    assert sorted(baseline.step.unique()) == [10, 20, 30]
    per_probe = 2 * 3 * 10 + 3 * 10  # colours x models x classes + three priors x classes
    assert len(baseline) == 3 * per_probe
    sums = baseline.groupby(["step", "source", "color"], dropna=False, observed=True).prob.sum()
    assert (sums - 1).abs().max() < 1e-9
    pruning = read_table(run, "pruning")
    assert set(pruning.set) == {"labeled", "unlabeled"} and (pruning.kept <= pruning.total).all()
    # the main job records the grouped decomposition every 10 steps at one test image per class and
    # the two baseline images (their own statistics), and draws its figures beside the others
    obs = read_table(run, "observations")
    assert obs.kind.value_counts().to_dict() == {"test": 10, "baseline": 2}
    assert set(obs[obs.kind == "baseline"].norm) == {"own"}
    dynamics = read_table(run, "dynamics")
    assert sorted(dynamics.step.unique()) == [10, 20, 30]
    assert {"kg", "gd_logp", "update_logp", "measured", "bn_drift", "residual"} == set(dynamics.quantity)
    for name in ("recall", "baseline_prior", "step_dynamics", "bias_accumulation", "realised"):
        for suffix in (".pdf", ".png"):
            assert (run / "figures" / f"{name}{suffix}").stat().st_size > 1000


def test_ls_lists_presets_and_methods() -> None:
    out = cli("ls").stdout
    for name in ("digits-dytrim", "reference", "cdmad", "dytrim", "logit_adjust", "reweight", "resample"):
        assert name in out


def tables(run: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for table in (*SCHEMAS, *RECORDED):
        frame = read_table(run, table)
        if table == "train":
            frame = frame[frame.quantity != "wall_seconds"]
        out[table] = frame.reset_index(drop=True)  # parts are read in step order; rows keep their order
    return out


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    args = overrides(
        "train.steps=120",
        "train.eval_every=20",
        "probe.every=10",
        "train.checkpoint_every=20",
        "record.dynamics=true",
        "record.every=15",
        "record.tracked=2",
    )
    full, killed = tmp_path / "full", tmp_path / "killed"
    cli("run", "--probe", "baseline", "--out", str(full), "-q", *args)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lddyn.cli.main",
            "run",
            "--probe",
            "baseline",
            "--out",
            str(killed),
            "-q",
            *args,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not list(killed.glob("metrics/part-*-000000040*.parquet")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    cli("run", "--resume", str(killed), "-q")
    assert json.loads((killed / "run.json").read_text())["status"] == "finished"
    a, b = tables(full), tables(killed)
    for name in (*SCHEMAS, *RECORDED):
        assert len(a[name]) > 0, name
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)
    assert sorted(a["dynamics"].step.unique()) == list(range(15, 121, 15))


def test_bad_config_value_is_a_clear_error(tmp_path: Path) -> None:
    proc = cli("run", "--out", str(tmp_path / "r"), "--set", "methods.dytrim.keep_rate=1.7", check=False)
    assert proc.returncode == 2
    assert "methods.dytrim.keep_rate" in proc.stderr and "1.7" in proc.stderr and "(0, 1]" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_missing_run_directory(tmp_path: Path) -> None:
    proc = cli("run", "--resume", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_truncated_part_file_fails_and_deletes_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cli("run", "--out", str(run), "-q", *overrides(*SHORT))
    part = sorted((run / "metrics").glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:40])
    before = sorted(p.name for p in run.rglob("*"))
    proc = cli("run", "--resume", str(run), check=False)
    assert proc.returncode == 2 and part.name in proc.stderr and "truncated or corrupt" in proc.stderr
    assert sorted(p.name for p in run.rglob("*")) == before


def test_non_empty_output_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    proc = cli("run", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (tmp_path / "keep.txt").read_text() == "precious"
