"""The notebooks (jupytext percent files) execute top to bottom without a failing cell, and every cell
that builds a figure shows it (inline, once)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))
BUILDS_FIGURE = re.compile(r"FIGURES\[|plt\.subplots\(|plt\.figure\(")


def images(cell: dict) -> list[str]:
    """The output types of the cell's outputs that carry a PNG image."""
    return [o.output_type for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    notebook = jupytext.read(path)
    # the kernel named python3 is the interpreter running the tests (ipykernel's native spec)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    # the kernel draws with its own inline backend, as in Jupyter: not with the tests' Agg
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    client.execute(env=env)  # raises CellExecutionError naming the failing cell
    errors = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors
    drawing = [c for c in notebook.cells if c.cell_type == "code" and BUILDS_FIGURE.search(c.source)]
    assert drawing, "every notebook draws at least one figure"
    for cell in drawing:
        shown = images(cell)
        assert shown, f"no image shown by the cell:\n{cell.source}"
        # the returned figure and pyplot's end-of-cell flush would both show the same figure
        assert {"execute_result", "display_data"} - set(shown), f"a figure shown twice:\n{cell.source}"
