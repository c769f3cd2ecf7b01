"""WRN-28-2 as used by the reference recipe (FixMatch convention, pre-activation blocks).

Widths 32/64/128, LeakyReLU slope 0.1, 1x1 shortcut on shape change, head BN -> LReLU -> pool ->
linear. The reference declares BN momentum 1e-3 / eps 1e-3 but never passes them, so PyTorch's
defaults (0.1, 1e-5) are what trained; both are available through the arguments (model.bn_momentum,
model.bn_eps). 1 467 610 parameters for 10 classes: the reference's count without its unused
128 -> 4 rotation head, which is left out.
"""

from __future__ import annotations

from torch import Tensor, nn

from lddyn.models.base import Classifier, reference_init


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, preact_both: bool, bn: dict[str, float]) -> None:
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(cin, **bn), nn.LeakyReLU(0.1)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(cout, **bn), nn.LeakyReLU(0.1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        # The first block of the first group pre-activates the input for both branches.
        self.preact_both = preact_both

    def forward(self, x: Tensor) -> Tensor:
        pre = self.act1(self.bn1(x))
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        if self.shortcut is None:
            return x + out
        return self.shortcut(pre if self.preact_both else x) + out


class WideResNet(Classifier):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        depth: int = 28,
        widen: int = 2,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        bn = {"momentum": bn_momentum, "eps": bn_eps}
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        for g, stride in enumerate([1, 2, 2]):
            for i in range(n):
                cin = widths[g] if i == 0 else widths[g + 1]
                blocks.append(_Block(cin, widths[g + 1], stride if i == 0 else 1, g == 0 and i == 0, bn))
        self.blocks = nn.Sequential(*blocks)
        self.bn, self.act = nn.BatchNorm2d(widths[3], **bn), nn.LeakyReLU(0.1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_classes, self.feat_dim = num_classes, widths[3]
        self.head = nn.Linear(widths[3], num_classes)
        reference_init(self)

    def features(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.bn(self.blocks(self.stem(x)))))
