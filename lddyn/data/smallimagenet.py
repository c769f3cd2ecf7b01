"""Small-ImageNet-127 (down-sampled ImageNet 32/64, 127 super-classes) from the original pickles.

Each pickle is a dict with ``data`` (N, 3 * s * s) uint8, channel-major rows, and ``labels`` (N,),
1-based; train batches ``train_data_batch_1`` .. ``_10``, test ``val_data``. Two layouts under
data.root are accepted (docs/data.md): the reference's prepared folder ``imagenet{s}_127`` whose
labels are already 1..127, or the official ``Imagenet{s}_train`` / ``Imagenet{s}_val`` folders
(labels 1..1000) plus the three mapping files of ``imagenet127.py`` in data.root itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lddyn.data.errors import DataFileError, check_labels, first_existing, require_root
from lddyn.data.imagenet127 import MAP_FILES, class_map_127
from lddyn.data.safe_pickle import load_data_pickle

CLASSES = 127
MEAN = (0.48109809, 0.45747185, 0.40785507)
STD = (0.26040889, 0.2532126, 0.26820634)
TRAIN = tuple(f"train_data_batch_{i}" for i in range(1, 11))
TEST = "val_data"


@dataclass(frozen=True)
class SmallImageNet:
    """Images (N, 3, s, s) uint8 and 0-based 127-class labels, both splits in file order."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def read_batch(path: Path, side: int, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickle as (N, 3, side, side) uint8 and its labels as stored (1-based)."""
    if not path.exists():
        raise DataFileError(f"{path} is missing")
    try:
        entry = load_data_pickle(path, "down-sampled ImageNet", encoding="latin1")
        data = np.asarray(entry.get("data", entry.get(b"data")), dtype=np.uint8)
        labels = np.asarray(entry.get("labels", entry.get(b"labels")), dtype=np.int64)
    except DataFileError:
        raise
    except Exception as exc:
        raise DataFileError(
            f"{path} is not a readable down-sampled ImageNet pickle (a dict with 'data' and 'labels'): {exc}"
        ) from exc
    width = 3 * side * side
    if data.ndim != 2 or data.shape[1] != width or labels.shape != (len(data),):
        raise DataFileError(
            f"{path}: expected data (N, {width}) for {side} x {side} images and N labels, "
            f"got {data.shape} and {labels.shape}"
        )
    check_labels(path, labels, 1, num_labels, " (labels are stored 1-based)")
    return data.reshape(-1, 3, side, side), labels


def _read_split(paths: list[Path], side: int, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_batch(p, side, num_labels) for p in paths]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_small_imagenet(root: str | Path | None, side: int) -> SmallImageNet:
    """Both splits at ``side`` (32 or 64) with 0-based labels in the 127 super-classes' file order."""
    root = require_root(root, f"imagenet{side}_127 or Imagenet{side}_train / Imagenet{side}_val")
    prepared = [root / f"imagenet{side}_127", root]
    for folder in prepared:
        if (folder / TEST).exists() and (folder / TRAIN[0]).exists():
            x_tr, y_tr = _read_split([folder / name for name in TRAIN], side, CLASSES)
            x_te, y_te = _read_split([folder / TEST], side, CLASSES)
            return SmallImageNet(x_tr, y_tr - 1, x_te, y_te - 1)
    if not (root / MAP_FILES[0]).exists():
        raise DataFileError(
            f"found neither {prepared[0]}/{{{TRAIN[0]}..10, {TEST}}} (labels 1..127) nor the 127-class "
            f"mapping files {', '.join(MAP_FILES)} in {root} to use with Imagenet{side}_train/_val"
        )
    mapping, found = class_map_127(root)
    if found != CLASSES:
        raise DataFileError(f"{root / MAP_FILES[2]}: expected {CLASSES} super-classes (lines), found {found}")
    train_dirs = [root / f"Imagenet{side}_train{part}" for part in ("", "_part1", "_part2")]
    train = [first_existing([d / name for d in train_dirs], name) for name in TRAIN]
    test = first_existing([root / f"Imagenet{side}_val" / TEST], TEST)
    x_tr, y_tr = _read_split(train, side, len(mapping))
    x_te, y_te = _read_split([test], side, len(mapping))
    return SmallImageNet(x_tr, mapping[y_tr - 1], x_te, mapping[y_te - 1])


def reindex_by_size(counts: np.ndarray) -> np.ndarray:
    """New index of each class so that 0 is the class with the most labeled images.

    Ties keep the original class order (stable sort; the reference's np.argsort leaves them to the
    sort algorithm).
    """
    order = np.argsort(-np.asarray(counts), kind="stable")
    new = np.empty_like(order)
    new[order] = np.arange(len(order))
    return new


def labeled_counts(labels: np.ndarray, fraction: float, num_classes: int = CLASSES) -> np.ndarray:
    """round(fraction * n_c) per class (numpy's round-half-to-even, as the reference)."""
    return np.around(np.bincount(labels, minlength=num_classes) * fraction).astype(np.int64)
