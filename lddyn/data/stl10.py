"""STL-10 from the official binary files (``stl10_binary/*.bin``) under a user-given root.

Each ``*_X.bin`` is raw uint8, 3 x 96 x 96 per image, every channel stored column by column (the
files were written from MATLAB); ``*_y.bin`` holds one uint8 label per image, 1..10. Nothing is
downloaded. Images come back as uint8 (N, 3, 96, 96) in file order, row-major like any other image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lddyn.data.errors import DataFileError, check_labels, require_root

FOLDER = "stl10_binary"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
CLASSES = 10
MEAN = (0.4914, 0.4822, 0.4465)  # the reference normalises STL-10 with CIFAR-10's statistics
STD = (0.2471, 0.2435, 0.2616)
SPLITS = ("train", "test")


def stl10_folder(root: str | Path | None) -> Path:
    """The folder holding the .bin files: ``root/stl10_binary`` or root itself."""
    root = require_root(root, FOLDER)
    folder = root if root.name == FOLDER else root / FOLDER
    if not folder.is_dir():
        raise DataFileError(f"{folder} does not exist (expected the original STL-10 binary files there)")
    return folder


def read_images(path: Path) -> np.ndarray:
    """(N, 3, 96, 96) uint8 view of an ``*_X.bin`` file (memory-mapped: the unlabeled file is 2.8 GB)."""
    if not path.exists():
        raise DataFileError(f"{path} is missing")
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise DataFileError(
            f"{path}: {size} bytes is not a whole number of images (expected a multiple of "
            f"{IMAGE_BYTES} = 3 x {SIDE} x {SIDE} bytes); the file is truncated or not STL-10"
        )
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, SIDE, SIDE)
    return raw.transpose(0, 1, 3, 2)  # column-major channels -> (row, column)


def read_labels(path: Path, count: int) -> np.ndarray:
    """int64 labels 0..9 of an ``*_y.bin`` file (stored 1-based), one per image of its ``*_X.bin``."""
    if not path.exists():
        raise DataFileError(f"{path} is missing")
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if len(labels) != count:
        raise DataFileError(f"{path}: expected {count} labels (one per X image), got {len(labels)}")
    check_labels(path, labels, 1, CLASSES, " (STL-10 labels are stored 1-based)")
    return labels - 1


def load_stl10(root: str | Path | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 96, 96) and int64 labels of ``split`` in {"train", "test"}, file order."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    folder = stl10_folder(root)
    images = read_images(folder / f"{split}_X.bin")
    return images, read_labels(folder / f"{split}_y.bin", len(images))


def load_stl10_unlabeled(root: str | Path | None) -> np.ndarray:
    """The 100k unlabeled images, uint8 (N, 3, 96, 96), file order."""
    return read_images(stl10_folder(root) / "unlabeled_X.bin")
