"""Sweeps: a grid of seeds x settings x methods expanded into run directories, run by an executor."""

from lddyn.sweep.executors import EXECUTORS, run_sweep
from lddyn.sweep.grid import Grid, RunSpec, load_grid, plan

__all__ = ["EXECUTORS", "Grid", "RunSpec", "load_grid", "plan", "run_sweep"]
