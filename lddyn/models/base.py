"""Shared model contract: every model maps images to ``{"feat": (N, D), "logits": (N, C)}``.

Returning features next to logits lets methods with extra heads (and the dynamics code) reach the
penultimate representation without forward hooks.
"""

from __future__ import annotations

from torch import Tensor, nn


class Classifier(nn.Module):
    """A backbone producing features plus a linear head producing logits."""

    num_classes: int
    feat_dim: int

    def features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feat = self.features(x)  # (N, D)
        return {"feat": feat, "logits": self.head(feat)}  # logits: (N, C)


def batch_norm(kind: str, channels: int, *, momentum: float, eps: float, dims: int) -> nn.Module:
    """Normalisation layer by name; ``dims`` is 1 for vectors, 2 for feature maps."""
    if kind == "batch":
        cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        return cls(channels, momentum=momentum, eps=eps)
    if kind == "layer":
        return nn.LayerNorm(channels, eps=eps) if dims == 1 else nn.GroupNorm(1, channels, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"model.norm={kind!r} is not one of 'batch', 'layer', 'none'")


def reference_init(model: nn.Module) -> None:
    """The reference code's initialisation of its CIFAR networks (WRN-28-2, ResNet-50): Kaiming
    normal (fan-out) convolutions, unit/zero BatchNorm affine, Xavier-normal linear, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
