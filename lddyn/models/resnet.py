"""ResNet-50 with the CIFAR stem, the reference's backbone for Small-ImageNet-127.

Bottleneck blocks [3, 4, 6, 3] (widths 64..512, expansion 4), post-activation BN/ReLU, a 1x1
conv + BN shortcut when the shape changes; the stem is one 3x3 stride-1 conv + BN + ReLU with no
max-pool, so 32 px inputs keep their resolution. Init as the reference: conv kaiming-normal
(fan_out), BN weight 1 / bias 0, linear xavier-normal with zero bias. The reference's two unused
projection heads are left out (they never reach the loss).
"""

from __future__ import annotations

from torch import Tensor, nn

from lddyn.models.base import Classifier, reference_init

EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand, added to the shortcut, then ReLU."""

    def __init__(self, cin: int, planes: int, stride: int, bn: dict[str, float]) -> None:
        super().__init__()
        cout = planes * EXPANSION
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False),
            nn.BatchNorm2d(planes, **bn),
            nn.ReLU(),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
            nn.BatchNorm2d(planes, **bn),
            nn.ReLU(),
            nn.Conv2d(planes, cout, 1, bias=False),
            nn.BatchNorm2d(cout, **bn),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.shortcut = nn.Sequential(conv, nn.BatchNorm2d(cout, **bn))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(Classifier):
    """CIFAR-stem ResNet; ``blocks`` per stage, e.g. (3, 4, 6, 3) for ResNet-50."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        blocks: tuple[int, ...] = (3, 4, 6, 3),
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        bn = {"momentum": bn_momentum, "eps": bn_eps}
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64, **bn), nn.ReLU()
        )
        stages: list[nn.Module] = []
        cin = 64
        for stage, count in enumerate(blocks):
            planes = 64 * 2**stage
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                stages.append(Bottleneck(cin, planes, stride, bn))
                cin = planes * EXPANSION
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_classes, self.feat_dim = num_classes, cin
        self.head = nn.Linear(cin, num_classes)
        reference_init(self)

    def features(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(x)))  # (N, 2048)
