"""``lddyn`` command line: a thin layer over the library."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lddyn.config import ConfigError, load_config, preset_names, preset_path
from lddyn.methods import METHODS
from lddyn.sinks.parquet import CorruptPartError
from lddyn.train.run import RunDirError, resume_run, start_run

app = typer.Typer(add_completion=False, no_args_is_help=False, help="Learning dynamics of long-tailed SSL.")
console = Console()
err = Console(stderr=True)

EXPECTED = (ConfigError, RunDirError, CorruptPartError, FileNotFoundError, ValueError)


def fail(exc: BaseException) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    preset: str = typer.Option("digits-dytrim", "--preset", "-p", help="preset name or YAML path"),
    set_: list[str] = typer.Option([], "--set", "-s", help="override, key.sub=value (repeatable)"),
    probe: list[str] = typer.Option([], "--probe", help="probes to attach: baseline"),
    record: list[str] = typer.Option([], "--record", help="recorders to attach: dynamics"),
    out: Path | None = typer.Option(None, "--out", "-o", help="run directory (default runs/PRESET-TIME)"),
    resume: Path | None = typer.Option(None, "--resume", help="continue a killed run from its checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display"),
    no_plot: bool = typer.Option(False, "--no-plot", help="skip the figures written at the end"),
) -> None:
    """Train, record and summarise one run (the digits DyTrim default with no arguments)."""
    try:
        if resume is not None:
            run_dir = resume_run(resume, progress=not quiet)
        else:
            overrides = list(set_)
            for name in probe:
                if name != "baseline":
                    raise ConfigError("--probe", name, "baseline")
                overrides.append("probe.baseline=true")
            for name in record:
                if name != "dynamics":
                    raise ConfigError("--record", name, "dynamics")
                overrides.append("record.dynamics=true")
            cfg = load_config(preset, overrides)
            run_dir = out or Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
            console.print(f"run directory: {run_dir}", highlight=False)
            run_dir = start_run(cfg, run_dir, progress=not quiet)
        print_summary(run_dir)
        if not no_plot:
            from lddyn.analysis.figures import plot_all

            written = plot_all(run_dir, run_dir / "figures")
            console.print(
                f"figures: {', '.join(str(p) for p in written if p.suffix == '.png')}", highlight=False
            )
    except EXPECTED as exc:
        fail(exc)


@app.command()
def plot(
    runs: list[Path] = typer.Argument(..., help="run directories"),
    figure: str = typer.Option("recall", "--figure", "-f", help="figure name (see lddyn ls)"),
    out: Path = typer.Option(Path("figures"), "--out", "-o", help="output folder"),
) -> None:
    """Draw one figure from one or more runs (PDF and PNG)."""
    from lddyn.analysis.figures import FIGURES, save

    if figure not in FIGURES:
        fail(ConfigError("--figure", figure, " | ".join(FIGURES)))
    try:
        written = save(FIGURES[figure](runs), out / figure)
    except EXPECTED as exc:
        fail(exc)
        return
    console.print(" ".join(str(p) for p in written), highlight=False)


def print_summary(run_dir: Path) -> None:
    from lddyn.analysis.summary import final_summary

    frame = final_summary(run_dir)
    table = Table(title=f"final evaluation: {run_dir}")
    table.add_column("metric")
    for col in frame.columns:
        table.add_column(col, justify="right")
    for metric, row in frame.iterrows():
        table.add_row(str(metric), *[f"{100 * v:.1f}" for v in row])
    console.print(table)
    console.print(f"tables written under {run_dir}", highlight=False)


@app.command("ls")
def ls() -> None:
    """List presets and methods."""
    table = Table(title="presets")
    table.add_column("name")
    table.add_column("file")
    for name in preset_names():
        table.add_row(name, str(preset_path(name)))
    console.print(table)
    methods = Table(title="methods")
    methods.add_column("name")
    methods.add_column("what it changes")
    for name in METHODS.names():
        doc = (sys.modules[METHODS.get(name).__module__].__doc__ or "").strip().splitlines()[0]
        methods.add_row(name, doc)
    console.print(methods)


from lddyn.cli.analysis_cmds import check_app, report  # noqa: E402

app.command("report")(report)
app.add_typer(check_app, name="check")


if __name__ == "__main__":  # pragma: no cover
    app()
