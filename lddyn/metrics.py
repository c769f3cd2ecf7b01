"""Class-balanced evaluation metrics: per-class recall, bACC, GM, many/medium/few-shot means."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def per_class_recall(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Recall of each class, shape (C,); a class absent from ``target`` gets NaN."""
    correct = torch.bincount(target[pred == target], minlength=num_classes).double()
    total = torch.bincount(target, minlength=num_classes).double()
    return torch.where(total > 0, correct / total.clamp_min(1), torch.full_like(total, float("nan")))


def balanced_accuracy(recall: Tensor | np.ndarray) -> float:
    return float(np.nanmean(np.asarray(recall, dtype=float)))


def geometric_mean(recall: Tensor | np.ndarray) -> float:
    """Geometric mean of recalls, a zero recall replaced by 1/(100 K) as in the reference."""
    r = np.asarray(recall, dtype=float)
    r = r[~np.isnan(r)]
    r = np.where(r == 0, 1.0 / (100 * len(r)), r)
    return float(np.exp(np.log(r).mean()))


def shot_groups(lb_counts: list[int] | np.ndarray) -> dict[str, list[int]]:
    """Classes sorted by labeled count, split into thirds: many / medium / few-shot."""
    order = np.argsort(-np.asarray(lb_counts), kind="stable")
    many, medium, few = np.array_split(order, 3)
    return {"many": many.tolist(), "medium": medium.tolist(), "few": few.tolist()}


def summarize(recall: Tensor | np.ndarray, lb_counts: list[int] | np.ndarray) -> dict[str, float]:
    r = np.asarray(recall, dtype=float)
    out = {"bacc": balanced_accuracy(r), "gm": geometric_mean(r)}
    for name, classes in shot_groups(lb_counts).items():
        out[name] = float(np.nanmean(r[classes])) if classes else float("nan")
    return out
