"""MLP with a selectable normalisation; the baseline-image invariance checks compare the choices."""

from __future__ import annotations

from torch import Tensor, nn

from lddyn.models.base import Classifier, batch_norm


class MLP(Classifier):
    """flatten -> [linear -> norm -> ReLU] x depth -> linear."""

    def __init__(
        self,
        num_classes: int,
        in_features: int,
        width: int = 128,
        depth: int = 2,
        norm: str = "batch",
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += [
                nn.Linear(d, width),
                batch_norm(norm, width, momentum=bn_momentum, eps=bn_eps, dims=1),
                nn.ReLU(),
            ]
            d = width
        self.body = nn.Sequential(*layers)
        self.num_classes, self.feat_dim = num_classes, width
        self.head = nn.Linear(width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)
