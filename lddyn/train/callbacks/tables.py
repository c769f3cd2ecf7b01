"""The ``train`` table (loss terms, mask ratio, lr, wall time, phase) and the ``pruning`` table."""

from __future__ import annotations

from typing import Any

import torch

from lddyn.losses import LossTerm
from lddyn.train.events import Callback
from lddyn.train.optim import current_lr


def step_quantities(trainer, ctx, terms: list[LossTerm]) -> dict[str, float]:  # noqa: ANN001
    """Scalar summaries of one step, for the train table and the progress display."""
    with torch.no_grad():
        out = {f"loss_{t.name}": float(t.loss()) for t in terms}
        out["loss"] = sum(out.values())
        if ctx.mask is not None:
            out["mask_ratio"] = float(ctx.mask.mean())
            unsup = next((t for t in terms if t.name == "unsup"), None)
            if unsup is not None:
                correct = unsup.correct[: len(ctx.mask)]
                known = correct >= 0
                if known.any():
                    out["pseudo_label_acc"] = float(correct[known].float().mean())
        for which, stream in trainer.streams.items():
            out[f"kept_{which}"] = stream.pool_size / max(stream.size, 1)
    out["lr"] = current_lr(trainer.optimizer)
    out["wall_seconds"] = trainer.state.wall_seconds
    return out


class TrainTable(Callback):
    name = "train_table"

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        step = trainer.state.step
        if step % trainer.cfg.train.log_every and not trainer.finished:
            return
        quantities = step_quantities(trainer, ctx, terms).items()
        rows = [dict(step=step, quantity=k, value=v, phase=ctx.phase) for k, v in quantities]
        trainer.sink.add("train", rows)


def pruning_rows(
    step: int, which: str, stream, labels: torch.Tensor, num_classes: int
) -> list[dict[str, Any]]:  # noqa: ANN001
    """Per class: kept in the current pool, total in the set, mean loss weight of the kept."""
    labels = labels.cpu()
    pool = getattr(stream, "order", None)
    pool = torch.arange(len(labels)) if pool is None or len(pool) == 0 else pool
    weight = getattr(stream, "weight", torch.ones(len(labels)))
    rows = []
    for c in range(-1 if (labels < 0).any() else 0, num_classes):
        in_class = labels[pool] == c
        kept = int(in_class.sum())
        mean_w = float(weight[pool][in_class].mean()) if kept else float("nan")
        rows.append(
            dict(step=step, set=which, cls=c, kept=kept, total=int((labels == c).sum()), mean_weight=mean_w)
        )
    return rows


class PruningTable(Callback):
    """Writes a stream's per-class state whenever it starts a new pass (and once at step 1)."""

    name = "pruning_table"

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def on_step_end(self, trainer, ctx, terms) -> None:  # noqa: ANN001
        data, step = trainer.data, trainer.state.step
        for which, stream in trainer.streams.items():
            if step > 1 and self.seen.get(which) == stream.passes:
                continue
            self.seen[which] = stream.passes
            labels = data.y_lb if which == "labeled" else data.y_ulb
            trainer.sink.add("pruning", pruning_rows(step, which, stream, labels, data.num_classes))

    def state_dict(self) -> dict[str, Any]:
        return {"seen": dict(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = dict(state.get("seen", {}))
