"""Readers of run directories: tidy frames (``load``), figures, the results table and the report.

Reads only ``run.json`` and the parquet parts; never imports ``lddyn.train``.
"""

from lddyn.analysis.load import Run, find_runs, load_table, runs_frame

__all__ = ["Run", "find_runs", "load_table", "runs_frame"]
