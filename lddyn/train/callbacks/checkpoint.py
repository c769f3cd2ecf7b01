"""Checkpoints: flush the tables, then atomically save everything a bit-identical resume needs.

A checkpoint holds tensors and plain values only, and is read back with ``weights_only=True``: a
``checkpoint.pt`` from a shared run directory cannot run code when a run is resumed.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from lddyn.train.events import Callback
from lddyn.train.outcome import NonFiniteLoss

CHECKPOINT = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that holds more than tensors and plain values."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded with ``weights_only=True`` (no code runs while loading)."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain values{what}; refusing to load "
            "it (loading such a file can run code)"
        ) from None
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc


def trainer_state(trainer) -> dict[str, Any]:  # noqa: ANN001
    return {
        "state": vars(trainer.state).copy(),
        "model": trainer.model.state_dict(),
        "ema": trainer.ema_model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "methods": {m.name: m.state_dict() for m in trainer.methods},
        "streams": {k: s.state_dict() for k, s in trainer.streams.items()},
        "gen_data": trainer.gen_data.get_state(),
        "gen_aug": trainer.gen_aug.get_state(),
        "torch_rng": torch.get_rng_state(),
        "callbacks": {cb.name: cb.state_dict() for cb in trainer.callbacks},
    }


def load_trainer_state(trainer, ckpt: dict[str, Any]) -> None:  # noqa: ANN001
    for key, value in ckpt["state"].items():
        setattr(trainer.state, key, value)
    trainer.model.load_state_dict(ckpt["model"])
    trainer.ema_model.load_state_dict(ckpt["ema"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scheduler.load_state_dict(ckpt["scheduler"])
    for m in trainer.methods:
        m.load_state_dict(ckpt["methods"].get(m.name, {}))
    for k, s in trainer.streams.items():
        s.load_state_dict(ckpt["streams"][k])
    trainer.gen_data.set_state(ckpt["gen_data"])
    trainer.gen_aug.set_state(ckpt["gen_aug"])
    torch.set_rng_state(ckpt["torch_rng"])
    for cb in trainer.callbacks:
        cb.load_state_dict(ckpt["callbacks"].get(cb.name, {}))


def save_checkpoint(trainer, path: Path) -> None:  # noqa: ANN001
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(trainer_state(trainer), tmp)
    os.replace(tmp, path)


class Checkpoint(Callback):
    """Every ``train.checkpoint_every`` steps and at the end. Must be the last callback of a step.

    Parameters or buffers that are no longer finite are never saved over the last good checkpoint.
    """

    name = "checkpoint"

    def __init__(self) -> None:
        self.saved_step: int | None = None  # step of the checkpoint on disk, if any

    def on_train_start(self, trainer) -> None:  # noqa: ANN001
        if (trainer.run_dir / CHECKPOINT).exists():
            self.saved_step = trainer.state.step

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        if trainer.state.step % trainer.cfg.train.checkpoint_every == 0 or trainer.finished:
            check_finite(trainer.model, trainer.state.step, self.saved_step)
            trainer.sink.flush()
            if trainer.dist.is_main:  # every process holds the same state; one file is enough
                save_checkpoint(trainer, trainer.run_dir / CHECKPOINT)
            self.saved_step = trainer.state.step


def check_finite(model: torch.nn.Module, step: int, saved: int | None) -> None:
    """Raise NonFiniteLoss naming the first parameter or buffer of ``model`` that is not finite."""
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                kept = f"the checkpoint of step {saved} is kept" if saved else "no checkpoint was written"
                raise NonFiniteLoss(f"{name} is not finite after step {step}; the run stops there, {kept}")
