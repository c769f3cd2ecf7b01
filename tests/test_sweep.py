"""``lddyn sweep``: grid expansion, validation before anything runs, the local and submitit
executors, and re-running a sweep (finished runs skipped, killed ones resumed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from lddyn.config import ConfigError
from lddyn.sinks.parquet import read_table
from lddyn.sweep import load_grid, plan, run_sweep
from lddyn.sweep.grid import SweepError, parse_grid, run_state, with_overrides
from lddyn.train.events import Callback
from lddyn.train.run import start_run
from tests.conftest import cli

TINY = [
    "train.threads=1",
    "train.steps=6",
    "train.eval_every=3",
    "train.checkpoint_every=3",
    "train.log_every=3",
]
GRID = {
    "name": "tiny",
    "seeds": [0, 1],
    "set": TINY,
    "settings": {
        "g20": {"preset": "digits-dytrim"},
        "g50": {"preset": "digits-dytrim", "set": ["data.imb_ratio=50"]},
    },
    "methods": {"fixmatch": [], "dytrim": ["cdmad", {"name": "dytrim", "keep_rate": 0.5}]},
}


def write_grid(path: Path, **changes: object) -> Path:
    path.write_text(yaml.safe_dump({**GRID, **changes}))
    return path


def test_grid_expands_to_deterministic_names_and_configs(tmp_path: Path) -> None:
    specs = plan(parse_grid(GRID), tmp_path)
    names = [s.name for s in specs]
    assert names == [f"{g}-{m}-s{s}" for g in ("g20", "g50") for m in ("fixmatch", "dytrim") for s in (0, 1)]
    assert [s.name for s in plan(parse_grid(GRID), tmp_path)] == names  # same grid, same names
    by_name = {s.name: s.config for s in specs}
    assert by_name["g50-dytrim-s1"].train.seed == 1 and by_name["g50-dytrim-s1"].data.imb_ratio == 50
    assert by_name["g20-fixmatch-s0"].methods == () and by_name["g20-fixmatch-s0"].train.steps == 6
    cdmad, dytrim = by_name["g20-dytrim-s0"].methods
    assert dytrim.keep_rate == 0.5  # the grid's option
    assert cdmad.start_step == 300  # the preset's option for a method named in the grid


@pytest.mark.parametrize(
    ("change", "named"),
    [({"seeds": [0, 0]}, "grid.seeds"), ({"colour": 1}, "grid.colour"),
     ({"settings": {"g": {"preset": "nope"}}}, "preset"),
     ({"set": ["train.steps=0"]}, "train.steps"),
     ({"methods": {"x": ["not_a_method"]}}, "not_a_method")],
)  # fmt: skip
def test_bad_grid_fails_before_any_run(tmp_path: Path, change: dict, named: str) -> None:
    with pytest.raises((ConfigError, KeyError, ValueError), match=named):
        plan(load_grid(write_grid(tmp_path / "grid.yml", **change)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


class Crash(Callback):
    """Dies after step 4 (its checkpoint is at step 3), as a killed process would leave it."""

    name = "crash"

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        if trainer.state.step == 4:
            raise RuntimeError("simulated kill")


@pytest.mark.slow
def test_local_sweep_skips_finished_and_resumes_killed(tmp_path: Path) -> None:
    grid = parse_grid({**GRID, "seeds": [0], "settings": {"g20": GRID["settings"]["g20"]}})
    out = tmp_path / "sweep"
    specs = plan(grid, out)
    killed = specs[1]  # g20-dytrim-s0
    with pytest.raises(RuntimeError, match="simulated kill"):
        start_run(killed.config, killed.run_dir, extra=[Crash()], progress=False)
    info = json.loads((killed.run_dir / "run.json").read_text())
    write_state = {**info, "status": "running"}  # a SIGKILL leaves "running" behind
    (killed.run_dir / "run.json").write_text(json.dumps(write_state))
    assert [run_state(s) for s in specs] == ["new", "resume"]

    outcomes = run_sweep(specs, grid, out, {"workers": 2})
    assert sorted(o.status for o in outcomes) == ["finished", "finished"], outcomes
    for spec in specs:
        info = json.loads((spec.run_dir / "run.json").read_text())
        assert info["status"] == "finished" and info["config"]["train"]["seed"] == 0
        metrics = read_table(spec.run_dir, "metrics")
        assert sorted(metrics.step.unique()) == [3, 6] and not metrics.duplicated().any()
    assert json.loads((killed.run_dir / "run.json").read_text())["resumed_from"] == 3

    before = {s.name: (s.run_dir / "run.json").stat().st_mtime_ns for s in specs}
    again = run_sweep(specs, grid, out)
    assert [o.status for o in again] == ["skipped", "skipped"]
    assert before == {s.name: (s.run_dir / "run.json").stat().st_mtime_ns for s in specs}


def test_a_changed_grid_does_not_take_over_old_runs(tmp_path: Path) -> None:
    grid = parse_grid(
        {**GRID, "seeds": [0], "settings": {"g20": GRID["settings"]["g20"]}, "methods": {"f": []}}
    )
    spec = plan(grid, tmp_path)[0]
    start_run(spec.config, spec.run_dir, progress=False)
    changed = parse_grid(
        {**GRID, "seeds": [0], "settings": {"g20": {"preset": "digits-fixmatch"}}, "methods": {"f": []}}
    )
    with pytest.raises(SweepError, match="differs from the grid"):
        run_state(plan(changed, tmp_path)[0])


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("submitit") is None, reason="submitit (the [cluster] extra) missing"
)
def test_submitit_executor_runs_through_the_cli(tmp_path: Path) -> None:
    grid = write_grid(
        tmp_path / "grid.yml",
        seeds=[3],
        settings={"g20": {"preset": "digits-fixmatch"}},
        methods={"fixmatch": []},
        executor={"name": "submitit", "cluster": "local", "timeout_min": 5},
    )
    out = tmp_path / "runs"
    proc = cli("sweep", str(grid), "--out", str(out))
    assert "1 finished, 0 skipped, 0 failed" in proc.stdout
    run = out / "g20-fixmatch-s3"
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert sorted(read_table(run, "metrics").step.unique()) == [3, 6]
    assert list((out / "submitit").glob("*_result.pkl"))  # it really went through submitit
    assert "0 finished, 1 skipped" in cli("sweep", str(grid), "--out", str(out)).stdout


def test_sweep_set_applies_to_every_run_and_each_run_reports_one_line(tmp_path: Path) -> None:
    grid = write_grid(
        tmp_path / "grid.yml",
        seeds=[0, 1],
        settings={"g20": {"preset": "digits-fixmatch"},
                  "bad": {"preset": "digits-fixmatch", "set": ["data.dataset=cifar10"]}},  # no data.root
        methods={"fixmatch": []},
    )  # fmt: skip
    out = tmp_path / "runs"
    proc = cli("sweep", str(grid), "--out", str(out), "--set", "train.steps=4", "-w", "1", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    for name in ("g20-fixmatch-s0", "g20-fixmatch-s1"):
        assert f"start    {name} (new)" in proc.stdout and f"finished {name} in " in proc.stdout
        assert json.loads((out / name / "run.json").read_text())["config"]["train"]["steps"] == 4
    failed = [line for line in proc.stdout.splitlines() if "failed   bad-fixmatch-s0" in line]
    assert len(failed) == 1 and "data.root is not set" in failed[0]
    assert json.loads((out / "bad-fixmatch-s0" / "run.json").read_text())["status"] == "failed"
    assert "sweep: 4/4 done (2 failed)" in proc.stdout and "left" in proc.stdout
    assert "2 finished, 0 skipped, 2 failed" in proc.stdout


def test_sweep_set_cannot_replace_the_grid_seeds(tmp_path: Path) -> None:
    proc = cli(
        "sweep", str(write_grid(tmp_path / "g.yml")), "--set", "train.seed=3", "--dry-run", check=False
    )
    assert proc.returncode == 2 and "train.seed" in proc.stderr and "seeds" in proc.stderr


def test_config_differs_names_the_keys(tmp_path: Path) -> None:
    grid = parse_grid(
        {**GRID, "seeds": [0], "settings": {"g20": GRID["settings"]["g20"]}, "methods": {"f": []}}
    )
    spec = plan(grid, tmp_path)[0]
    start_run(spec.config, spec.run_dir, progress=False)
    changed = plan(with_overrides(grid, ["train.steps=8", "optim.lr=0.01"]), tmp_path)[0]
    with pytest.raises(
        SweepError, match=r"optim.lr: 0.0015 \(run\) vs 0.01 \(grid\); train.steps: 6 \(run\) vs 8"
    ):
        run_state(changed)
