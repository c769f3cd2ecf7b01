"""The in-memory semi-supervised data of a run and the function that builds it from the config."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lddyn.config import DataConfig
from lddyn.data.cifar import CIFAR, load_cifar
from lddyn.data.digits import balanced_holdout, load_digits_arrays
from lddyn.data.longtail import longtail_counts, split_labeled_unlabeled


@dataclass
class SSLData:
    """Images in [0, 1] as (N, C, H, W) floats; true unlabeled labels kept for analysis (-1 = unknown)."""

    name: str
    x_lb: Tensor
    y_lb: Tensor
    x_ulb: Tensor
    y_ulb: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    lb_index: Tensor  # position of each labeled image in the source data set
    ulb_index: Tensor

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_lb.shape[1:]
        return int(c), int(h), int(w)

    def class_counts(self, which: str) -> Tensor:
        y = {"labeled": self.y_lb, "unlabeled": self.y_ulb, "test": self.y_test}[which]
        return torch.bincount(y[y >= 0], minlength=self.num_classes)

    def to(self, device: str | torch.device) -> SSLData:
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.__dict__.items()}
        return SSLData(**moved)


def build_data(cfg: DataConfig) -> SSLData:
    if cfg.dataset == "digits":
        return _digits(cfg)
    if cfg.dataset in CIFAR:
        return _cifar(cfg)
    raise ValueError(f"data.dataset={cfg.dataset!r} is not known; allowed: digits, {', '.join(CIFAR)}")


def _cifar(cfg: DataConfig) -> SSLData:
    x_train, y_train = load_cifar(cfg.dataset, cfg.root, "train")
    x_test, y_test = load_cifar(cfg.dataset, cfg.root, "test")
    num_classes = CIFAR[cfg.dataset]["classes"]
    n_lb, n_extra = split_counts(cfg, num_classes)
    lb_idx, ulb_idx = split_labeled_unlabeled(
        y_train, n_lb, n_extra, shuffle=cfg.shuffle_within_class, seed=cfg.data_seed
    )

    def images(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).float().div_(255.0)

    t = torch.from_numpy
    return SSLData(
        name=cfg.dataset,
        x_lb=images(x_train[lb_idx]),
        y_lb=t(y_train[lb_idx]),
        x_ulb=images(x_train[ulb_idx]),
        y_ulb=t(y_train[ulb_idx]),
        x_test=images(x_test),
        y_test=t(y_test),
        num_classes=num_classes,
        mean=CIFAR[cfg.dataset]["mean"],
        std=CIFAR[cfg.dataset]["std"],
        lb_index=t(lb_idx),
        ulb_index=t(ulb_idx),
    )


def split_counts(cfg: DataConfig, num_classes: int) -> tuple[list[int], list[int]]:
    n_lb = longtail_counts(cfg.num_max, cfg.imb_ratio, num_classes)
    n_extra = longtail_counts(cfg.num_max_u, cfg.imb_ratio_u, num_classes)
    return n_lb, (n_extra[::-1] if cfg.reverse_unlabeled else n_extra)


def _digits(cfg: DataConfig) -> SSLData:
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


def class_prior(counts: Tensor) -> Tensor:
    counts = counts.double()
    return counts / counts.sum()


__all__ = ["SSLData", "build_data", "class_prior", "split_counts"]
