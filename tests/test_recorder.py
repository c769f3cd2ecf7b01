"""The dynamics recorder on a short digits run: rows match the configuration, tables add up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lddyn.config import load_config
from lddyn.dynamics.recorder import estimate_rows, is_recorded, spread_over_classes
from lddyn.sinks.parquet import read_table
from lddyn.train.run import start_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(
        "digits-dytrim",
        [
            "train.steps=12",
            "train.threads=1",
            "record.dynamics=true",
            "record.every=5",
            "record.dense_until=2",
            "record.obs_per_class=2",
            "record.tracked=3",
            "record.per_sample_every=5",
            "probe.colors=[0.0, 1.0]",
            "methods.cdmad.start_step=3",
            "methods.dytrim.prior_start_step=3",
        ],
    )
    return start_run(cfg, tmp_path_factory.mktemp("rec") / "run", progress=False)


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(
        "digits-dytrim",
        ["train.steps=2", "train.threads=1", "record.dynamics=true", "record.every=1", "record.groups=exact"],
    )
    return start_run(cfg, tmp_path_factory.mktemp("rec_exact") / "run", progress=False)


def test_schedule() -> None:
    cfg = load_config("digits-dytrim", ["record.every=5", "record.dense_until=2"]).record
    assert [s for s in range(1, 13) if is_recorded(cfg, s)] == [1, 2, 5, 10]


def test_spread_over_classes_round_robin() -> None:
    labels = torch.tensor([0, 0, 1, 2, 1, 0])
    assert spread_over_classes(labels, 4).tolist() == [0, 2, 3, 1]


def test_observations_table(run: Path) -> None:
    obs = read_table(run, "observations")
    assert len(obs) == 2 * 10 + 2 + 2 * 3  # test images, baseline colours, tracked labeled + unlabeled
    assert obs.kind.value_counts().to_dict() == {"test": 20, "labeled": 3, "unlabeled": 3, "baseline": 2}
    assert (obs.step == 0).all() and obs.observation.tolist() == list(range(len(obs)))
    assert obs[obs.kind == "test"].true_label.value_counts().eq(2).all()


def test_dynamics_rows_and_group_sums(run: Path) -> None:
    dyn = read_table(run, "dynamics")
    assert sorted(dyn.step.unique()) == [1, 2, 5, 10]
    coords = ["step", "observation", "target_class"]
    kg = dyn[dyn.quantity == "kg"]
    groups = kg.groupby("step")[["term", "source_class", "correct", "status"]].apply(
        lambda g: len(g.drop_duplicates())
    )
    per_step = kg.groupby("step").size()
    assert (per_step == groups * 28 * 10).all()  # groups x observations x target classes
    summed = kg.groupby(coords).value.sum()
    total = dyn[dyn.quantity == "kg_total"].set_index(coords).value
    np.testing.assert_allclose(summed.loc[total.index], total, rtol=1e-4, atol=1e-5)
    # the default decoupled mode: every row says so, and the batch-statistics coupling is a group
    assert set(dyn.grad_mode) == {"decoupled"}
    coupling = kg[kg.term == "bn_coupling"]
    assert coupling.groupby("step").size().eq(28 * 10).all() and coupling.source_class.isna().all()
    assert coupling.value.abs().max() > 0


def test_row_estimate_bounds_the_rows_written(run: Path) -> None:
    """The printed estimate is an upper bound per recorded step, and not a loose one."""
    cfg = load_config("digits-dytrim", ["record.realised=false"]).record
    bound = estimate_rows(cfg, 28, 10, terms=2)
    dyn = read_table(run, "dynamics")
    per_step = dyn.groupby("step").size()
    assert (per_step <= bound).all() and per_step.max() >= bound / 4
    with_realised = estimate_rows(load_config("digits-dytrim").record, 28, 10, terms=2)
    both = per_step + read_table(run, "realised").groupby("step").size()
    assert (both <= with_realised).all()
    exact = load_config("digits-dytrim", ["record.realised=false", "record.groups=exact"]).record
    assert bound - estimate_rows(exact, 28, 10, terms=2) == 2 * 28 * 10  # the coupling's kg and logp


def test_exact_mode_is_recorded_as_such(exact_run: Path) -> None:
    dyn = read_table(exact_run, "dynamics")
    assert sorted(dyn.step.unique()) == [1, 2] and set(dyn.grad_mode) == {"exact"}
    assert "bn_coupling" not in set(dyn.term.dropna())
    kg = dyn[dyn.quantity == "kg"]
    summed = kg.groupby(["step", "observation", "target_class"]).value.sum()
    total = dyn[dyn.quantity == "kg_total"].set_index(["step", "observation", "target_class"]).value
    np.testing.assert_allclose(summed.loc[total.index], total, rtol=1e-4, atol=1e-5)
    assert set(read_table(exact_run, "realised").grad_mode) == {"exact"}


def test_realised_parts_add_up(run: Path) -> None:
    rea = read_table(run, "realised")
    coords = ["step", "observation", "target_class"]
    parts = rea[rea.quantity == "pred_logp"].groupby(coords).value.sum()
    other = {q: rea[rea.quantity == q].set_index(coords).value for q in ("measured", "bn_drift", "residual")}
    np.testing.assert_allclose(parts + other["bn_drift"] + other["residual"], other["measured"], atol=1e-5)
    assert {"group", "carry", "post_decay"} <= set(rea.part.dropna())
    assert "bn_coupling" in set(rea[rea.part == "group"].term) and set(rea.grad_mode) == {"decoupled"}


def test_tracked_samples_when_in_batch(run: Path) -> None:
    samples = read_table(run, "dynamics_samples")
    assert not samples.empty  # seeded run: tracked samples are drawn at steps 5 and 10
    assert set(samples.step) <= {5, 10}
    assert set(samples.quantity) <= {"kg_exact", "kg_entk"}
    assert samples.groupby(["step", "term", "index", "quantity"]).size().eq(28 * 10).all()
