"""CIFAR-10 / CIFAR-100 from the original python pickle batches under a user-given root.

Accepted roots: the folder holding ``cifar-10-batches-py`` / ``cifar-100-python``, or that folder
itself. Nothing is downloaded. Images come back as uint8 (N, 3, 32, 32) in file order. The pickles
are read by a restricted unpickler (``safe_pickle``), so a crafted file cannot run code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lddyn.data.errors import DataFileError
from lddyn.data.safe_pickle import load_data_pickle

CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": b"labels",
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2471, 0.2435, 0.2616),
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label_key": b"fine_labels",
        "mean": (0.5071, 0.4867, 0.4408),
        "std": (0.2675, 0.2565, 0.2761),
        "classes": 100,
    },
}


def _folder(root: str | Path | None, name: str) -> Path:
    if root is None:
        raise DataFileError(f"data.root is not set; point it at the folder holding {CIFAR[name]['folder']}")
    root = Path(root)
    folder = root if root.name == CIFAR[name]["folder"] else root / CIFAR[name]["folder"]
    if not folder.is_dir():
        raise DataFileError(f"{folder} does not exist (expected the original {name} python batches there)")
    return folder


def _read_batch(path: Path, label_key: bytes, classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DataFileError(f"{path} is missing")
    try:
        entry = load_data_pickle(path, "CIFAR batch")
        data, labels = (
            np.asarray(entry[b"data"], dtype=np.uint8),
            np.asarray(entry[label_key], dtype=np.int64),
        )
    except DataFileError:
        raise
    except Exception as exc:
        raise DataFileError(f"{path} is not a readable CIFAR pickle batch: {exc}") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataFileError(
            f"{path}: expected data (N, 3072) with N labels, got {data.shape} and {len(labels)}"
        )
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= classes:
        raise DataFileError(f"{path}: labels outside 0..{classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(name: str, root: str | Path | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32) and int64 labels of ``split`` in {"train", "test"}, file order."""
    spec = CIFAR[name]
    folder = _folder(root, name)
    parts = [_read_batch(folder / f, spec["label_key"], spec["classes"]) for f in spec[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


__all__ = ["CIFAR", "DataFileError", "load_cifar"]
