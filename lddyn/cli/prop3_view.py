"""How ``lddyn check prop3`` shows its cases: a table when the terminal is wide enough, one block per
case when it is not (a case name never wraps into a row of its own), and a final verdict line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

# frame column -> header saying what the column holds (z: logits centred over the classes); the
# headers are two lines by design, so that the table fits in fewer columns
NUMBERS = {
    "logit_spread": "z spread\nover k",
    "rel_spread": "÷ noise\nspread",
    "spread_k_pos": "z spread\nk > 0",
    "dist_b": "max\n|z - b|",
    "rel_dist_b": "÷ noise\nspread",
}
VERDICTS = {"invariance": "π(I_k) same\nfor all k", "bias_path": "π(I_k) =\nsoftmax(b)"}
ASSUMED = "assumed\nhold?"
JUDGED = "contradicts\nProp. 3"


def label(header: str) -> str:
    """A two-line header on one line, for the block layout."""
    return header.replace("\n", " ")


def judged(row: pd.Series) -> str:
    """Whether the case contradicts the proposition; cases outside its assumptions are not judged."""
    if not row.inside:
        return "not judged"
    return "CONTRADICTS" if row.contradicts else "no"


def number(value: float) -> str:
    return f"{value:.2g}"


def cases_table(frame: pd.DataFrame) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("case", no_wrap=True)
    table.add_column(ASSUMED, no_wrap=True)
    for header in NUMBERS.values():
        table.add_column(header, justify="right", no_wrap=True)
    for header in [*VERDICTS.values(), JUDGED]:
        table.add_column(header, no_wrap=True)
    for _, row in frame.iterrows():
        table.add_row(
            escape(row.case),
            "yes" if row.inside else "no",
            *[number(row[col]) for col in NUMBERS],
            *[row[col] for col in VERDICTS],
            judged(row),
        )
    return table


def case_block(row: pd.Series) -> list[str]:
    """One case as a heading and indented lines, for terminals too narrow for the table."""

    def values(*columns: str) -> str:
        return ", ".join(f"{label(NUMBERS[c])} {number(row[c])}" for c in columns)

    spreads, distances = values("logit_spread", "rel_spread", "spread_k_pos"), values("dist_b", "rel_dist_b")
    return [
        f"[bold]{escape(row.case)}[/]: assumptions hold: {'yes' if row.inside else 'no'}; "
        f"{label(JUDGED)}: {judged(row)}",
        f"{label(VERDICTS['invariance'])}: {row.invariance} ({spreads})",
        f"{label(VERDICTS['bias_path'])}: {row.bias_path} ({distances})",
        f"why: {escape(row.why)}",
    ]


def verdict_line(frame: pd.DataFrame) -> str:
    inside, outside = frame[frame.inside], int((~frame.inside).sum())
    if inside.empty:
        return "verdict: no case inside the proposition's assumptions was checked; nothing is judged."
    wrong = inside[inside.contradicts]
    if len(wrong):
        return (
            f"verdict: Proposition 3 is CONTRADICTED by {len(wrong)} of {len(inside)} cases inside its "
            f"assumptions: {', '.join(wrong.case)}."
        )
    return (
        f"verdict: Proposition 3 holds: all {len(inside)} cases inside its assumptions are exact "
        f"({outside} cases outside them are reported, not judged)."
    )


def show_prop3(console: Console, frame: pd.DataFrame, title: str, rule: str) -> None:
    """The cases (a table, or blocks when it would not fit), what the columns mean, and the verdict."""
    console.print(f"[bold]{escape(title)}[/]", highlight=False)
    table = cases_table(frame)
    unbounded = console.options.update(width=10_000)  # a table's measure is clamped to the width given
    if Measurement.get(console, unbounded, table).maximum <= console.width:
        console.print(table)
        for _, row in frame.iterrows():
            console.print(f"[bold]{escape(row.case)}[/]: {escape(row.why)}", highlight=False)
    else:
        for _, row in frame.iterrows():
            heading, *details = case_block(row)
            console.print(heading, highlight=False)
            for line in details:  # indented, and so are the lines a long one wraps into
                console.print(Padding(line, (0, 0, 0, 2)), highlight=False)
    console.print(
        "z = logits centred over the classes (softmax ignores a common shift); spread = largest change of "
        f"any z; ÷ noise spread = relative to z's spread over noise images. {rule} of that spread. Only "
        "cases whose assumptions hold are judged, and each of them must be exact on both.",
        highlight=False,
    )
    console.print(verdict_line(frame), highlight=False, soft_wrap=True)  # one line, whatever the width
