"""Models: every one returns ``{"feat", "logits"}``; ``build_model`` picks one from the config."""

from __future__ import annotations

from lddyn.models.base import Classifier
from lddyn.models.cnn import SmallCNN
from lddyn.models.mlp import MLP
from lddyn.models.wrn import WideResNet

MODEL_NAMES = ("cnn", "mlp", "wrn28_2")


def build_model(
    name: str,
    *,
    num_classes: int,
    image_shape: tuple[int, int, int],
    width: int = 32,
    norm: str = "batch",
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
) -> Classifier:
    """Instantiate a model by name for images of shape (C, H, W)."""
    c, h, w = image_shape
    bn = {"bn_momentum": bn_momentum, "bn_eps": bn_eps}
    if name == "cnn":
        return SmallCNN(num_classes, in_channels=c, width=width, norm=norm, **bn)
    if name == "mlp":
        return MLP(num_classes, in_features=c * h * w, width=width, norm=norm, **bn)
    if name == "wrn28_2":
        return WideResNet(num_classes, in_channels=c, depth=28, widen=2, **bn)
    raise ValueError(f"model.name={name!r} is not one of {MODEL_NAMES}")


__all__ = ["MLP", "MODEL_NAMES", "Classifier", "SmallCNN", "WideResNet", "build_model"]
