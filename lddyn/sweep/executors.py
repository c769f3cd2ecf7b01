"""Executors of a sweep: ``local`` (a process pool on this machine) and ``submitit`` (SLURM, or
submitit's local executor with ``cluster: local``). Both run the same picklable function,
``execute``, which starts a new run directory or resumes a killed one; finished runs are never
submitted. A failed run is reported and the others go on.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lddyn.config import ConfigError, build_config
from lddyn.sweep.grid import Grid, RunSpec, run_state


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # finished | skipped | failed
    detail: str = ""


def execute(run_dir: str, config: dict[str, Any], resume: bool) -> str:
    """Run one grid point in this process; returns its final status (exceptions are re-raised)."""
    from lddyn.train.run import resume_run, start_run

    if resume:
        resume_run(run_dir, progress=False)
    else:
        start_run(build_config(config), run_dir, progress=False)
    return "finished"


def _safe_execute(run_dir: str, config: dict[str, Any], resume: bool) -> tuple[str, str]:
    try:
        return execute(run_dir, config, resume), ""
    except Exception as exc:  # the sweep goes on; run.json already says "failed"
        return "failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"


def run_local(jobs: list[tuple[RunSpec, bool]], options: dict[str, Any]) -> list[Outcome]:
    """A pool of ``workers`` fresh processes (spawned: no forked torch state)."""
    workers = int(options.get("workers", 1))
    if workers < 1:
        raise ConfigError("executor.workers", workers, ">= 1")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            (spec, pool.submit(_safe_execute, str(spec.run_dir), spec.config.to_dict(), resume))
            for spec, resume in jobs
        ]
        results = [(spec, f.result()) for spec, f in futures]
    return [Outcome(spec.name, status, detail) for spec, (status, detail) in results]


SUBMITIT_KEYS = ("name", "cluster", "folder")


def run_submitit(jobs: list[tuple[RunSpec, bool]], options: dict[str, Any], out: Path) -> list[Outcome]:
    """One submitit job per run; other ``executor`` keys go to ``update_parameters`` (e.g.
    ``slurm_partition``, ``timeout_min``, ``gpus_per_node``)."""
    try:
        import submitit
    except ImportError as exc:
        raise ConfigError(
            "executor.name", "submitit", "local (install the [cluster] extra for submitit)"
        ) from exc
    folder = Path(options.get("folder", out / "submitit"))
    executor = submitit.AutoExecutor(folder=folder, cluster=options.get("cluster"))
    params = {k: v for k, v in options.items() if k not in SUBMITIT_KEYS}
    executor.update_parameters(**{"timeout_min": 60 * 24, **params})
    submitted = [
        (spec, executor.submit(_safe_execute, str(spec.run_dir), spec.config.to_dict(), resume))
        for spec, resume in jobs
    ]
    outcomes = []
    for spec, job in submitted:
        try:
            status, detail = job.result()
        except Exception as exc:  # the job itself died (time limit, node failure)
            status, detail = "failed", f"{type(exc).__name__}: {exc}"
        outcomes.append(Outcome(spec.name, status, detail))
    return outcomes


EXECUTORS: dict[str, Callable[..., list[Outcome]]] = {
    "local": lambda jobs, options, out: run_local(jobs, options),
    "submitit": run_submitit,
}


def run_sweep(
    specs: list[RunSpec], grid: Grid, out: Path, executor: dict[str, Any] | None = None
) -> list[Outcome]:
    """Skip finished runs, resume killed or failed ones, start the rest, through the grid's executor."""
    options = {**grid.executor, **(executor or {})}
    name = options.get("name", "local")
    if name not in EXECUTORS:
        raise ConfigError("executor.name", name, " | ".join(EXECUTORS))
    states = {spec.name: run_state(spec) for spec in specs}
    jobs = [(spec, states[spec.name] == "resume") for spec in specs if states[spec.name] != "finished"]
    out.mkdir(parents=True, exist_ok=True)
    done = EXECUTORS[name](jobs, options, out) if jobs else []
    skipped = [
        Outcome(spec.name, "skipped", "finished before") for spec in specs if states[spec.name] == "finished"
    ]
    return skipped + done
