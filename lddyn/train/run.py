"""Start, resume and finish a run directory: run.json, callbacks in their order, failure marking."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lddyn.config import RunConfig, build_config
from lddyn.probes.baseline import BaselineProbe
from lddyn.sinks.runinfo import new_run_json, read_run_json, set_status, write_json_atomic
from lddyn.train.callbacks import EMA, Checkpoint, Evaluate, ProgressDisplay, PruningTable, TrainTable
from lddyn.train.callbacks.checkpoint import CHECKPOINT, load_trainer_state
from lddyn.train.distributed import NullSink, barrier, is_main_process
from lddyn.train.events import Callback
from lddyn.train.trainer import Trainer


class RunDirError(RuntimeError):
    pass


def build_callbacks(cfg: RunConfig, extra: Sequence[Callback] = (), progress: bool = True) -> list[Callback]:
    """EMA first (evaluation reads the EMA model), checkpoint last (it flushes every row of the step)."""
    callbacks: list[Callback] = [EMA(), Evaluate(), TrainTable(), PruningTable()]
    if cfg.probe.baseline:
        callbacks.append(BaselineProbe())
    if cfg.record.dynamics:
        from lddyn.train.callbacks.dynamics import DynamicsRecorder

        callbacks.append(DynamicsRecorder())
    callbacks += list(extra)
    if progress:
        callbacks.append(ProgressDisplay())
    return [*callbacks, Checkpoint()]


def _fit(trainer: Trainer) -> Trainer:
    run_dir, main = trainer.run_dir, trainer.dist.is_main
    try:
        trainer.fit()
    except BaseException as exc:
        trainer.sink.flush()  # rows past the last checkpoint are dropped again on resume
        if main:
            set_status(run_dir, "failed", error=f"{type(exc).__name__}: {exc}", step=trainer.state.step)
        raise
    if main:
        set_status(run_dir, "finished", step=trainer.state.step, wall_seconds=trainer.state.wall_seconds)
    return trainer


def _trainer(cfg: RunConfig, run_dir: Path, extra: Sequence[Callback], progress: bool) -> Trainer:
    """Every process builds the whole trainer and runs every callback; only rank 0 writes."""
    main = is_main_process()
    trainer = Trainer(cfg, run_dir, build_callbacks(cfg, extra, progress and main))
    if not main:
        trainer.sink = NullSink()
    return trainer


def start_run(
    cfg: RunConfig, run_dir: str | Path, *, extra: Sequence[Callback] = (), progress: bool = True
) -> Path:
    run_dir = Path(run_dir)
    if is_main_process():
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RunDirError(f"run directory {run_dir} is not empty; resume it with --resume {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        seeds = {"seed": cfg.train.seed, "data_seed": cfg.data.data_seed}
        write_json_atomic(run_dir / "run.json", new_run_json(cfg.to_dict(), seeds))
    return _fit(_trainer(cfg, run_dir, extra, progress)).run_dir


def load_run_config(run_dir: str | Path) -> RunConfig:
    return build_config(read_run_json(run_dir)["config"])


def resume_run(run_dir: str | Path, *, extra: Sequence[Callback] = (), progress: bool = True) -> Path:
    """Continue a killed or failed run from its last checkpoint; rows past it are dropped first.

    A finished run is left as it is, so resuming is safe to repeat (as sweeps do).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    if read_run_json(run_dir).get("status") == "finished":
        return run_dir
    cfg = load_run_config(run_dir)
    trainer = _trainer(cfg, run_dir, extra, progress)
    trainer.sink.check_parts()
    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.exists():
        try:
            ckpt = torch.load(ckpt_path, weights_only=False)
        except Exception as exc:
            raise RunDirError(f"checkpoint {ckpt_path} cannot be read: {exc}") from exc
        load_trainer_state(trainer, ckpt)
        trainer.sink.truncate_after(trainer.state.step)
    else:  # killed before its first checkpoint: start over, keeping no row
        trainer.sink.truncate_after(-1)
    if trainer.dist.is_main:
        set_status(run_dir, "running", resumed_from=trainer.state.step)
    barrier()  # no process trains before rank 0 has dropped the rows past the checkpoint
    return _fit(trainer).run_dir
