"""Models: every one returns ``{"feat", "logits"}``; ``build_model`` picks one from the config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lddyn.models.base import Classifier
from lddyn.models.cnn import SmallCNN
from lddyn.models.mlp import MLP
from lddyn.models.resnet import ResNet
from lddyn.models.wrn import WideResNet
from lddyn.registry import Registry

# name -> factory(num_classes, (C, H, W), width, norm, bn keyword arguments)
Factory = Callable[[int, tuple[int, int, int], int, str, dict[str, Any]], Classifier]
MODELS: Registry[Factory] = Registry("model.name")


@MODELS.register("cnn")
def _cnn(k: int, shape: tuple[int, int, int], width: int, norm: str, bn: dict[str, Any]) -> Classifier:
    return SmallCNN(k, in_channels=shape[0], width=width, norm=norm, **bn)


@MODELS.register("mlp")
def _mlp(k: int, shape: tuple[int, int, int], width: int, norm: str, bn: dict[str, Any]) -> Classifier:
    c, h, w = shape
    return MLP(k, in_features=c * h * w, width=width, norm=norm, **bn)


@MODELS.register("wrn28_2")
def _wrn28_2(k: int, shape: tuple[int, int, int], width: int, norm: str, bn: dict[str, Any]) -> Classifier:
    return WideResNet(k, in_channels=shape[0], depth=28, widen=2, **bn)


@MODELS.register("resnet50")
def _resnet50(k: int, shape: tuple[int, int, int], width: int, norm: str, bn: dict[str, Any]) -> Classifier:
    return ResNet(k, in_channels=shape[0], blocks=(3, 4, 6, 3), **bn)


MODEL_NAMES = tuple(MODELS.names())


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
    """Instantiate a model by name for images of shape (C, H, W); width/norm apply to cnn and mlp."""
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is not one of {MODEL_NAMES}")
    bn = {"bn_momentum": bn_momentum, "bn_eps": bn_eps}
    return MODELS.get(name)(num_classes, image_shape, width, norm, bn)


__all__ = ["MLP", "MODELS", "MODEL_NAMES", "Classifier", "ResNet", "SmallCNN", "WideResNet", "build_model"]
