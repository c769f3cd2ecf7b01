"""``lddyn report``: every available figure of the given runs plus the results table.

Layout of the output folder: comparison figures (``MULTI_RUN``) at the top, drawn from every run
that has their tables; per-run figures in one sub-folder per run (its distinct label: the folder
name, under its parent folders where runs of two sweeps share a name); ``results.csv`` and
``results.md`` (the table of ``lddyn.analysis.results``) and ``report.md`` linking everything. A
figure that cannot be drawn (a missing or unreadable part) is listed with the reason, and the
rest of the report is still written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lddyn.analysis.figures import FIGURES, MULTI_RUN, SKIPPABLE, available, save
from lddyn.analysis.load import Run, distinct_names, find_runs
from lddyn.analysis.results import percent_columns, results_table, short_statistics, to_markdown


@dataclass
class Report:
    out: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "figure (run): reason"

    def draw(self, name: str, runs: list[Run], stem: Path) -> None:
        try:
            self.written += save(FIGURES[name]([r.path for r in runs]), stem)
        except SKIPPABLE as exc:
            who = ", ".join(distinct_names([r.path for r in runs]))
            self.skipped.append(f"{name} ({who}): {type(exc).__name__}: {exc}")


def write_report(patterns: list[str | Path], out: Path, per_run: Sequence[str] | None = None) -> Report:
    """Figures and results of the runs matching ``patterns`` (directories or globs) under ``out``;
    ``per_run`` limits the per-run figures to these run names or labels (default: every run)."""
    runs = find_runs(list(patterns))
    labels = dict(zip([r.run_id for r in runs], distinct_names([r.path for r in runs]), strict=True))
    unknown = sorted(set(per_run or ()) - {r.name for r in runs} - set(labels.values()))
    if unknown:
        raise ValueError(f"--per-run {unknown} names no run given; runs: {sorted(labels.values())}")
    report = Report(Path(out))
    for name in FIGURES:
        having = [r for r in runs if name in available(r.path)]
        if name in MULTI_RUN and having:
            report.draw(name, having, report.out / name)
        elif name not in MULTI_RUN:
            for run in having:
                label = labels[run.run_id]
                if per_run is None or run.name in per_run or label in per_run:
                    report.draw(name, [run], report.out / label / name)
    write_results(runs, report)
    return report


def write_results(runs: list[Run], report: Report) -> None:
    table = results_table(runs)
    report.out.mkdir(parents=True, exist_ok=True)
    csv, md = report.out / "results.csv", report.out / "results.md"
    table.to_csv(csv, index=False)
    md.write_text(to_markdown(table, percent_columns(table)))
    bad = [f"- {r.name}: unreadable part {p}" for r in runs for p in r.bad_parts]
    pngs = [p for p in report.written if p.suffix == ".png"]
    notes = [f"Note: {line}." for line in short_statistics(table)]
    lines = ["# lddyn report", "", "Numbers in percent.", "", md.read_text(), *notes, "## Figures", ""]
    lines += [f"![{p.stem}]({p.relative_to(report.out)})" for p in pngs]
    if report.skipped or bad:
        lines += ["", "## Not drawn / not read", "", *[f"- {s}" for s in report.skipped], *bad]
    (report.out / "report.md").write_text("\n".join(lines) + "\n")
    report.written += [csv, md, report.out / "report.md"]
