"""bACC and GM (with the 1/(100K) floor) on hand-made predictions."""

from __future__ import annotations

import math

import numpy as np
import torch

from lddyn.metrics import balanced_accuracy, geometric_mean, per_class_recall, shot_groups, summarize


def test_recall_bacc_gm_by_hand() -> None:
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 2, 2])
    recall = per_class_recall(pred, y, 3)
    assert recall.tolist() == [0.75, 0.5, 1.0]
    assert math.isclose(balanced_accuracy(recall), 0.75)
    assert math.isclose(geometric_mean(recall), (0.75 * 0.5 * 1.0) ** (1 / 3))


def test_gm_zero_recall_floor() -> None:
    recall = np.array([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert math.isclose(geometric_mean(recall), 0.001**0.1)


def test_shot_groups_and_summary() -> None:
    counts = [40, 28, 20, 14, 10, 7, 5, 3, 2, 2]
    groups = shot_groups(counts)
    assert groups == {"many": [0, 1, 2, 3], "medium": [4, 5, 6], "few": [7, 8, 9]}
    recall = np.linspace(1.0, 0.1, 10)
    s = summarize(recall, counts)
    assert math.isclose(s["many"], recall[:4].mean()) and math.isclose(s["few"], recall[7:].mean())
