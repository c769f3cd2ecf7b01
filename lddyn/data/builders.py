"""One builder per data.dataset: read the source, select the reference's split, return SSLData.

Selection follows the reference code: per class, labeled = the first N_k images and unlabeled = the
first N_k + M_k (file order unless data.shuffle_within_class). Training images stay uint8 (each
batch becomes [0, 1] floats when it is drawn), so a large source is never held as floats; the test
split is converted once.
"""

from __future__ import annotations

import numpy as np
import torch

from lddyn.config import DataConfig
from lddyn.data import mnist, smallimagenet, stl10
from lddyn.data.cifar import CIFAR, load_cifar
from lddyn.data.digits import balanced_holdout, load_digits_arrays
from lddyn.data.longtail import longtail_counts, split_labeled_unlabeled
from lddyn.data.resize import resize_uint8, uint8_tensor, unit_float
from lddyn.data.sets import DATASETS, SSLData, split_counts


def longtail_split(
    cfg: DataConfig,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    stats: tuple[tuple[float, ...], tuple[float, ...]],
) -> SSLData:
    """SSLData of a uint8 source with the long-tailed labeled / unlabeled split of the config."""
    (x_train, y_train), (x_test, y_test) = train, test
    n_lb, n_extra = split_counts(cfg, num_classes)
    lb_idx, ulb_idx = split_labeled_unlabeled(
        y_train,
        n_lb,
        n_extra,
        shuffle=cfg.shuffle_within_class,
        seed=cfg.data_seed,
        legacy=cfg.legacy_shuffle,
    )

    def images(x: np.ndarray) -> torch.Tensor:
        return uint8_tensor(resize_uint8(x, cfg.image_size))

    t = torch.from_numpy
    return SSLData(
        name=cfg.dataset,
        x_lb=images(x_train[lb_idx]),
        y_lb=t(y_train[lb_idx]),
        x_ulb=images(x_train[ulb_idx]),
        y_ulb=t(y_train[ulb_idx]),
        x_test=unit_float(resize_uint8(x_test, cfg.image_size)),
        y_test=t(y_test),
        num_classes=num_classes,
        mean=stats[0],
        std=stats[1],
        lb_index=t(lb_idx),
        ulb_index=t(ulb_idx),
    )


def _register_cifar(name: str) -> None:
    spec = CIFAR[name]

    @DATASETS.register(name)
    def build(cfg: DataConfig) -> SSLData:
        train, test = load_cifar(name, cfg.root, "train"), load_cifar(name, cfg.root, "test")
        return longtail_split(cfg, train, test, spec["classes"], (spec["mean"], spec["std"]))


for _name in CIFAR:
    _register_cifar(_name)


@DATASETS.register("mnist")
def build_mnist(cfg: DataConfig) -> SSLData:
    train, test = mnist.load_mnist(cfg.root, "train"), mnist.load_mnist(cfg.root, "test")
    return longtail_split(cfg, train, test, mnist.CLASSES, (mnist.MEAN, mnist.STD))


@DATASETS.register("stl10")
def build_stl10(cfg: DataConfig) -> SSLData:
    """Labeled = first N_k of each class of ``train``; unlabeled = all of ``unlabeled_X`` with the
    labeled images appended (the reference's U); ulb_index counts ``unlabeled_X`` first, then
    ``train`` positions offset by its length. data.num_max_u / imb_ratio_u are not used."""
    x_train, y_train = stl10.load_stl10(cfg.root, "train")
    x_test, y_test = stl10.load_stl10(cfg.root, "test")
    x_unl = stl10.load_stl10_unlabeled(cfg.root)
    n_lb = longtail_counts(cfg.num_max, cfg.imb_ratio, stl10.CLASSES)
    lb_idx, _ = split_labeled_unlabeled(
        y_train, n_lb, [0] * stl10.CLASSES, shuffle=cfg.shuffle_within_class, seed=cfg.data_seed
    )
    size = cfg.image_size
    x_lb = resize_uint8(x_train[lb_idx], size)
    x_ulb = np.concatenate([resize_uint8(x_unl, size), x_lb])
    y_ulb = np.concatenate([np.full(len(x_unl), -1, dtype=np.int64), y_train[lb_idx]])
    t = torch.from_numpy
    return SSLData(
        name="stl10",
        x_lb=uint8_tensor(x_lb),
        y_lb=t(y_train[lb_idx]),
        x_ulb=uint8_tensor(x_ulb),
        y_ulb=t(y_ulb),
        x_test=unit_float(resize_uint8(x_test, size)),
        y_test=t(y_test),
        num_classes=stl10.CLASSES,
        mean=stl10.MEAN,
        std=stl10.STD,
        lb_index=t(lb_idx),
        ulb_index=t(np.concatenate([np.arange(len(x_unl)), len(x_unl) + lb_idx])),
    )


@DATASETS.register("smallimagenet127")
def build_small_imagenet(cfg: DataConfig) -> SSLData:
    """Labeled = the first round(labeled_fraction * n_c) images of each class; unlabeled = the whole
    train set (labeled included); test = val_data, imbalanced. Classes are re-indexed so that 0 is
    the class with the most labeled images; data.num_max / imb_ratio are not used."""
    src = smallimagenet.load_small_imagenet(cfg.root, cfg.image_size or 32)
    counts = smallimagenet.labeled_counts(src.y_train, cfg.labeled_fraction)
    lb_idx = np.concatenate(
        [np.flatnonzero(src.y_train == k)[:n] for k, n in enumerate(counts)]  # old class order, file order
    )
    new_label = smallimagenet.reindex_by_size(counts)
    t = torch.from_numpy
    return SSLData(
        name="smallimagenet127",
        x_lb=uint8_tensor(src.x_train[lb_idx]),
        y_lb=t(new_label[src.y_train[lb_idx]]),
        x_ulb=uint8_tensor(src.x_train),
        y_ulb=t(new_label[src.y_train]),
        x_test=unit_float(src.x_test),
        y_test=t(new_label[src.y_test]),
        num_classes=smallimagenet.CLASSES,
        mean=smallimagenet.MEAN,
        std=smallimagenet.STD,
        lb_index=t(lb_idx),
        ulb_index=torch.arange(len(src.y_train)),
    )


@DATASETS.register("digits")
def build_digits(cfg: DataConfig) -> SSLData:
    """scikit-learn's digits with a balanced held-out test split (the embedded default)."""
    images, labels = load_digits_arrays()
    num_classes = int(labels.max()) + 1
    test_idx, pool = balanced_holdout(labels, cfg.test_per_class, cfg.data_seed)
    n_lb, n_extra = split_counts(cfg, num_classes)
    lb_pos, ulb_pos = split_labeled_unlabeled(
        labels[pool], n_lb, n_extra, shuffle=cfg.shuffle_within_class, seed=cfg.data_seed
    )
    lb_idx, ulb_idx = pool[lb_pos], pool[ulb_pos]
    train = images[pool]
    t = torch.from_numpy
    return SSLData(
        name="digits",
        x_lb=t(images[lb_idx]),
        y_lb=t(labels[lb_idx]),
        x_ulb=t(images[ulb_idx]),
        y_ulb=t(labels[ulb_idx]),
        x_test=t(images[test_idx]),
        y_test=t(labels[test_idx]),
        num_classes=num_classes,
        mean=(float(train.mean()),),
        std=(float(train.std()),),
        lb_index=t(lb_idx),
        ulb_index=t(ulb_idx),
    )
