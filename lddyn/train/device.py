"""Where and how a run computes: device choice, data placement, bf16 autocast, channels-last,
``torch.compile`` and deterministic kernels, all from ``TrainConfig``.

The CPU float32 path is the default; every option here only changes speed (and, for bf16, the
rounding of the training forwards; for float64, the rounding of the whole step), never which
computation the step performs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import torch
from torch import Tensor, nn

from lddyn.config import ConfigError, TrainConfig
from lddyn.data.sets import SSLData, unit_images

DEVICE_SHARE = 0.5  # training images may take at most this share of the device's free memory


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` = the local rank's GPU when one is visible, else the CPU; ``cuda`` = the local rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device", name, "cpu | auto (no CUDA device is visible)")
    if name == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def images_fit(data: SSLData, device: torch.device, share: float = DEVICE_SHARE) -> bool:
    """Whether the training images take at most ``share`` of the device's free memory."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    needed = sum(t.numel() * t.element_size() for t in (data.x_lb, data.x_ulb))
    return needed <= share * free


def place_data(data: SSLData, device: torch.device, placement: str) -> SSLData:
    """Everything on ``device``, except the training images when they must (or are told to) stay on
    the host; those are then pinned and each batch is gathered on the host and copied over."""
    keep_on_host = placement == "host" or (placement == "auto" and not images_fit(data, device))
    if not keep_on_host or device.type == "cpu":
        return data.to(device)
    moved = data.to(device)
    pin = device.type == "cuda"
    host = {k: (v.pin_memory() if pin else v) for k, v in (("x_lb", data.x_lb), ("x_ulb", data.x_ulb))}
    return dataclasses.replace(moved, **host)


def batch_images(
    images: Tensor, index: Tensor, device: torch.device, dtype: torch.dtype | None = None
) -> Tensor:
    """``images[index]`` on ``device`` as [0, 1] floats (of ``dtype`` if given), wherever ``images``
    live (index on their device first; uint8 storage crosses to the device before it is widened)."""
    picked = images[index.to(images.device)]
    return unit_images(picked.to(device, non_blocking=True), dtype)


def step_dtype(cfg: TrainConfig) -> torch.dtype:
    return torch.float64 if cfg.dtype == "float64" else torch.float32


def float_data(data: SSLData, dtype: torch.dtype) -> SSLData:
    """``data`` with its float images in ``dtype`` (uint8 storage stays bytes until batched)."""
    images = {k: getattr(data, k) for k in ("x_lb", "x_ulb", "x_test")}
    return dataclasses.replace(data, **{k: v.to(dtype) for k, v in images.items() if v.is_floating_point()})


def _inputs_to(dtype: torch.dtype):  # noqa: ANN202
    def cast(module: nn.Module, args: tuple) -> tuple:
        return tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)

    return cast


def set_deterministic(on: bool) -> None:
    """Deterministic kernels (and the cuBLAS workspace setting they need) or torch's defaults."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on and torch.cuda.is_available()


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The training forwards' precision context: bf16 autocast, or nothing for fp32."""
    if cfg.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _float_outputs(module: nn.Module, args: object, out: dict[str, Tensor]) -> dict[str, Tensor]:
    # losses, softmaxes and the dynamics tables stay float32 whatever precision the forward ran in
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def prepare_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Memory format and float32 outputs; call before the EMA copy (it inherits both)."""
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.precision != "fp32":
        model.register_forward_hook(_float_outputs)
    if cfg.dtype != "float32":  # probes and checks that build float32 inputs still reach the model
        model.register_forward_pre_hook(_inputs_to(step_dtype(cfg)))
    return model


def compile_model(model: nn.Module, cfg: TrainConfig) -> None:
    """Compile the student's forward in place (state_dict keys unchanged); call after the EMA copy,
    which must keep calling its own eager forward."""
    if cfg.compile:
        model.compile()
