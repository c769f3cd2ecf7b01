"""WRN-28-2 and ResNet-50 (CIFAR stem) against the reference's architecture facts (docs/recipe.md):
parameter counts from closed forms, block wiring, activations, BatchNorm settings, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lddyn.config import load_config
from lddyn.models import MODEL_NAMES, build_model
from lddyn.models.resnet import Bottleneck
from lddyn.models.wrn import WideResNet


def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def wrn28_2_params(k: int) -> int:
    """Stem, 3 groups of 4 pre-activation blocks (widths 32/64/128), head BN, linear with bias."""
    total = conv(3, 16, 3)
    for cin, cout in ((16, 32), (32, 64), (64, 128)):
        total += 2 * cin + conv(cin, cout, 3) + 2 * cout + conv(cout, cout, 3) + conv(cin, cout, 1)
        total += 3 * (2 * cout + conv(cout, cout, 3) + 2 * cout + conv(cout, cout, 3))
    return total + 2 * 128 + 128 * k + k


def test_wrn28_2_parameter_count() -> None:
    model = build_model("wrn28_2", num_classes=10, image_shape=(3, 32, 32))
    count = sum(p.numel() for p in model.parameters())
    assert count == wrn28_2_params(10)
    # the reference model has 1 468 126 parameters including its unused 128 -> 4 rotation head
    assert count + 128 * 4 + 4 == 1_468_126


@torch.no_grad()
def test_resnet50_parameter_count_and_outputs() -> None:
    model = build_model("resnet50", num_classes=127, image_shape=(3, 32, 32)).eval()
    count = sum(p.numel() for p in model.parameters())
    # torchvision's ResNet-50 (25 557 032) with the 7x7 stem swapped for 3x3 and a 127-way head
    assert count == 25_557_032 - conv(3, 64, 7) + conv(3, 64, 3) - (2048 * 1000 + 1000) + (2048 * 127 + 127)
    out = model(torch.randn(1, 3, 32, 32))
    assert out["feat"].shape == (1, 2048) and out["logits"].shape == (1, 127)


def test_resnet50_cifar_stem_keeps_resolution() -> None:
    model = build_model("resnet50", num_classes=5, image_shape=(3, 32, 32))
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert model.stem(torch.randn(1, 3, 32, 32)).shape == (1, 64, 32, 32)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 3 + 4 + 6 + 3
    strides = [b.body[3].stride[0] for b in blocks]
    assert [i for i, s in enumerate(strides) if s == 2] == [3, 7, 13]  # first block of stages 2, 3, 4


def test_wrn_outputs_and_activations() -> None:
    model = build_model("wrn28_2", num_classes=7, image_shape=(3, 32, 32))
    out = model(torch.randn(3, 3, 32, 32))
    assert out["feat"].shape == (3, 128) and out["logits"].shape == (3, 7)
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 2 * 12 + 1 and all(a.negative_slope == 0.1 for a in acts)
    assert not any(isinstance(m, (nn.ReLU, nn.Dropout)) for m in model.modules())


@torch.no_grad()
def test_wrn_block_wiring_matches_the_reference() -> None:
    """Block 0 pre-activates the input for both branches; the first block of groups 2 and 3 feeds the
    raw input to its 1x1 shortcut and BN-LReLU only to the residual branch."""
    model = build_model("wrn28_2", num_classes=3, image_shape=(3, 32, 32)).eval()
    for block in model.blocks:  # non-trivial running statistics and affine parameters
        for bn in (block.bn1, block.bn2):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
    act = nn.LeakyReLU(0.1)
    x = torch.randn(2, 16, 32, 32)
    first = model.blocks[0]
    pre = act(first.bn1(x))
    residual = first.conv2(act(first.bn2(first.conv1(pre))))
    torch.testing.assert_close(first(x), first.shortcut(pre) + residual)
    down = model.blocks[4]
    y = torch.randn(2, 32, 32, 32)
    residual = down.conv2(act(down.bn2(down.conv1(act(down.bn1(y))))))
    torch.testing.assert_close(down(y), down.shortcut(y) + residual)
    same = model.blocks[5]
    z = torch.randn(2, 64, 16, 16)
    torch.testing.assert_close(same(z), z + same.conv2(act(same.bn2(same.conv1(act(same.bn1(z)))))))


@pytest.mark.parametrize("name", ["wrn28_2", "resnet50"])
def test_batchnorm_effective_defaults_and_declared_option(name: str) -> None:
    default = build_model(name, num_classes=10, image_shape=(3, 32, 32))
    bns = [m for m in default.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(b.momentum == 0.1 and b.eps == 1e-5 for b in bns)
    cfg = load_config("reference", ["model.bn_momentum=0.001", "model.bn_eps=0.001"]).model
    declared = build_model(
        name, num_classes=10, image_shape=(3, 32, 32), bn_momentum=cfg.bn_momentum, bn_eps=cfg.bn_eps
    )
    assert all(
        b.momentum == 1e-3 and b.eps == 1e-3 for b in declared.modules() if isinstance(b, nn.BatchNorm2d)
    )


@pytest.mark.parametrize("name", ["wrn28_2", "resnet50"])
def test_initialisation_statistics(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=100, image_shape=(3, 32, 32))
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 30_000:
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            std = m.weight.std().item()  # kaiming normal, fan_out, ReLU gain
            assert abs(std / math.sqrt(2 / fan_out) - 1) < 0.05 and abs(m.weight.mean().item()) < 0.1 * std
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    head = model.head
    expected = math.sqrt(2 / (head.in_features + head.out_features))  # xavier normal
    assert abs(head.weight.std().item() / expected - 1) < 0.05 and torch.all(head.bias == 0)


def test_registry_names_and_unknown_model() -> None:
    assert {"cnn", "mlp", "wrn28_2", "resnet50"} == set(MODEL_NAMES)
    assert isinstance(build_model("wrn28_2", num_classes=2, image_shape=(1, 28, 28)), WideResNet)
    with pytest.raises(ValueError, match="model.name='vit'"):
        build_model("vit", num_classes=2, image_shape=(3, 32, 32))


def test_every_model_is_a_config_choice() -> None:
    for name in MODEL_NAMES:
        assert load_config("digits-fixmatch", [f"model.name={name}"]).model.name == name
