"""``lddyn`` command line: a thin layer over the library.

Only light modules are imported here: torch, pandas and matplotlib load inside the commands that
need them, so ``lddyn --help`` and ``lddyn --version`` answer at once.
"""

from __future__ import annotations

import os
import time
from importlib.metadata import version as installed_version
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lddyn.config import ConfigError, load_config
from lddyn.overrides import inert_overrides

app = typer.Typer(add_completion=False, no_args_is_help=False, help="Learning dynamics of long-tailed SSL.")
console = Console()
err = Console(stderr=True)


def fail(exc: BaseException, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def run_overrides(set_: list[str], probe: list[str], record: list[str], data_root: Path | None) -> list[str]:
    """The ``--set`` list with ``--data-root``, ``--probe`` and ``--record`` written as overrides."""
    overrides = ([f"data.root={data_root}"] if data_root is not None else []) + list(set_)
    for name in probe:
        if name != "baseline":
            raise ConfigError("--probe", name, "baseline")
        overrides.append("probe.baseline=true")
    for name in record:
        if name != "dynamics":
            raise ConfigError("--record", name, "dynamics")
        overrides.append("record.dynamics=true")
    return overrides


def warn(line: str) -> None:
    err.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)


def show_version(value: bool) -> None:
    if value:
        console.print(f"lddyn {installed_version('lddyn')}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=show_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Learning dynamics of long-tailed SSL."""
    # The CLI only writes figure files: draw headless, whatever display the machine has. A backend
    # set by the user, or one already chosen in this process (tests), is left as it is.
    os.environ.setdefault("MPLBACKEND", "Agg")


@app.command()
def run(
    preset: str = typer.Option("digits-dytrim", "--preset", "-p", help="preset name or YAML path"),
    set_: list[str] = typer.Option([], "--set", "-s", help="override, key.sub=value (repeatable)"),
    probe: list[str] = typer.Option([], "--probe", help="probes to attach: baseline"),
    record: list[str] = typer.Option([], "--record", help="recorders to attach: dynamics"),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="folder with the original data files (= --set data.root=...)"
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="run directory (default runs/PRESET-TIME)"),
    resume: Path | None = typer.Option(
        None, "--resume", help="continue a run from its checkpoint (--set train.steps=N extends it)"
    ),
    log: list[str] = typer.Option([], "--log", help="live view beside the tables: tensorboard"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display"),
    no_plot: bool = typer.Option(False, "--no-plot", help="skip the figures written at the end"),
) -> None:
    """Train, record and summarise one run (the digits DyTrim default with no arguments)."""
    from lddyn.cli.training import (
        EXPECTED,
        NonFiniteLoss,
        RunInterrupted,
        is_main_process,
        resume_run,
        start_run,
        world_from_env,
    )

    main = is_main_process()
    say = (lambda line: console.print(line, highlight=False, soft_wrap=True)) if main else (lambda line: None)
    target = resume  # the run directory, for the line an interruption prints
    try:
        overrides = run_overrides(set_, probe, record, data_root)
        if resume is not None:
            run_dir = resume_run(resume, overrides, progress=not quiet, say=say, logs=log)
            if run_dir is None:  # finished, and not extended: nothing was done
                return
        else:
            cfg = load_config(preset, overrides)
            if out is None and world_from_env()[1] > 1:  # a time stamp could differ between processes
                raise ConfigError("--out", None, "a run directory (required under torchrun)")
            for line in inert_overrides(cfg, overrides, world_from_env()[1]) if main else []:
                warn(line)
            run_dir = target = out or Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
            say(f"run directory: {run_dir}")
            run_dir = start_run(cfg, run_dir, progress=not quiet, logs=log)
        if not main:
            return
        print_summary(run_dir)
        if not no_plot:
            from lddyn.analysis.figures import plot_all

            written = plot_all(run_dir, run_dir / "figures")
            names = ", ".join(p.name for p in written if p.suffix == ".png")
            console.print(f"figures in {run_dir / 'figures'}: {names}", highlight=False, soft_wrap=True)
    except EXPECTED as exc:
        fail(exc)
    except NonFiniteLoss as exc:
        fail(exc, code=1)
    except KeyboardInterrupt as exc:
        stopped = f"interrupted ({exc})" if str(exc) else "interrupted"
        then = f"; continue with: lddyn run --resume {target}" if target is not None else ""
        err.print(f"[bold yellow]{stopped}[/]{then}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=143 if isinstance(exc, RunInterrupted) else 130) from None


@app.command()
def sweep(
    grid_file: Path = typer.Argument(..., help="grid YAML: seeds x settings x methods"),
    set_: list[str] = typer.Option(
        [], "--set", "-s", help="override for every run, key.sub=value (repeatable; after the grid's own)"
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="folder of the runs (default runs/sweeps/NAME)"
    ),
    executor: str | None = typer.Option(
        None, "--executor", "-e", help="local | submitit (overrides the grid)"
    ),
    workers: int | None = typer.Option(None, "--workers", "-w", help="local executor: parallel runs"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, run nothing"),
) -> None:
    """Run a grid: finished runs are skipped, interrupted or failed ones resumed, the rest started."""
    from lddyn.cli.training import EXPECTED
    from lddyn.sweep import load_grid, plan, run_sweep
    from lddyn.sweep.grid import SweepError, run_state, with_overrides

    try:
        grid = with_overrides(load_grid(grid_file), list(set_))
        folder = out or Path(grid.out or Path("runs") / "sweeps" / grid.name)
        specs = plan(grid, folder)
        states = {spec.name: run_state(spec) for spec in specs}
        for line in dict.fromkeys(
            w for spec in specs for w in inert_overrides(spec.config, [*grid.common, *grid.overrides])
        ):
            warn(line)
        shown = Table(title=f"sweep {grid.name}: {len(specs)} runs in {folder}", title_justify="left")
        for col in ("run", "setting", "method", "seed", "state"):
            shown.add_column(col)
        for spec in specs:
            shown.add_row(spec.name, spec.setting, spec.method, str(spec.seed), states[spec.name])
        console.print(shown)
        if dry_run:
            return
        options = {k: v for k, v in (("name", executor), ("workers", workers)) if v is not None}
        say = lambda line: console.print(line, highlight=False, soft_wrap=True)  # noqa: E731
        outcomes = run_sweep(specs, grid, folder, options, say=say)
    except (*EXPECTED, SweepError) as exc:
        fail(exc)
        return
    failed = [o.name for o in outcomes if o.status == "failed"]
    if failed:
        err.print(
            f"[bold red]failed:[/] {', '.join(failed)} (errors above; each run.json holds its traceback)",
            highlight=False,
            soft_wrap=True,
        )
    counts = {s: sum(o.status == s for o in outcomes) for s in ("finished", "skipped", "failed")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; table: lddyn table {folder}")
    if failed:
        raise typer.Exit(code=1)


@app.command()
def table(
    runs: list[str] = typer.Argument(..., help="run directories, glob patterns or folders of runs"),
    fmt: str = typer.Option("markdown", "--format", "-f", help="markdown | csv | latex"),
    out: Path | None = typer.Option(None, "--out", "-o", help="write to this file (default: print)"),
    stat: str = typer.Option(
        "final,best,last20_mean,last20_median", "--stat", help="statistics, comma-separated"
    ),
    view: str = typer.Option("raw,debiased", "--view", help="raw, debiased or both"),
    metric: str = typer.Option("bacc,gm,many,medium,few", "--metric", help="columns, comma-separated"),
) -> None:
    """Paper-style table: mean ± std over seeds per setting, from finished run directories."""
    from lddyn.analysis.table import FORMATS, expand_run_paths, paper_table, render
    from lddyn.sinks.parquet import CorruptPartError

    def items(text: str) -> list[str]:
        return [t.strip() for t in text.split(",") if t.strip()]

    try:
        if fmt not in FORMATS:
            raise ConfigError("--format", fmt, " | ".join(FORMATS))
        found = expand_run_paths(runs)
        unfinished = [r.name for r in found if r.status != "finished"]
        if unfinished:
            err.print(f"[yellow]not finished, left out:[/] {', '.join(unfinished)}", highlight=False)
        finished = [r for r in found if r.status == "finished"]
        if not finished:
            raise FileNotFoundError(f"no finished run among {[r.name for r in found]}")
        text = render(paper_table(finished, items(stat), items(view), items(metric)), fmt)
    except (ConfigError, CorruptPartError, FileNotFoundError, ValueError) as exc:
        fail(exc)
        return
    if out is None:
        print(text, end="")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"{fmt} table of {len(finished)} runs written to {out}", highlight=False)


def print_summary(run_dir: Path) -> None:
    from lddyn.analysis.summary import final_summary

    frame = final_summary(run_dir)
    table = Table(title="final evaluation (%)")  # the run's path follows on its own line: never wrapped
    table.add_column("metric")
    for col in frame.columns:
        table.add_column(col, justify="right")
    for metric, row in frame.iterrows():
        table.add_row(str(metric), *[f"{100 * v:.1f}" for v in row])
    console.print(table)
    console.print(f"tables written under {run_dir}", highlight=False, soft_wrap=True)


from lddyn.cli.analysis_cmds import check_app, plot, report  # noqa: E402
from lddyn.cli.listing import ls  # noqa: E402

app.command("plot")(plot)
app.command("report")(report)
app.command("ls")(ls)
app.add_typer(check_app, name="check")


if __name__ == "__main__":  # pragma: no cover
    app()
