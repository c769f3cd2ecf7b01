"""Executors of a sweep: ``local`` (a process pool on this machine) and ``submitit`` (SLURM, or
submitit's local executor with ``cluster: local``). Both run the same picklable function,
``execute``, which starts a new run directory or resumes a killed one; finished runs are never
submitted. A failed run is reported and the others go on.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lddyn.config import ConfigError, build_config
from lddyn.sweep.grid import Grid, RunSpec, run_state
from lddyn.sweep.progress import SweepProgress
from lddyn.train.outcome import describe


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # finished | skipped | failed
    detail: str = ""  # one line: the error of a failed run (its run.json holds the traceback)


def execute(run_dir: str, config: dict[str, Any], resume: bool) -> str:
    """Run one grid point in this process; returns its final status (exceptions are re-raised)."""
    from lddyn.train.run import resume_run, start_run

    if resume:
        resume_run(run_dir, progress=False)
    else:
        start_run(build_config(config), run_dir, progress=False)
    return "finished"


def _safe_execute(run_dir: str, config: dict[str, Any], resume: bool, events: Any = None) -> tuple[str, str]:
    """``execute``, reporting the start on ``events`` (a queue) and any error as one line."""
    if events is not None:
        events.put(run_dir)
    try:
        return execute(run_dir, config, resume), ""
    except Exception as exc:  # the sweep goes on; run.json already says "failed", with the traceback
        return "failed", describe(exc)


def run_local(
    jobs: list[tuple[RunSpec, bool]], options: dict[str, Any], progress: SweepProgress
) -> list[Outcome]:
    """A pool of ``workers`` fresh processes (spawned: no forked torch state)."""
    workers = int(options.get("workers", 1))
    if workers < 1:
        raise ConfigError("executor.workers", workers, ">= 1")
    context = multiprocessing.get_context("spawn")
    by_dir = {str(spec.run_dir): (spec, resume) for spec, resume in jobs}
    outcomes: dict[str, Outcome] = {}
    with context.Manager() as manager, ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        events = manager.Queue()
        futures = {
            pool.submit(_safe_execute, run_dir, spec.config.to_dict(), resume, events): spec
            for run_dir, (spec, resume) in by_dir.items()
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while not events.empty():  # a run's start is always queued before it can end
                spec, resume = by_dir[events.get()]
                progress.started(spec.name, resume)
            for future in done:
                spec = futures[future]
                status, detail = future.result()
                outcomes[spec.name] = Outcome(spec.name, status, detail)
                progress.ended(spec.name, status, detail)
    return [outcomes[spec.name] for spec, _ in jobs]


SUBMITIT_KEYS = ("name", "cluster", "folder")


def run_submitit(
    jobs: list[tuple[RunSpec, bool]], options: dict[str, Any], out: Path, progress: SweepProgress
) -> list[Outcome]:
    """One submitit job per run; other ``executor`` keys go to ``update_parameters`` (e.g.
    ``slurm_partition``, ``timeout_min``, ``gpus_per_node``). Starts are seen by polling the jobs."""
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
        (spec, resume, executor.submit(_safe_execute, str(spec.run_dir), spec.config.to_dict(), resume))
        for spec, resume in jobs
    ]
    outcomes: dict[str, Outcome] = {}
    seen: set[str] = set()
    while len(outcomes) < len(submitted):
        for spec, resume, job in submitted:
            if spec.name in outcomes:
                continue
            if spec.name not in seen and (job.done() or job.state in ("RUNNING", "COMPLETED")):
                seen.add(spec.name)
                progress.started(spec.name, resume)
            if job.done():
                status, detail = _job_result(job)
                outcomes[spec.name] = Outcome(spec.name, status, detail)
                progress.ended(spec.name, status, detail)
        if len(outcomes) < len(submitted):
            time.sleep(0.5)
    return [outcomes[spec.name] for spec, _, _ in submitted]


def _job_result(job: Any) -> tuple[str, str]:
    try:
        return job.result()
    except Exception as exc:  # the job itself died (time limit, node failure)
        return "failed", describe(exc)


EXECUTORS: dict[str, Callable[..., list[Outcome]]] = {
    "local": lambda jobs, options, out, progress: run_local(jobs, options, progress),
    "submitit": run_submitit,
}


def run_sweep(
    specs: list[RunSpec],
    grid: Grid,
    out: Path,
    executor: dict[str, Any] | None = None,
    say: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """Skip finished runs, resume killed or failed ones, start the rest, through the grid's executor;
    ``say`` gets a line as each run starts and ends, and the overall progress."""
    options = {**grid.executor, **(executor or {})}
    name = options.get("name", "local")
    if name not in EXECUTORS:
        raise ConfigError("executor.name", name, " | ".join(EXECUTORS))
    states = {spec.name: run_state(spec) for spec in specs}
    jobs = [(spec, states[spec.name] == "resume") for spec in specs if states[spec.name] != "finished"]
    out.mkdir(parents=True, exist_ok=True)
    progress = SweepProgress([spec.name for spec, _ in jobs], say or (lambda line: None))
    done = EXECUTORS[name](jobs, options, out, progress) if jobs else []
    skipped = [
        Outcome(spec.name, "skipped", "finished before") for spec in specs if states[spec.name] == "finished"
    ]
    return skipped + done
