"""The recorder on short digits runs through lddyn's trainer: rows as configured, parts that add up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lddyn.config import build_config, load_config
from lddyn.sinks.parquet import read_table
from lddyn.train.callbacks.dynamics import estimate_rows, is_recorded, spread_over_classes
from lddyn.train.run import start_run

OBS = 2 * 10 + 2 + 2 * 3  # test images, baseline colours, tracked labeled + unlabeled


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(
        "digits-dytrim",
        [
            "train.steps=12",
            "train.threads=1",
            "record.every=5",
            "record.dense_until=2",
            "record.obs_per_class=2",
            "record.tracked=3",
            "probe.colors=[0.0, 1.0]",
            "methods.cdmad.start_step=3",
            "methods.dytrim.prior_start_step=3",
        ],
    )
    return start_run(cfg, tmp_path_factory.mktemp("rec") / "run", progress=False)


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(
        "digits-dytrim", ["train.steps=2", "train.threads=1", "record.every=1", "record.groups=exact"]
    )
    return start_run(cfg, tmp_path_factory.mktemp("rec_exact") / "run", progress=False)


def test_the_digits_default_records_the_dynamics() -> None:
    cfg = load_config("digits-dytrim").record
    assert cfg.dynamics and cfg.every == 10 and cfg.obs_per_class == 1 and cfg.baseline_norm == "own"


def test_schedule() -> None:
    cfg = load_config("digits-dytrim", ["record.every=5", "record.dense_until=2"]).record
    assert [s for s in range(1, 13) if is_recorded(cfg, s)] == [1, 2, 5, 10]


def test_spread_over_classes_round_robin() -> None:
    labels = torch.tensor([0, 0, 1, 2, 1, 0])
    assert spread_over_classes(labels, 4).tolist() == [0, 2, 3, 1]


def test_old_run_configs_with_retired_record_keys_still_load() -> None:
    raw = load_config("digits-dytrim").to_dict()
    raw["record"] |= {"realised": True, "per_sample_every": 5}
    assert build_config(raw).record == load_config("digits-dytrim").record


def test_observations_table(run: Path) -> None:
    obs = read_table(run, "observations")
    assert len(obs) == OBS
    assert obs.kind.value_counts().to_dict() == {"test": 20, "labeled": 3, "unlabeled": 3, "baseline": 2}
    assert (obs.step == 0).all() and obs.observation.tolist() == list(range(len(obs)))
    assert obs[obs.kind == "test"].true_label.value_counts().eq(2).all()
    assert obs.set_index("kind").norm.to_dict() == {
        "test": "running",
        "baseline": "own",
        "labeled": "running",
        "unlabeled": "running",
    }


def test_dynamics_rows_as_configured(run: Path) -> None:
    dyn = read_table(run, "dynamics")
    assert sorted(dyn.step.unique()) == [1, 2, 5, 10]
    kg = dyn[dyn.quantity == "kg"]
    groups = kg.groupby("step")[["term", "source_class", "correct", "status"]].apply(
        lambda g: len(g.drop_duplicates())
    )
    assert (kg.groupby("step").size() == groups * OBS * 10).all()  # groups x observations x classes
    for q in ("measured", "bn_drift", "residual"):
        assert dyn[dyn.quantity == q].groupby("step").size().eq(OBS * 10).all()
    coupling = kg[kg.term == "bn_coupling"]
    assert coupling.groupby("step").size().eq(OBS * 10).all() and coupling.source_class.isna().all()
    assert set(dyn.grad_mode) == {"decoupled"} and set(dyn.phase) == {"main"}


def test_update_parts_and_a_small_residual(run: Path) -> None:
    """Every part of the optimiser's update is written; the first-order picture explains the
    baseline images' change (own statistics: no drift) up to a small residual."""
    dyn = read_table(run, "dynamics").merge(
        read_table(run, "observations")[["observation", "kind"]], on="observation"
    )
    assert {"group", "carry", "post_step"} <= set(dyn[dyn.quantity == "update_logp"].part.dropna())
    base = dyn[(dyn.kind == "baseline") & (dyn.quantity == "bn_drift")]
    assert base.value.abs().max() == 0
    late = dyn[(dyn.step == 10) & (dyn.kind == "baseline")]
    residual, measured = (late[late.quantity == q].value.abs().sum() for q in ("residual", "measured"))
    assert 0 < residual < 0.2 * measured


def test_row_estimate_bounds_the_rows_written(run: Path) -> None:
    """The printed estimate is an upper bound per recorded step, and not a loose one."""
    cfg = load_config("digits-dytrim").record
    bound = estimate_rows(cfg, OBS, 10, terms=2)
    per_step = read_table(run, "dynamics").groupby("step").size()
    assert (per_step <= bound).all() and per_step.max() >= bound / 4
    exact = load_config("digits-dytrim", ["record.groups=exact"]).record
    assert bound - estimate_rows(exact, OBS, 10, terms=2) == 3 * OBS * 10  # the coupling: kg, gd, update


def test_exact_mode_is_recorded_as_such(exact_run: Path) -> None:
    dyn = read_table(exact_run, "dynamics")
    assert sorted(dyn.step.unique()) == [1, 2] and set(dyn.grad_mode) == {"exact"}
    assert "bn_coupling" not in set(dyn.term.dropna())
