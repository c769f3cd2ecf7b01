"""Image arrays as the model sees them: resized (antialiased bilinear, like PIL's Resize) and in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK = 2048  # images resized at once: bounds the float copy of a large uint8 set (100k STL-10 images)


def _bilinear_to_bytes(x: Tensor, height: int, width: int) -> Tensor:
    """One antialiased bilinear pass, rounded half up to bytes as PIL's fixed-point resampler does."""
    y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return y.add_(0.5).floor_().clamp_(0, 255)


def resize_uint8(images: np.ndarray, size: int | None) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, C, size, size) uint8, as torchvision's Resize on a PIL image.

    PIL resizes horizontally, stores bytes, then resizes vertically; doing the same (float32) gives
    PIL's bytes exactly for integer factors (96 -> 32) and within 1 otherwise.
    """
    if size is None or images.shape[-2:] == (size, size):
        return images
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(images), CHUNK):
        chunk = torch.from_numpy(np.array(images[start : start + CHUNK], dtype=np.float32))
        wide = _bilinear_to_bytes(chunk, chunk.shape[2], size)
        out[start : start + CHUNK] = _bilinear_to_bytes(wide, size, size).to(torch.uint8).numpy()
    return out


def uint8_tensor(images: np.ndarray) -> Tensor:
    """uint8 images as a tensor of the same bytes, copied only when not contiguous or read-only."""
    return torch.from_numpy(np.require(images, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"]))


def unit_float(images: np.ndarray) -> Tensor:
    """uint8 images as float32 in [0, 1] (ToTensor); always a copy, since sources may be read-only."""
    return torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
