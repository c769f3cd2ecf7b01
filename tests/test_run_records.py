"""run.json tells the truth through the real CLI: failures and interruptions are recorded, a loss
that stops being finite stops the run at that step, ``--resume`` says what it does and extends
``train.steps`` only where the longer run is the run its config describes, and overrides that
cannot take effect are warned about."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from lddyn.config import load_config
from lddyn.overrides import inert_overrides
from lddyn.sinks.parquet import read_table
from tests.conftest import ROOT, cli, overrides

SHORT = ("train.steps=20", "train.eval_every=10", "train.checkpoint_every=10")


def info(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def run_digits(run: Path, *pairs: str, preset: str = "digits-fixmatch", check: bool = True):  # noqa: ANN201
    return cli("run", "-p", preset, "--out", str(run), "-q", "--no-plot", *overrides(*pairs), check=check)


# --- item 1: failures are recorded -------------------------------------------------------------------


def test_unreadable_cifar_batch_leaves_the_run_failed(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(b"not a pickle at all")
    run = tmp_path / "run"
    proc = cli(
        "run", "-p", "reference", "--data-root", str(tmp_path / "data"), "--out", str(run), check=False
    )
    assert proc.returncode == 2 and "data_batch_1" in proc.stderr and "Traceback" not in proc.stderr
    record = info(run)
    assert record["status"] == "failed" and "data_batch_1" in record["error"] and record["step"] == 0
    assert "DataFileError" in record["error"] and "Traceback" in record["traceback"]


def test_non_finite_loss_stops_the_run_at_that_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    diverging = ("optim.name=sgd", "optim.lr=1e6", "model.norm=none", "train.log_every=1")
    proc = run_digits(run, "train.steps=30", "train.checkpoint_every=1", *diverging, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    record = info(run)
    step = record["step"]
    assert record["status"] == "failed" and step > 1
    assert f"not finite at step {step}: loss term sup=nan" in record["error"]
    assert (
        f"not finite at step {step}" in proc.stderr
        and f"checkpoint of step {step - 1} is kept" in proc.stderr
    )
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["step"] == step - 1
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values() if v.is_floating_point())
    train = read_table(run, "train")
    assert train.step.max() == step - 1 and train.value.map(math.isfinite).all()  # no row of the bad step


def start(run: Path, *pairs: str) -> subprocess.Popen:
    args = ["run", "-p", "digits-fixmatch", "--out", str(run), "-q", "--no-plot", *overrides(*pairs)]
    return subprocess.Popen(
        [sys.executable, "-m", "lddyn.cli.main", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_leaves_the_run_interrupted_and_resume_says_from_where(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start(run, "train.steps=400", "train.checkpoint_every=10", "train.eval_every=100")
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted" in stderr and f"--resume {run}" in stderr
    record = info(run)
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"]
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["state"]["step"]
    resumed = cli("run", "--resume", str(run), "-q", "--no-plot")
    assert f"resuming {run} from step {saved}" in resumed.stdout
    record = info(run)
    assert record["status"] == "finished" and record["error"] is None and record["resumed_from"] == saved


# --- item 3: --resume and its overrides ------------------------------------------------------------


def test_resuming_a_finished_run_says_it_is_finished(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_digits(run, *SHORT)
    before = (run / "run.json").read_text()
    proc = cli("run", "--resume", str(run))
    assert f"{run} is finished (step 20 of 20); nothing to resume" in proc.stdout
    assert "train.steps" in proc.stdout and (run / "run.json").read_text() == before


def tables(run: Path) -> dict[str, pd.DataFrame]:
    train = read_table(run, "train")
    return {
        "metrics": read_table(run, "metrics"),
        "train": train[train.quantity != "wall_seconds"].reset_index(drop=True),
        "pruning": read_table(run, "pruning"),
    }


def test_extending_a_finished_run_equals_the_longer_run(tmp_path: Path) -> None:
    longer, extended = tmp_path / "longer", tmp_path / "extended"
    run_digits(longer, *SHORT, "train.steps=40")
    run_digits(extended, *SHORT)
    proc = cli("run", "--resume", str(extended), "--set", "train.steps=40", "-q", "--no-plot")
    assert f"resuming {extended} from step 20, train.steps 20 -> 40" in proc.stdout
    record = info(extended)
    assert record["status"] == "finished" and record["config"]["train"]["steps"] == 40
    assert record["extensions"] == [{"at_step": 20, "steps_before": 20, "steps_after": 40}]
    a, b = tables(longer), tables(extended)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)


def test_resume_refuses_what_it_cannot_apply_and_changes_nothing(tmp_path: Path) -> None:
    run, cosine, dytrim = tmp_path / "run", tmp_path / "cosine", tmp_path / "dytrim"
    run_digits(run, *SHORT)
    run_digits(cosine, *SHORT, "optim.schedule=cosine")
    run_digits(dytrim, *SHORT, preset="digits-dytrim")
    refusals = [
        (run, "optim.lr=0.1", "optim.lr"),
        (run, "train.steps=10", "train.steps"),
        (cosine, "train.steps=40", "optim.schedule=cosine"),
        (dytrim, "train.steps=40", "dytrim has annealed"),
    ]
    for folder, override, named in refusals:
        before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.rglob("*"))
        proc = cli("run", "--resume", str(folder), "--set", override, "-q", "--no-plot", check=False)
        assert proc.returncode == 2 and named in proc.stderr, (override, proc.stderr)
        assert proc.stderr.count("\n") == 1
        assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.rglob("*")) == before


# --- item 5: settings that cannot take effect ----------------------------------------------------------


def test_overrides_without_effect_are_warned_about(tmp_path: Path) -> None:
    proc = run_digits(
        tmp_path / "run", "train.steps=2", "record.every=5", "probe.every=3", "optim.momentum=0.5"
    )
    assert "--set record.every has no effect: record.dynamics is false" in proc.stderr
    assert "--set probe.every has no effect: probe.baseline is false" in proc.stderr
    assert "--set optim.momentum has no effect: optim.name is 'adam'" in proc.stderr
    assert "train.steps" not in proc.stderr


def test_the_effective_config_decides_not_the_flag() -> None:
    on = load_config("digits-fixmatch", ["record.dynamics=true", "probe.baseline=true"])
    assert inert_overrides(on, ["record.every=5", "probe.every=3"]) == []
    off = load_config("digits-fixmatch")
    assert len(inert_overrides(off, ["record.every=5", "record.dynamics=false"])) == 1
