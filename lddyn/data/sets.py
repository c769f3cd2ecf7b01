"""The in-memory semi-supervised data of a run and the function that builds it from the config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lddyn.config import DataConfig
from lddyn.data.longtail import longtail_counts
from lddyn.registry import Registry


@dataclass
class SSLData:
    """(N, C, H, W) images and labels; true unlabeled labels kept for analysis (-1 = unknown).

    The training images ``x_lb`` / ``x_ulb`` of the benchmark sources stay uint8 as read (a quarter
    of float32's memory: Small-ImageNet-127 at 32 px is 3.9 GB instead of 15.7 GB) and become [0, 1]
    floats per batch (``unit_images``, done by ``batch_images``); digits and ``x_test`` are floats.
    """

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
    ulb_index: Tensor  # the same for unlabeled images (per source; see docs/data.md)

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


def unit_images(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Images as [0, 1] floats: uint8 storage is scaled (ToTensor) into ``dtype`` (default float32),
    float storage returned as is, or cast to ``dtype`` when one is given."""
    if x.dtype == torch.uint8:
        return x.to(dtype or torch.float32).div_(255.0)
    return x if dtype is None else x.to(dtype)


# data.dataset name -> builder; the builders register themselves in lddyn.data.builders
DATASETS: Registry[Callable[[DataConfig], SSLData]] = Registry("data.dataset")


def build_data(cfg: DataConfig) -> SSLData:
    if cfg.dataset not in DATASETS:
        raise ValueError(f"data.dataset={cfg.dataset!r} is not known; allowed: {', '.join(DATASETS)}")
    return DATASETS.get(cfg.dataset)(cfg)


def split_counts(cfg: DataConfig, num_classes: int) -> tuple[list[int], list[int]]:
    n_lb = longtail_counts(cfg.num_max, cfg.imb_ratio, num_classes)
    n_extra = longtail_counts(cfg.num_max_u, cfg.imb_ratio_u, num_classes)
    return n_lb, (n_extra[::-1] if cfg.reverse_unlabeled else n_extra)


def class_prior(counts: Tensor) -> Tensor:
    counts = counts.double()
    return counts / counts.sum()


__all__ = ["DATASETS", "SSLData", "build_data", "class_prior", "split_counts"]
