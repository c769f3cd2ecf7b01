"""Small BatchNorm CNN: the default model for the 8x8 digits (about 94 k parameters)."""

from __future__ import annotations

from torch import Tensor, nn

from lddyn.models.base import Classifier, batch_norm


class SmallCNN(Classifier):
    """conv32 -> conv64 -> pool -> conv128 -> global average pool -> linear.

    Convolutions carry no bias (the following norm has one), so a solid input reaches the logits
    only through the normalisation shifts and the head bias, the path the baseline image probes.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        width: int = 32,
        norm: str = "batch",
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"),
                batch_norm(norm, cout, momentum=bn_momentum, eps=bn_eps, dims=2),
                nn.ReLU(),
            ]

        self.body = nn.Sequential(
            *block(in_channels, w),
            *block(w, 2 * w),
            nn.MaxPool2d(2),
            *block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.num_classes, self.feat_dim = num_classes, 4 * w
        self.head = nn.Linear(4 * w, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)
