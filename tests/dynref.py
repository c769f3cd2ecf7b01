"""Independent references for the recorder's quantities: nothing here calls lddyn.dynamics.

* the observation functions, written with PyTorch's own modules: ``running`` = the model in eval
  mode; ``own`` = a train-mode forward of each input alone on a copy (buffers untouched; a vector
  model gets two copies of the input, whose batch statistics are the input's own);
* per-sample float64 autograd Jacobians of those functions, one row per (observation, class);
* decoupled group gradients from per-sample gradients of a copy whose BatchNorm layers use the
  batch's statistics as constants (detached), summed per group;
* a FixMatch-like step: a labeled and an unlabeled term from separate forwards.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lddyn.models import build_model

C = 5
D64 = torch.float64


def mlp(norm: str, smooth: bool = True) -> nn.Module:
    """The lddyn MLP (1x4x4 inputs, width 12) in float64; ``smooth`` swaps ReLU for tanh, so the
    linearisation error is second order at every point (no kink to cross)."""
    model = build_model("mlp", num_classes=C, image_shape=(1, 4, 4), width=12, norm=norm).to(D64).train()
    return _smooth(model) if smooth else model


def cnn(smooth: bool = True) -> nn.Module:
    model = build_model("cnn", num_classes=C, image_shape=(1, 8, 8), width=4).to(D64).train()
    for m in model.modules():  # BatchNorm biases off zero: a solid image is then off every kink
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.bias, 0.0, 0.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    return _smooth(model) if smooth else model


def _smooth(model: nn.Module) -> nn.Module:
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(m, child_name, nn.Tanh())
    return model


def shape_of(model: nn.Module) -> tuple[int, ...]:
    return (1, 8, 8) if any(isinstance(m, nn.Conv2d) for m in model.modules()) else (1, 4, 4)


def observe(model: nn.Module, x: Tensor, mode: str, params: dict | None = None) -> Tensor:
    """Logits (O, C) of the observation function ``mode`` (optionally at other parameters)."""
    m = copy.deepcopy(model)
    if params is not None:
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(params[n])
    if mode == "running":
        return m.eval()(x)["logits"]
    m.train()
    vector = any(isinstance(mod, nn.BatchNorm1d) for mod in m.modules())
    rows = []
    for o in range(len(x)):
        alone = copy.deepcopy(m)  # each input's forward updates this copy's buffers, never the model's
        xi = x[o : o + 1].expand(2, *x.shape[1:]) if vector else x[o : o + 1]
        rows.append(alone(xi)["logits"][0])
    return torch.stack(rows)


def jacobian(model: nn.Module, x: Tensor, mode: str) -> Tensor:
    """(O, C, P) per-sample autograd Jacobian rows of the observation function, P all parameters."""
    m = copy.deepcopy(model)
    params = [p for p in m.parameters() if p.requires_grad]
    z = m.eval()(x)["logits"] if mode == "running" else _observe_live(m, x)
    rows = torch.zeros(*z.shape, sum(p.numel() for p in params), dtype=z.dtype)
    for o in range(z.shape[0]):
        for c in range(z.shape[1]):
            g = torch.autograd.grad(z[o, c], params, retain_graph=True, allow_unused=True)
            rows[o, c] = torch.cat(
                [
                    (torch.zeros_like(p) if gi is None else gi).reshape(-1)
                    for gi, p in zip(g, params, strict=True)
                ]
            )
    return rows


def _observe_live(m: nn.Module, x: Tensor) -> Tensor:
    """``own`` logits on ``m`` itself (so its parameters get gradients): its BatchNorm layers stop
    tracking running statistics, so a train-mode forward of each input alone writes nothing."""
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d):
            bn.track_running_stats, bn.running_mean, bn.running_var = False, None, None
    m.train()
    vector = any(isinstance(mod, nn.BatchNorm1d) for mod in m.modules())
    rows = [
        m(x[o : o + 1].expand(2, *x.shape[1:]) if vector else x[o : o + 1])["logits"][0]
        for o in range(len(x))
    ]
    return torch.stack(rows)


def flat(grads: dict[str, Tensor] | list[Tensor]) -> Tensor:
    values = grads.values() if isinstance(grads, dict) else grads
    return torch.cat([g.reshape(-1) for g in values])


class DetachedStatsBN(nn.Module):
    """A BatchNorm whose batch statistics are constants: per-sample gradients are decoupled."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: Tensor) -> Tensor:
        dims = [d for d in range(x.dim()) if d != 1]
        var, mean = torch.var_mean(x.detach(), dims, correction=0, keepdim=True)
        w = self.bn.weight.view(1, -1, *[1] * (x.dim() - 2))
        b = self.bn.bias.view(1, -1, *[1] * (x.dim() - 2))
        return (x - mean) / torch.sqrt(var + self.bn.eps) * w + b


def detached_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d):
                setattr(parent, name, DetachedStatsBN(child))
    return m


class Step:
    """A FixMatch-like step: labeled term (true labels) + unlabeled term (soft pseudo-targets with
    weights), from two forwards, with per-sample source classes."""

    def __init__(self, shape: tuple[int, ...], n_lb: int = 6, n_ulb: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x_lb, self.y = (
            torch.randn(n_lb, *shape, generator=g, dtype=D64),
            torch.randint(0, C, (n_lb,), generator=g),
        )
        self.x_ulb = torch.randn(n_ulb, *shape, generator=g, dtype=D64)
        self.pseudo = torch.randint(0, C, (n_ulb,), generator=g)
        self.w = torch.rand(n_ulb, generator=g, dtype=D64)

    def losses(self, model: nn.Module) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(logits_lb, losses_lb, logits_ulb, losses_ulb), each loss a mean over its batch."""
        z_lb, z_ulb = model(self.x_lb)["logits"], model(self.x_ulb)["logits"]
        l_lb = F.cross_entropy(z_lb, self.y, reduction="none") / len(self.y)
        l_ulb = self.w * F.cross_entropy(z_ulb, self.pseudo, reduction="none") / len(self.pseudo)
        return z_lb, l_lb, z_ulb, l_ulb

    def groups(self) -> list[tuple[str, int]]:
        """Keys (term, source class) of every sample, labeled first."""
        return [("sup", int(c)) for c in self.y] + [("unsup", int(c)) for c in self.pseudo]

    def per_sample_grads(self, model: nn.Module) -> Tensor:
        """(N, P) per-sample parameter gradients of the step's losses through ``model``."""
        _, l_lb, _, l_ulb = self.losses(model)
        params = [p for p in model.parameters() if p.requires_grad]
        out = []
        for ell in torch.cat([l_lb, l_ulb]):
            g = torch.autograd.grad(ell, params, retain_graph=True, allow_unused=True)
            out.append(
                flat([torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params, strict=True)])
            )
        return torch.stack(out)
