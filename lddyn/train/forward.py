"""Forward helpers: temporary model modes and the baseline image."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lddyn.train.distributed import replicated_input


@contextmanager
def model_mode(model: nn.Module, train: bool) -> Iterator[nn.Module]:
    """Put ``model`` in train/eval mode for the block and restore its previous mode on exit."""
    previous = model.training
    model.train(train)
    try:
        yield model
    finally:
        model.train(previous)


def baseline_image(
    value: float, image_shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype | None = None
) -> Tensor:
    """A solid image of colour ``value`` in normalised space, shape (1, C, H, W)."""
    return torch.full((1, *image_shape), float(value), device=device, dtype=dtype)


def _needs_pair(model: nn.Module) -> bool:
    # BatchNorm1d refuses a batch of one in train mode; two identical copies give the same statistics.
    return any(isinstance(m, nn.BatchNorm1d) or getattr(m, "vector_input", False) for m in model.modules())


@torch.no_grad()
def baseline_logits(model: nn.Module, image: Tensor, train: bool) -> Tensor:
    """Logits (C,) of ``model`` on a (1, C, H, W) baseline image, in the requested mode."""
    x = image.expand(2, *image.shape[1:]) if train and _needs_pair(model) else image
    with model_mode(model, train), replicated_input():  # every rank forwards the same image
        return model(x)["logits"][0]
