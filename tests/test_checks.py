"""Theory checks give their documented verdicts on cases built to pass and to fail, and the CLI's exit
code follows only the cases inside the theory's assumptions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lddyn.checks import prior as prior_check
from lddyn.checks import prop3
from lddyn.cli.main import app
from lddyn.sinks.parquet import ParquetSink
from lddyn.sinks.runinfo import write_json_atomic
from tests.conftest import cli

SMALL = {c.name: c for c in prop3.CASES if c.model != "wrn28_2"}
runner = CliRunner()


@pytest.fixture(scope="module")
def small_table():
    return prop3.check_prop3(list(SMALL.values())).set_index("case")


def test_prop3_verdicts_of_the_small_cases(small_table) -> None:
    expected = {
        "mlp BN-batch": ("exact", "exact"),
        "mlp BN-running": ("fails", "fails"),
        "mlp LayerNorm": ("fails", "fails"),
        "mlp no-norm": ("fails", "fails"),
        "cnn BN-batch": ("approximate", "fails"),
        "cnn BN-batch repl-pad": ("exact", "exact"),
        "cnn BN-running": ("fails", "fails"),
    }
    got = {name: (row.invariance, row.bias_path) for name, row in small_table.iterrows()}
    assert got == expected
    assert not small_table.contradicts.any()
    # zero padding: the scale of k is normalised away (eps-level spread for k > 0), its sign is not
    cnn = small_table.loc["cnn BN-batch"]
    assert cnn.spread_k_pos < 1e-3 < cnn.logit_spread


def test_a_case_inside_the_assumptions_that_fails_is_counted() -> None:
    claimed = replace(SMALL["mlp BN-running"], name="running stats claimed inside", inside=True)
    row = prop3.check_case(claimed)
    assert row["invariance"] == "fails" and row["contradicts"]


def test_bias_path_is_the_closed_form_for_the_mlp() -> None:
    model = prop3.make_model(SMALL["mlp BN-batch"])
    bn2 = model.body[5]  # flatten, linear, BN, ReLU, linear, BN, ReLU
    assert isinstance(bn2, torch.nn.BatchNorm1d)
    closed = model.head(torch.relu(bn2.bias))
    assert torch.allclose(prop3.bias_path_logits(model, (1, 8, 8)), closed, atol=1e-12)
    assert closed.abs().max() > 0.1  # perturbed weights: b is not trivially zero


def test_wrn_with_replicate_padding_and_large_eps_is_exact() -> None:
    case = next(c for c in prop3.CASES if c.name == "wrn28_2 BN-batch repl-pad eps=0.1")
    row = prop3.check_case(case, grid=(-1.0, 2.0))
    assert (row["invariance"], row["bias_path"], row["contradicts"]) == ("exact", "exact", False)


def test_cli_prop3_exit_code_follows_counted_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    passing = (SMALL["mlp BN-batch"], SMALL["mlp BN-running"])
    monkeypatch.setattr(prop3, "CASES", passing)
    ok = runner.invoke(app, ["check", "prop3", "--grid", "-1,0,1"])
    assert ok.exit_code == 0, ok.output
    assert "mlp BN-running" in ok.output and "fails" in ok.output and "CONTRADICTS" not in ok.output
    assert ok.output.strip().splitlines()[-1] == (
        "verdict: Proposition 3 holds: all 1 cases inside its assumptions are exact "
        "(1 cases outside them are reported, not judged)."
    )
    wrong = replace(SMALL["mlp BN-running"], name="claimed inside", inside=True)
    monkeypatch.setattr(prop3, "CASES", (*passing, wrong))
    bad = runner.invoke(app, ["check", "prop3", "--grid", "-1,0,1"])
    assert bad.exit_code == 1 and "CONTRADICTS" in bad.output
    assert bad.output.strip().splitlines()[-1] == (
        "verdict: Proposition 3 is CONTRADICTED by 1 of 2 cases inside its assumptions: claimed inside."
    )
    assert runner.invoke(app, ["check", "prop3", "--grid", "a,b"]).exit_code == 2


@pytest.mark.parametrize("columns", [80, 200])
def test_cli_prop3_cases_never_wrap_into_phantom_rows(columns: int) -> None:
    """Narrow: one block per case, its name whole on its heading line; wide: one table row per case,
    under headers that say what each column holds; both end with the verdict line."""
    proc = cli("check", "prop3", "--quick", "--grid", "-1,0,1", env={"COLUMNS": str(columns)})
    lines = [line.rstrip() for line in proc.stdout.splitlines()]
    assert max(len(line) for line in lines[:-1]) <= columns  # the verdict line may run on
    assert lines[-1].startswith("verdict: Proposition 3 holds: all 2 cases inside its assumptions")
    names = list(SMALL)
    starting = [line for line in lines if any(line.lstrip().startswith(n) for n in names)]
    if columns == 80:
        headings = [line for line in lines if any(line.startswith(f"{n}: assumptions hold") for n in names)]
        assert len(headings) == len(names)
        return
    rule = next(i for i, line in enumerate(lines) if line.lstrip().startswith("───"))
    rows = lines[rule + 1 : rule + 1 + len(names)]
    assert [next(n for n in sorted(names, key=len)[::-1] if r.lstrip().startswith(n)) for r in rows] == names
    assert not lines[rule + 1 + len(names)].strip()  # nothing else in the table body
    header = " ".join(lines[rule - 2 : rule])
    assert "contradicts" in header and "counted" not in header and "noise" in header
    assert len(starting) == 2 * len(names)  # each name again on its reason line


def test_controlled_prior_converges_to_the_label_distribution() -> None:
    result = prior_check.check_controlled()
    dist = result.trajectory.dist_prior
    assert result.verdict == "converged" and not result.contradicts
    assert dist.iloc[-1] < 1e-3 < dist.iloc[0] and dist.iloc[-1] < dist.iloc[len(dist) // 4]


def test_controlled_prior_short_training_fails_and_bn_centring_is_reported() -> None:
    short = prior_check.check_controlled(prior_check.Controlled(steps=20, every=10))
    assert short.verdict == "not converged" and short.contradicts
    centred = prior_check.check_controlled(prior_check.Controlled(centring="empirical"))
    assert centred.verdict.startswith("outside") and not centred.contradicts
    # the optimum is the posterior at the (head-shifted) zero feature, more head-heavy than p
    assert centred.trajectory.dist_posterior0.iloc[-1] < 1e-3 < centred.trajectory.dist_prior.iloc[-1]
    assert centred.posterior_at_zero[0] > centred.label_prior[0]


def fake_baseline_run(root: Path) -> Path:
    """A run directory holding only a baseline table: pi(I) moving toward the labeled prior."""
    run = root / "run"
    run.mkdir()
    write_json_atomic(run / "run.json", {"status": "finished", "config": {"methods": []}})
    nan, rows = float("nan"), []
    for step, skew in ((10, 3.0), (20, 2.0), (30, 1.2)):
        probs = torch.tensor([skew, 0.0, -skew]).softmax(0).tolist()
        for c, (p, q) in enumerate(zip(probs, (0.6, 0.3, 0.1), strict=True)):
            rows.append(dict(step=step, source="student_train", color=0.0, cls=c, prob=p, logit=0.0))
            rows.append(dict(step=step, source="labeled_prior", color=nan, cls=c, prob=q, logit=nan))
    sink = ParquetSink(run)
    sink.add("baseline", rows)
    sink.flush()
    return run


def test_cli_prior_on_a_run_and_controlled(tmp_path: Path) -> None:
    run = fake_baseline_run(tmp_path)
    traj = prior_check.run_trajectory(run)
    assert list(traj.columns) == ["student_train k=0"] and traj.index.tolist() == [10, 20, 30]
    assert prior_check.run_verdicts(traj).trend.iloc[0] == "toward the prior"
    out = runner.invoke(app, ["check", "prior", str(run)])
    assert out.exit_code == 0 and "KL" in out.output and "controlled" not in out.output
    both = runner.invoke(app, ["check", "prior", str(run), "--controlled", "--steps", "20"])
    assert both.exit_code == 1 and "not converged" in both.output
    assert runner.invoke(app, ["check", "prior", str(tmp_path / "nothing")]).exit_code == 2
