"""scikit-learn's handwritten digits (8x8, 1797 images): the embedded data set, no download."""

from __future__ import annotations

import numpy as np


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 (N, 1, 8, 8) in [0, 1] and int64 labels, in the data set's own order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]
    return images, bunch.target.astype(np.int64)


def balanced_holdout(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into a balanced test set (``per_class`` per class) and the remaining pool."""
    rng = np.random.default_rng(seed)
    test = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        if per_class >= len(idx):
            raise ValueError(f"data.test_per_class={per_class} leaves no training image of class {k}")
        test.append(np.sort(rng.choice(idx, size=per_class, replace=False)))
    test_idx = np.concatenate(test)
    pool = np.setdiff1d(np.arange(len(labels)), test_idx)
    return test_idx, pool
