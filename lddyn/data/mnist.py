"""MNIST from the original IDX files (gzipped or not) under a user-given root.

An IDX file is a 4-byte magic (two zero bytes, type code 0x08 = uint8, number of dimensions), one
big-endian uint32 per dimension, then the values in row-major order. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from lddyn.data.errors import DataFileError, check_labels, first_existing, require_root

CLASSES = 10
SIDE = 28
MEAN = (0.1307,)
STD = (0.3081,)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
GZIP_MAGIC = b"\x1f\x8b"


def _candidates(root: Path, name: str) -> list[Path]:
    """Where a file may sit: root, root/MNIST/raw (torchvision's layout) or root/mnist; plain or .gz."""
    folders = [root, root / "MNIST" / "raw", root / "mnist"]
    return [folder / f"{name}{suffix}" for folder in folders for suffix in ("", ".gz")]


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFileError(f"{path} is not a readable gzip file: {exc}") from exc


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file with ``ndim`` dimensions; errors name the file and the expectation."""
    data = _read_bytes(path)
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DataFileError(
            f"{path}: expected an IDX uint8 file with {ndim} dimensions (magic 00 00 08 {ndim:02x}), "
            f"got magic {data[:4].hex(' ') or 'nothing'}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{path}: truncated inside the header ({len(data)} of {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataFileError(
            f"{path}: header says shape {shape} = {expected} bytes, the file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist(root: str | Path | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 1, 28, 28) and int64 labels of ``split`` in {"train", "test"}, file order."""
    if split not in FILES:
        raise ValueError(f"split={split!r} is not one of {tuple(FILES)}")
    root = require_root(root, "the MNIST IDX files")
    image_name, label_name = FILES[split]
    image_path = first_existing(_candidates(root, image_name), image_name)
    label_path = first_existing(_candidates(root, label_name), label_name)
    images = read_idx(image_path, 3)
    if images.shape[1:] != (SIDE, SIDE):
        raise DataFileError(f"{image_path}: expected images of {SIDE} x {SIDE}, got {images.shape[1:]}")
    labels = read_idx(label_path, 1).astype(np.int64)
    if len(labels) != len(images):
        raise DataFileError(f"{label_path}: expected {len(images)} labels (one per image), got {len(labels)}")
    check_labels(label_path, labels, 0, CLASSES - 1)
    return images[:, None], labels
