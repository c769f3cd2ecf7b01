"""The long-tail count formula against every row of the split table (docs/recipe.md), and the split
semantics."""

from __future__ import annotations

import numpy as np
import pytest

from lddyn.data import longtail_counts, split_labeled_unlabeled

CIFAR10_100 = [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]


@pytest.mark.parametrize(
    ("n_max", "ratio", "k", "expected"),
    [
        (1500, 100, 10, CIFAR10_100),
        (3000, 100, 10, [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]),
        (1500, 50, 10, [1500, 971, 628, 407, 263, 170, 110, 71, 46, 30]),
        (1500, 150, 10, [1500, 859, 492, 282, 161, 92, 53, 30, 17, 10]),
        (3000, 1, 10, [3000] * 10),
        (450, 10, 10, [450, 348, 269, 208, 161, 125, 96, 75, 58, 45]),
        (450, 20, 10, [450, 322, 231, 165, 118, 85, 61, 43, 31, 22]),
    ],
)
def test_counts_match_reference_table(n_max: int, ratio: float, k: int, expected: list[int]) -> None:
    assert longtail_counts(n_max, ratio, k) == expected


@pytest.mark.parametrize(("n_max", "ratio", "total_l"), [(150, 50, 3751), (150, 100, 3218)])
def test_cifar100_totals_and_ends(n_max: int, ratio: float, total_l: int) -> None:
    counts = longtail_counts(n_max, ratio, 100)
    assert sum(counts) == total_l
    assert counts[0] == 150 and counts[-1] == int(150 / ratio)


def test_cifar100_unlabeled_totals() -> None:
    assert sum(longtail_counts(150, 50, 100)) + sum(longtail_counts(300, 50, 100)) == 11297
    assert sum(longtail_counts(150, 100, 100)) + sum(longtail_counts(300, 100, 100)) == 9704


def test_cifar10_totals() -> None:
    assert sum(CIFAR10_100) == 3720
    assert sum(CIFAR10_100) + sum(longtail_counts(3000, 100, 10)) == 11163
    assert sum(longtail_counts(1500, 50, 10)) + sum(longtail_counts(3000, 50, 10)) == 12593


def test_step_imbalance() -> None:
    assert longtail_counts(100, 10, 4, kind="step") == [100, 100, 10, 10]


@pytest.mark.parametrize(
    ("args", "word"), [((10, 0.5, 10), "ratio"), ((-1, 10, 10), "n_max"), ((10, 10, 0), "num_classes")]
)
def test_bad_arguments_name_the_value(args: tuple, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        longtail_counts(*args)


def test_split_file_order_unlabeled_contains_labeled() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 0])
    lab, unl = split_labeled_unlabeled(labels, [2, 1], [1, 1], shuffle=False, seed=0)
    assert lab.tolist() == [0, 2, 1]
    assert unl.tolist() == [0, 2, 4, 1, 3]
    assert set(lab) <= set(unl)


def test_split_shuffle_depends_on_data_seed_only() -> None:
    labels = np.repeat(np.arange(3), 20)
    a = split_labeled_unlabeled(labels, [5, 3, 2], [5, 3, 2], shuffle=True, seed=1)
    b = split_labeled_unlabeled(labels, [5, 3, 2], [5, 3, 2], shuffle=True, seed=1)
    c = split_labeled_unlabeled(labels, [5, 3, 2], [5, 3, 2], shuffle=True, seed=2)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert not (a[0] == c[0]).all()
    assert np.bincount(labels[a[0]]).tolist() == [5, 3, 2]
    assert np.bincount(labels[a[1]]).tolist() == [10, 6, 4]


def test_split_too_small_class_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="class 1 has 2 images"):
        split_labeled_unlabeled(np.array([0, 0, 0, 1, 1]), [1, 2], [0, 1], shuffle=False, seed=0)
