"""The one long-tail split used by every dataset (the reference's per-class count formula)."""

from __future__ import annotations

import numpy as np


def longtail_counts(n_max: int, ratio: float, num_classes: int, kind: str = "long") -> list[int]:
    """Per-class counts, head first: n_i = floor(n_max * mu**i), mu = (1/ratio)**(1/(K-1)).

    The last class gets ``int(n_max / ratio)`` exactly (as the reference does). ``kind="step"``
    gives n_max to the first K/2 classes and ``int(n_max / ratio)`` to the rest.
    """
    if n_max < 0:
        raise ValueError(f"n_max={n_max} must be >= 0")
    if ratio < 1:
        raise ValueError(f"ratio={ratio} must be >= 1")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    if num_classes == 1:
        return [int(n_max)]
    if kind == "step":
        half = num_classes // 2
        return [int(n_max)] * half + [int(n_max / ratio)] * (num_classes - half)
    if kind != "long":
        raise ValueError(f"kind={kind!r} is not 'long' or 'step'")
    mu = np.power(1 / ratio, 1 / (num_classes - 1))
    counts = [int(n_max * np.power(mu, i)) for i in range(num_classes - 1)]
    return counts + [int(n_max / ratio)]


def split_labeled_unlabeled(
    labels: np.ndarray,
    n_labeled: list[int],
    n_extra: list[int],
    *,
    shuffle: bool,
    seed: int,
    legacy: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference selection: per class, labeled = first N_k, unlabeled = first N_k + M_k.

    The unlabeled set therefore contains the labeled images. With ``shuffle`` the per-class order
    is a permutation drawn from ``seed`` (the data seed); otherwise it is file order. ``legacy``
    draws it as the reference's CIFAR-100 code does: np.random.seed(seed), then np.random.shuffle
    of each class's indices in class order, skipped altogether for seed 0.
    """
    rng = np.random.default_rng(seed)
    legacy_rng = np.random.RandomState(seed) if legacy else None  # same stream as np.random.seed
    lab, unl = [], []
    for k, (n, m) in enumerate(zip(n_labeled, n_extra, strict=True)):
        idx = np.flatnonzero(labels == k)
        if shuffle and legacy_rng is not None:
            if seed != 0:
                legacy_rng.shuffle(idx)
        elif shuffle:
            idx = idx[rng.permutation(len(idx))]
        if n + m > len(idx):
            raise ValueError(
                f"class {k} has {len(idx)} images but the split asks for {n} labeled + {m} extra unlabeled"
            )
        lab.append(idx[:n])
        unl.append(idx[: n + m])
    return np.concatenate(lab), np.concatenate(unl)
