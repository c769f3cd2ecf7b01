"""``--log tensorboard``: the run's scalars as TensorBoard event files in ``RUN/tensorboard/``.

A live view for long runs, the convention of the SSL code bases researchers already watch; the
parquet tables stay the record. It mirrors rows as the sink receives them, so it shows exactly
what the tables hold: the ``train`` table (loss terms, mask ratio, lr, ...) under ``train/``, the
evaluations under ``eval_raw/`` and ``eval_debiased/`` (bACC, GM, many/medium/few) and
``recall_raw/`` / ``recall_debiased/`` (one scalar per class), and the baseline probe's
π_θ(I) per class under ``prior_<model>_k<colour>/`` (with the labeled prior under
``prior_labeled_prior/``). Needs the ``tensorboard`` extra (``pip install 'lddyn[tensorboard]'``).
A resumed run first hides the events past its checkpoint, as the tables drop their rows.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lddyn.train.events import Callback

FOLDER = "tensorboard"
WIDTH = 3  # class indices zero-padded, so TensorBoard sorts them head to tail


class MissingExtra(ImportError):
    """An optional dependency that a requested feature needs is not installed."""


def require_tensorboard() -> None:
    """Raise MissingExtra with the install line when TensorBoard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("--log tensorboard needs TensorBoard: pip install 'lddyn[tensorboard]'") from exc


def scalars(table: str, frame: pd.DataFrame) -> list[tuple[str, float, int]]:
    """(tag, value, step) of the rows of ``table`` that TensorBoard shows (other tables: none)."""
    if table == "train":
        return [(f"train/{q}", v, s) for s, q, v in zip(frame.step, frame.quantity, frame.value, strict=True)]
    if table == "metrics":
        out = []
        for s, c, m, v, d in zip(
            frame.step, frame.cls, frame.metric, frame.value, frame.debiased, strict=True
        ):
            view = "debiased" if d else "raw"
            tag = f"eval_{view}/{m}" if c < 0 else f"{m}_{view}/class_{c:0{WIDTH}d}"
            out.append((tag, v, s))
        return out
    if table == "baseline":
        out = []
        for s, src, k, c, p in zip(frame.step, frame.source, frame.color, frame.cls, frame.prob, strict=True):
            group = f"prior_{src}" if pd.isna(k) else f"prior_{src}_k{k:g}"
            out.append((f"{group}/class_{c:0{WIDTH}d}", p, s))
        return out
    return []


class TensorBoardLog(Callback):
    """Writes on the main process only; the writer flushes at every evaluation and at the end."""

    name = "tensorboard"

    def __init__(self) -> None:
        require_tensorboard()
        self.writer: Any = None

    def on_train_start(self, trainer) -> None:  # noqa: ANN001
        listeners = getattr(trainer.sink, "listeners", None)
        if not trainer.dist.is_main or listeners is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        step = trainer.state.step
        self.writer = SummaryWriter(
            str(trainer.run_dir / FOLDER), purge_step=step + 1 if step else None, flush_secs=30
        )
        listeners.append(self.observe)

    def observe(self, table: str, frame: pd.DataFrame) -> None:
        if self.writer is None:
            return
        for tag, value, step in scalars(table, frame):
            self.writer.add_scalar(tag, float(value), int(step))
        if table == "metrics":
            self.writer.flush()

    def on_train_end(self, trainer) -> None:  # noqa: ANN001
        if self.writer is not None:
            self.writer.close()
            self.writer = None
