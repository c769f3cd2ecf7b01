"""CIFAR sources read tiny files written here in the original pickle format, and fail clearly."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lddyn.config import load_config
from lddyn.data import build_data
from lddyn.data.cifar import DataFileError, load_cifar


def write_cifar10(root: Path, per_class: int = 12) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.tile(np.arange(10), per_class // 2 if name != "test_batch" else 2).tolist()
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
    return folder


def test_reads_original_format_in_file_order(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    x, y = load_cifar("cifar10", tmp_path, "train")
    assert x.shape == (5 * 60, 3, 32, 32) and x.dtype == np.uint8
    with open(folder / "data_batch_1", "rb") as fh:
        first = pickle.load(fh, encoding="bytes")
    assert (x[0].reshape(-1) == first[b"data"][0]).all() and y[:10].tolist() == list(range(10))


def test_reference_split_on_tiny_cifar(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    cfg = load_config(
        "reference",
        [
            f"data.root={tmp_path}",
            "data.num_max=10",
            "data.num_max_u=5",
            "data.imb_ratio=10",
            "data.imb_ratio_u=10",
        ],
    )
    data = build_data(cfg.data)
    assert data.class_counts("labeled").tolist() == [10, 7, 5, 4, 3, 2, 2, 1, 1, 1]
    assert data.class_counts("unlabeled").tolist() == [15, 10, 7, 6, 4, 3, 3, 1, 1, 1]
    assert set(data.lb_index.tolist()) <= set(data.ulb_index.tolist())
    assert data.lb_index[:3].tolist() == [0, 10, 20]  # file order: first images of class 0
    assert data.x_lb.dtype == data.x_ulb.dtype == torch.uint8  # training images stay bytes
    assert data.x_test.dtype == torch.float32 and float(data.x_test.max()) <= 1.0
    assert data.x_test.shape == (20, 3, 32, 32)


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="does not exist"):
        load_cifar("cifar10", tmp_path, "train")
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x04truncated")
    with pytest.raises(DataFileError, match="data_batch_3"):
        load_cifar("cifar10", tmp_path, "train")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataFileError, match="data_batch_3 is missing"):
        load_cifar("cifar10", tmp_path, "train")


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, fh)
    with pytest.raises(DataFileError, match=r"test_batch: expected data \(N, 3072\)"):
        load_cifar("cifar10", tmp_path, "test")
