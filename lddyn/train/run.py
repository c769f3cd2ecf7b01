"""Start, resume and finish a run directory: run.json, callbacks in their order, how the run ended."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from lddyn.config import ConfigError, RunConfig, build_config
from lddyn.probes.baseline import BaselineProbe
from lddyn.sinks.parquet import ParquetSink
from lddyn.sinks.runinfo import new_run_json, read_run_json, record_extension, set_status, write_json_atomic
from lddyn.train.callbacks import EMA, Checkpoint, Evaluate, ProgressDisplay, PruningTable, TrainTable
from lddyn.train.callbacks.checkpoint import CHECKPOINT, load_trainer_state, read_checkpoint
from lddyn.train.callbacks.finite import FiniteLoss
from lddyn.train.distributed import NullSink, barrier, is_main_process
from lddyn.train.events import Callback
from lddyn.train.outcome import recorded_outcome
from lddyn.train.resume import check_extension, resume_request
from lddyn.train.trainer import Trainer


class RunDirError(RuntimeError):
    pass


LOGS = ("tensorboard",)  # live views written beside the tables (``--log``)


def log_callbacks(names: Sequence[str]) -> list[Callback]:
    """The callbacks of ``--log`` names; an unknown name, or TensorBoard missing, raises first."""
    for name in names:
        if name not in LOGS:
            raise ConfigError("--log", name, " | ".join(LOGS))
    if not names:
        return []
    from lddyn.train.callbacks.tensorboard import TensorBoardLog

    return [TensorBoardLog()]


def build_callbacks(cfg: RunConfig, extra: Sequence[Callback] = (), progress: bool = True) -> list[Callback]:
    """The finiteness check first (a bad step records nothing), then EMA (evaluation reads the EMA
    model); the checkpoint last (it flushes every row of the step)."""
    callbacks: list[Callback] = [FiniteLoss(), EMA(), Evaluate(), TrainTable(), PruningTable()]
    if cfg.probe.baseline:
        callbacks.append(BaselineProbe())
    if cfg.record.dynamics:
        from lddyn.train.callbacks.dynamics import DynamicsRecorder

        callbacks.append(DynamicsRecorder())
    callbacks += list(extra)
    if progress:
        callbacks.append(ProgressDisplay())
    return [*callbacks, Checkpoint()]


def _finish(trainer: Trainer) -> Path:
    if trainer.dist.is_main:
        state = trainer.state
        set_status(trainer.run_dir, "finished", step=state.step, wall_seconds=state.wall_seconds)
    return trainer.run_dir


def _trainer(cfg: RunConfig, run_dir: Path, extra: Sequence[Callback], progress: bool) -> Trainer:
    """Every process builds the whole trainer and runs every callback; only rank 0 writes."""
    main = is_main_process()
    trainer = Trainer(cfg, run_dir, build_callbacks(cfg, extra, progress and main))
    if not main:
        trainer.sink = NullSink()
    return trainer


def start_run(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    extra: Sequence[Callback] = (),
    progress: bool = True,
    logs: Sequence[str] = (),
) -> Path:
    """A new run in an empty ``run_dir``; run.json says how it ended, whatever stopped it.
    ``logs`` names live views to write beside the tables (``LOGS``)."""
    run_dir, main = Path(run_dir), is_main_process()
    extra = [*extra, *log_callbacks(logs)]
    if main:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RunDirError(f"run directory {run_dir} is not empty; resume it with --resume {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        seeds = {"seed": cfg.train.seed, "data_seed": cfg.data.data_seed}
        write_json_atomic(run_dir / "run.json", {**new_run_json(cfg.to_dict(), seeds), "log": list(logs)})
    with recorded_outcome(run_dir, main) as outcome:
        outcome.trainer = trainer = _trainer(cfg, run_dir, extra, progress)
        trainer.fit()
    return _finish(trainer)


def load_run_config(run_dir: str | Path) -> RunConfig:
    return build_config(read_run_json(run_dir)["config"])


def resume_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    extra: Sequence[Callback] = (),
    progress: bool = True,
    say: Callable[[str], None] | None = None,
    logs: Sequence[str] = (),
) -> Path | None:
    """Continue a run from its last checkpoint (rows past it are dropped first); ``overrides`` may
    only grow ``train.steps`` (lddyn.train.resume). ``say`` gets one line on what is done. The
    run's own ``--log`` views go on, with ``logs`` added.

    Returns None, leaving everything as it is, for a finished run that is not extended: resuming
    is safe to repeat (as sweeps do). Refusals change nothing on disk.
    """
    run_dir, main = Path(run_dir), is_main_process()
    tell = say if say is not None and main else (lambda line: None)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    info = read_run_json(run_dir)
    request = resume_request(info["config"], list(overrides))
    ParquetSink(run_dir).check_parts()  # a damaged part is named, and nothing is removed
    finished = info.get("status") == "finished"
    if finished and not request.extends:
        tell(
            f"{run_dir} is finished (step {info.get('step', request.old_steps)} of {request.old_steps}); "
            f"nothing to resume. Extend it with --set train.steps=N (N > {request.old_steps})"
        )
        return None
    logs = list(dict.fromkeys([*info.get("log", []), *logs]))
    extra = [*extra, *log_callbacks(logs)]
    ckpt_path = run_dir / CHECKPOINT
    ckpt = read_checkpoint(ckpt_path) if ckpt_path.exists() else None
    with recorded_outcome(run_dir, main and not finished) as outcome:  # a finished run stays finished
        outcome.trainer = trainer = _trainer(request.cfg, run_dir, extra, progress)
        if ckpt is not None:
            load_trainer_state(trainer, ckpt)
    check_extension(trainer, request, ckpt)
    step = trainer.state.step
    grows = f", train.steps {request.old_steps} -> {request.cfg.train.steps}" if request.extends else ""
    tell(f"resuming {run_dir} from step {step}{grows}")
    with recorded_outcome(run_dir, main) as outcome:
        outcome.trainer = trainer
        trainer.sink.truncate_after(step if ckpt is not None else -1)  # no checkpoint: start over
        if main:
            if request.extends:
                record_extension(run_dir, request.cfg.to_dict(), step, request.old_steps)
            set_status(run_dir, "running", resumed_from=step, error=None, traceback=None, log=logs)
        barrier()  # no process trains before rank 0 has dropped the rows past the checkpoint
        trainer.fit()
    return _finish(trainer)
