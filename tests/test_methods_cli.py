"""Every new method's digits preset through the real CLI, and kill/resume equality for BMB."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from lddyn.sinks.parquet import read_table
from tests.conftest import ROOT, cli, overrides

SHORT = (
    "train.steps=12",
    "train.eval_every=6",
    "train.checkpoint_every=6",
    "train.log_every=1",
    "record.every=4",
)
# the terms each preset's steps train, as the train and dynamics tables name them (the -cdmad presets are
# covered by the -dytrim ones, which add DyTrim on top of CDMAD, and by test_methods_more's composition tests)
TERMS = {
    "digits-bmb": {"sup", "sup_aux", "unsup", "unsup_aux", "mem"},
    "digits-alternate": {"sup", "sup_balanced", "pseudo", "temporal_lb", "temporal_ulb"},
    "digits-flexmatch": {"sup", "unsup"},
    "digits-flexmatch-dytrim": {"sup", "unsup"},
    "digits-freematch": {"sup", "unsup", "fair"},
    "digits-freematch-dytrim": {"sup", "unsup", "fair"},
}
PHASES = {
    "digits-bmb": {"warmup", "main"},
    "digits-alternate": {"init", "init_classifier"}
    | {f"loop{k}_{s}" for k in range(1, 6) for s in ("semi", "classifier")},
}
EXTRA = {
    "digits-bmb": ("methods.bmb.tau=0.2", "methods.bmb.warmup=0.25"),  # a bank that fills in 12 steps
    "digits-alternate": ("record.dense_until=4",),  # 12 one-step phases: record the first four
}


@pytest.mark.parametrize("preset", sorted(TERMS))
def test_preset_runs_through_the_cli(tmp_path: Path, preset: str) -> None:
    run = tmp_path / "run"
    args = overrides(*SHORT, *EXTRA.get(preset, ()))
    cli("run", "-p", preset, "--record", "dynamics", "-o", str(run), "-q", "--no-plot", *args)
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    metrics = read_table(run, "metrics")
    bacc = metrics[(metrics.metric == "bacc") & (metrics.step == 12)]
    assert len(bacc) == 2 and bacc.value.between(0, 1).all()
    train = read_table(run, "train")
    losses = {q.removeprefix("loss_") for q in train.quantity.astype(str) if q.startswith("loss_")}
    assert losses == TERMS[preset]  # the terms the steps trained, each logged under its own name
    dynamics = read_table(run, "dynamics")
    assert set(dynamics.term.dropna().astype(str)) >= TERMS[preset]  # each split out in the dynamics
    assert set(train.phase.astype(str)) == PHASES.get(preset, {"main"})
    assert set(dynamics.phase.astype(str)) <= set(train.phase.astype(str))
    per_step = train.groupby("step").phase.nunique()
    assert (per_step == 1).all()  # one phase per step


def tables(run: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for table in ("metrics", "train", "dynamics"):
        frame = read_table(run, table)
        if table == "train":
            frame = frame[frame.quantity != "wall_seconds"]
        out[table] = frame.reset_index(drop=True)
    return out


@pytest.mark.slow
def test_bmb_kill_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    args = overrides(
        "train.steps=40",
        "train.eval_every=10",
        "train.checkpoint_every=10",
        "record.every=10",
        "methods.bmb.tau=0.2",
        "methods.bmb.warmup=0.1",
    )
    base = ["run", "-p", "digits-bmb", "--record", "dynamics", "-q", "--no-plot", *args]
    full, killed = tmp_path / "full", tmp_path / "killed"
    cli(*base, "-o", str(full))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lddyn.cli.main", *base, "-o", str(killed)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not list(killed.glob("metrics/part-*-000000020*.parquet")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    cli("run", "--resume", str(killed), "-q", "--no-plot")
    a, b = tables(full), tables(killed)
    for name in a:
        assert len(a[name]) > 0, name
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)
    assert "mem" in set(a["dynamics"].term.astype(str))  # the bank was in use across the kill
    state = [
        torch.load(run / "checkpoint.pt", weights_only=False)["methods"]["bmb"] for run in (full, killed)
    ]
    for key in ("feat", "label", "origin", "true"):
        assert torch.equal(state[0]["bank"][key], state[1]["bank"][key]), key
    assert (state[0]["bank"]["label"] >= 0).sum() > 0
    assert torch.equal(state[0]["estimate"]["sum"], state[1]["estimate"]["sum"])
