"""``lddyn plot``, ``lddyn report`` and ``lddyn check prop3 | prior``: thin commands over lddyn.analysis
and lddyn.checks.

The checks print a table and exit 1 only when a theory's prediction is contradicted inside its
assumptions; cases outside them are printed with their verdict and never change the exit code.
Bad input (no run, missing table) exits 2 with one error line, like the other commands. pandas,
matplotlib and torch are imported inside the commands, so that ``lddyn --help`` stays light.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from lddyn.suggest import hint

if TYPE_CHECKING:
    import pandas as pd

WIDTH = shutil.get_terminal_size((140, 24)).columns  # rich would wrap at 80 when piped
console = Console(width=WIDTH)
err = Console(stderr=True, width=WIDTH)
check_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Theory checks: a table, exit 1 if contradicted."
)
INPUT_ERRORS = (FileNotFoundError, ValueError)


def print_frame(frame: pd.DataFrame, title: str, digits: int = 4) -> None:
    """A DataFrame as a rich table; floats in general format with ``digits`` significant digits."""
    import pandas as pd

    table = Table(title=title, title_justify="left")
    for col in frame.columns:
        table.add_column(str(col), justify="right" if pd.api.types.is_numeric_dtype(frame[col]) else "left")
    for _, row in frame.iterrows():
        table.add_row(*[f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


def input_error(exc: BaseException) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def check_runs(runs: list[Path], figure: str) -> list[Path]:
    """The runs the figure draws, each an existing run with the tables the figure reads."""
    from lddyn.analysis.dynamics import has_table
    from lddyn.analysis.figures import FIGURES, MULTI_RUN, REQUIRES, available

    if figure not in FIGURES:
        raise ValueError(f"no figure {figure!r}; figures: {', '.join(FIGURES)}{hint(figure, FIGURES)}")
    if len(runs) > 1 and figure not in MULTI_RUN:
        raise ValueError(
            f"figure {figure!r} draws one run, {len(runs)} given (figures of several runs: "
            f"{', '.join(MULTI_RUN)}; lddyn report draws every figure of every run)"
        )
    for run in runs:
        if not (run / "run.json").is_file():
            what = "does not exist" if not run.exists() else "is not an lddyn run directory (no run.json)"
            raise FileNotFoundError(f"run {run} {what}")
        missing = [t for t in REQUIRES[figure] if not has_table(run, t)]
        if missing:
            raise FileNotFoundError(
                f"run {run} has no {' or '.join(missing)} table, which figure {figure!r} reads; "
                f"figures this run has: {', '.join(available(run)) or 'none'}"
            )
    return runs


def plot(
    runs: list[Path] = typer.Argument(..., help="run directories"),
    figure: str = typer.Option("recall", "--figure", "-f", help="figure name (lddyn ls lists them)"),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="output folder; default: the run's own figures/ (required with several runs)",
    ),
) -> None:
    """Draw one figure (PDF and PNG) into the run's own figures/ folder, or into --out.

    A figure of several runs (recall, unified) belongs to none of them: give --out.
    """
    from lddyn.analysis.figures import FIGURES, SKIPPABLE, save

    try:
        check_runs(runs, figure)
        if out is None and len(runs) > 1:
            raise ValueError(f"{len(runs)} runs given: name the output folder with --out")
        folder = out if out is not None else runs[0] / "figures"
        written = save(FIGURES[figure](runs), folder / figure)
    except SKIPPABLE as exc:
        input_error(exc)
        return
    console.print(" ".join(str(p) for p in written), highlight=False, soft_wrap=True)


def report(
    runs: list[str] = typer.Argument(..., help="run directories or glob patterns"),
    out: Path = typer.Option(Path("report"), "--out", "-o", help="output folder"),
    per_run: list[str] = typer.Option(
        [], "--per-run", help="per-run figures only for this run name (repeatable)"
    ),
) -> None:
    """Every available figure of the runs, and a results table (Markdown and CSV)."""
    import pandas as pd

    from lddyn.analysis.report import write_report
    from lddyn.analysis.results import percent_columns, short_statistics

    try:
        result = write_report(list(runs), out, per_run or None)
    except INPUT_ERRORS as exc:
        input_error(exc)
        return
    table = pd.read_csv(out / "results.csv")
    shown = table.assign(**{c: 100 * table[c] for c in percent_columns(table)})
    print_frame(shown.drop(columns=["methods", "run_id", "path"]), "results (percent)", digits=3)
    for line in short_statistics(table):
        err.print(f"[yellow]note:[/] {line}", highlight=False, soft_wrap=True)
    for line in result.skipped:
        err.print(f"[yellow]not drawn:[/] {line}", highlight=False, soft_wrap=True)
    pngs = sum(p.suffix == ".png" for p in result.written)
    console.print(
        f"{pngs} figures (PDF and PNG), results.md, results.csv, report.md in {out}", highlight=False
    )


@check_app.command("prop3")
def prop3(
    grid: str = typer.Option("-2,-0.5,0,0.5,2", "--grid", help="baseline colours k, comma-separated"),
    seed: int = typer.Option(0, "--seed", help="seed of the weights and their perturbation"),
    quick: bool = typer.Option(False, "--quick", help="skip the WRN-28-2 cases (3x32x32, slower)"),
) -> None:
    """Proposition 3: is softmax(z(k*1)) the same for every k, and equal to softmax(bias path)?"""
    from lddyn.checks.prop3 import APPROX_REL, CASES, EXACT_TOL, check_prop3
    from lddyn.cli.prop3_view import show_prop3

    try:
        ks = [float(v) for v in grid.split(",") if v.strip()]
    except ValueError:
        input_error(ValueError(f"--grid {grid!r} is not a comma-separated list of numbers"))
        return
    cases = [c for c in CASES if not (quick and c.model == "wrn28_2")]
    frame = check_prop3(cases, ks, seed)
    title = "Proposition 3: π(I_k) = softmax(b) for every colour k of I_k = k·1?"
    rule = f"exact: change <= {EXACT_TOL:g}; approximate: <= {APPROX_REL:g}"
    show_prop3(console, frame, title, rule)
    if frame.contradicts.any():
        raise typer.Exit(code=1)


@check_app.command("prior")
def prior(
    run: Path | None = typer.Argument(None, help="a run directory with a baseline table"),
    controlled: bool = typer.Option(False, "--controlled", help="also run the controlled case"),
    steps: int = typer.Option(1000, "--steps", help="gradient-descent iterations of the controlled case"),
    tol: float = typer.Option(1e-3, "--tol", help="pass when max |softmax(b) - p| falls below this"),
) -> None:
    """Theorem 1: KL(pi(I) || labeled prior) of a run, and/or the controlled case with a known optimum."""
    from lddyn.checks.prior import Controlled, run_trajectory, run_verdicts

    if run is not None:
        try:
            trajectory = run_trajectory(run)
        except INPUT_ERRORS as exc:
            input_error(exc)
            return
        print_frame(trajectory.reset_index(), f"KL(pi(I) || labeled prior) over training: {run}")
        print_frame(run_verdicts(trajectory), "trend (not judged: no risk minimum, labels + pseudo-labels)")
    if run is None or controlled:
        results = [check_prior_case(Controlled(steps=steps, tol=tol, every=max(steps // 10, 1)), label)
                   for label in ("balanced", "empirical")]  # fmt: skip
        if any(r.contradicts for r in results):
            raise typer.Exit(code=1)


def check_prior_case(case: object, centring: str) -> object:
    """Run and print one controlled case (``centring`` replaces the case's)."""
    from dataclasses import replace

    from lddyn.checks.prior import check_controlled

    result = check_controlled(replace(case, centring=centring))
    title = f"controlled case, centring={centring}: softmax(b_t) vs label prior p and posterior at h=0"
    print_frame(result.trajectory, title)
    console.print(
        f"p = {fmt(result.label_prior)}  p(y|h=0) = {fmt(result.posterior_at_zero)}  "
        f"softmax(b) = {fmt(result.softmax_b)}  verdict: [bold]{result.verdict}[/]",
        highlight=False,
    )
    return result


def fmt(values: object) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
