"""Checkpoints: flush the tables, then atomically save everything a bit-identical resume needs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lddyn.train.events import Callback

CHECKPOINT = "checkpoint.pt"


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
    """Every ``train.checkpoint_every`` steps and at the end. Must be the last callback of a step."""

    name = "checkpoint"

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        if trainer.state.step % trainer.cfg.train.checkpoint_every == 0 or trainer.finished:
            trainer.sink.flush()
            if trainer.dist.is_main:  # every process holds the same state; one file is enough
                save_checkpoint(trainer, trainer.run_dir / CHECKPOINT)
