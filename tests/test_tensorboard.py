"""``lddyn run --log tensorboard``: the event files beside the tables, read back with TensorBoard's
own reader, hold the same numbers as the parquet tables; a resume hides the events it re-writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lddyn.config import load_config
from lddyn.sinks.parquet import read_table
from lddyn.train.events import Callback
from lddyn.train.run import resume_run, start_run
from tests.conftest import FAST, cli, overrides

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

SHORT = ("train.steps=20", "train.eval_every=10", "train.checkpoint_every=10", "probe.every=10")


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def scalar(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_event_files_mirror_the_tables(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ("run", "-p", "digits-cdmad", "--probe", "baseline", "--log", "tensorboard", "--out", str(run))
    cli(*args, "-q", "--no-plot", *overrides(*SHORT))
    acc = events(run)
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss_sup", "train/loss_unsup", "train/mask_ratio", "train/lr"} <= tags
    for view in ("raw", "debiased"):
        assert {f"eval_{view}/{m}" for m in ("bacc", "gm", "many", "medium", "few")} <= tags
        assert {f"recall_{view}/class_{c:03d}" for c in range(10)} <= tags
    assert {f"prior_student_train_k0/class_{c:03d}" for c in range(10)} <= tags
    assert "prior_labeled_prior/class_000" in tags
    metrics = read_table(run, "metrics")
    for view, debiased in (("raw", False), ("debiased", True)):
        rows = metrics[(metrics.metric == "gm") & (metrics.debiased == debiased)]
        assert scalar(acc, f"eval_{view}/gm") == pytest.approx(dict(zip(rows.step, rows.value, strict=True)))
    train = read_table(run, "train")
    loss = train[train.quantity == "loss_sup"]
    assert scalar(acc, "train/loss_sup") == pytest.approx(dict(zip(loss.step, loss.value, strict=True)))
    baseline = read_table(run, "baseline")
    pi = baseline[(baseline.source == "ema_eval") & (baseline.color == 1.0) & (baseline.cls == 3)]
    assert scalar(acc, "prior_ema_eval_k1/class_003") == pytest.approx(
        dict(zip(pi.step, pi.prob, strict=True))
    )
    assert json.loads((run / "run.json").read_text())["log"] == ["tensorboard"]


class Crash(Callback):
    name = "crash"

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        if trainer.state.step == 14:
            raise RuntimeError("simulated crash")


def test_resume_hides_the_events_past_the_checkpoint_and_keeps_logging(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = load_config(
        "digits-fixmatch", [*FAST, "train.steps=20", "train.eval_every=3", "train.checkpoint_every=10"]
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        start_run(cfg, run, extra=[Crash()], progress=False, logs=["tensorboard"])
    assert [e.step for e in events(run).Scalars("eval_raw/bacc")] == [3, 6, 9, 12]  # 12: past the checkpoint
    resume_run(run, progress=False)  # the run's own --log goes on
    steps = [e.step for e in events(run).Scalars("eval_raw/bacc")]
    assert steps == [3, 6, 9, 12, 15, 18, 20]


def test_unknown_log_is_named(tmp_path: Path) -> None:
    proc = cli("run", "--log", "wandb", "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "--log" in proc.stderr and "tensorboard" in proc.stderr
    assert not (tmp_path / "r").exists()
