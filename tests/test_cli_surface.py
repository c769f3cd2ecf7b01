"""The CLI's surface as a user meets it: --version, a --help that loads no heavy library, ``lddyn ls``
at 80 columns, 'did you mean' for a mistyped name, and ``lddyn plot`` writing into the run."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from lddyn.config import PRESET_DIR, load_config, preset_names
from lddyn.train.run import start_run
from tests.conftest import FAST, cli

HEAVY = ("torch", "pandas", "matplotlib")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"], ["plot", "--help"]])
def test_help_and_version_load_no_heavy_library(args: list[str]) -> None:
    code = (
        "import sys\nfrom lddyn.cli.main import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit as exit:\n    assert exit.code in (0, None), exit.code\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out, out


def test_version() -> None:
    assert cli("--version").stdout.strip() == f"lddyn {version('lddyn')}"


def test_ls_at_80_columns_keeps_every_name_and_path_whole() -> None:
    out = cli("ls", env={"COLUMNS": "80"}).stdout
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    first_words = {line.split("  ")[0].strip() for line in lines if line.strip()}
    for name in preset_names():
        assert name in first_words, name  # the whole name, at the start of its own line
    for grid in PRESET_DIR.rglob("*.yml"):
        assert grid.relative_to(PRESET_DIR.parent).as_posix() in first_words, grid
    for folder in ("experiments/", "experiments/cifar10/", "experiments/stl10/"):
        assert any(f"presets in {folder} " in line for line in lines), folder
    digits = next(line for line in lines if line.startswith("digits-dytrim "))
    assert "DyTrim on CDMAD" in digits  # the preset's own first comment sentence
    for figure in ("recall", "baseline_prior", "step_dynamics", "pruning", "realised"):
        row = next(line for line in lines if line.startswith(f"{figure} "))
        assert len(row.split()) > 2, row  # with a description
    assert any(line.startswith("dytrim ") and "pruning" in line for line in lines)


def test_mistyped_preset_and_method_say_did_you_mean(tmp_path: Path) -> None:
    proc = cli("run", "-p", "digits-dytrm", "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "did you mean 'digits-dytrim'?" in proc.stderr
    assert "cifar100-lt50-fixmatch" not in proc.stderr  # not the list of every preset
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = cli("run", "--set", "methods=cdmad,dytrm", "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "did you mean 'dytrim'?" in proc.stderr
    proc = cli("run", "--set", "train.step=3", "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "did you mean 'steps'?" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("plot")
    short = [*FAST, "train.steps=4", "train.eval_every=2", "train.checkpoint_every=4"]
    return [
        start_run(load_config(preset, short), root / name, progress=False)
        for name, preset in (("a", "digits-fixmatch"), ("b", "digits-cdmad"))
    ]


def test_plot_writes_into_the_run_never_into_the_working_directory(
    two_runs: list[Path], tmp_path: Path
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    run = two_runs[0]
    proc = cli("plot", str(run), "--figure", "recall", cwd=cwd)
    assert (run / "figures" / "recall.png").stat().st_size > 1000
    assert (run / "figures" / "recall.pdf").exists() and str(run / "figures" / "recall.png") in proc.stdout
    assert list(cwd.iterdir()) == []
    several = cli("plot", *map(str, two_runs), cwd=cwd, check=False)
    assert several.returncode == 2 and "--out" in several.stderr
    cli("plot", *map(str, two_runs), "--out", str(tmp_path / "both"), cwd=cwd)
    assert (tmp_path / "both" / "recall.png").exists() and list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nope"], "does not exist"),
        (["{tmp}"], "not an lddyn run directory"),
        (["{run}", "-f", "step_dynamics"], "has no dynamics or observations table"),  # not recorded
        (["{run}", "-f", "recal"], "did you mean 'recall'?"),
        (["{run}", "{run2}", "-f", "pruning", "--out", "{tmp}/x"], "draws one run"),
    ],
)
def test_plot_bad_input_is_one_line(
    two_runs: list[Path], tmp_path: Path, args: list[str], message: str
) -> None:
    given = [a.format(tmp=tmp_path, run=two_runs[0], run2=two_runs[1]) for a in args]
    proc = cli("plot", *given, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x").exists()
