"""Optimiser and learning-rate schedule from the config."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from lddyn.config import OptimConfig


def build_optimizer(
    cfg: OptimConfig, model: torch.nn.Module, total_steps: int
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.schedule == "cosine":  # FixMatch's cos(7 pi k / (16 K)) decay
        return opt, LambdaLR(opt, lambda k: math.cos(7 * math.pi * k / (16 * total_steps)))
    return opt, LambdaLR(opt, lambda k: 1.0)


def current_lr(opt: torch.optim.Optimizer) -> float:
    return float(opt.param_groups[0]["lr"])
