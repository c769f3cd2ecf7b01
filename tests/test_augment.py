"""Tensor augmentation against its definitions: each RandAugment op against PIL on small uint8 images,
crop/cutout against hand-computed outputs, and the weak/strong pipelines' contracts."""

from __future__ import annotations

import numpy as np
import PIL.ImageDraw
import PIL.ImageEnhance
import PIL.ImageOps
import pytest
import torch
from PIL import Image

from lddyn.data import randaugment as ra
from lddyn.data.augment import (
    AugmentConfig,
    Augmenter,
    apply_plan,
    crop_flip,
    cutout,
    draw_plan,
)

TOL = 1 / 255 + 1e-5  # PIL truncates blends to uint8; the tensor ops stay continuous
CIFAR = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))


def _images(c: int, h: int = 6, w: int = 7, n: int = 3, seed: int = 0) -> torch.Tensor:
    """Uint8-valued images with a constant channel/image mixed in (exercises PIL's degenerate cases)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, h, w), generator=g).float()
    x[0, 0] = 77.0  # one flat channel
    x[-1] = torch.randint(60, 90, (c, h, w), generator=g).float()  # narrow range
    return x / 255


def _pil(img: torch.Tensor) -> Image.Image:
    arr = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def _tensor(img: Image.Image) -> torch.Tensor:
    arr = torch.from_numpy(np.asarray(img).copy()).float() / 255
    return arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1)


def _check(ours: torch.Tensor, x: torch.Tensor, pil_fn, atol: float) -> None:
    """Compare a batched op with PIL applied image by image."""
    for i in range(len(x)):
        expected = _tensor(pil_fn(_pil(x[i]), i))
        assert torch.allclose(ours[i], expected, atol=atol, rtol=0), (i, (ours[i] - expected).abs().max())


CHANNELS = pytest.mark.parametrize("c", [1, 3])


# --- pixel ops against PIL ---------------------------------------------------------------------------


@CHANNELS
def test_invert(c: int) -> None:
    x = _images(c)
    _check(ra.invert(x), x, lambda im, i: PIL.ImageOps.invert(im), 1e-6)


@CHANNELS
def test_solarize_matches_pil_thresholds(c: int) -> None:
    x = _images(c)
    x[0, :, 0, :3] = torch.tensor([34, 35, 128]) / 255  # around the m=4 threshold (34.13) and 128
    for t in (34.13, 128, 0, 256):
        _check(ra.solarize(x, t / 255), x, lambda im, i, t=t: PIL.ImageOps.solarize(im, t), 1e-6)


@CHANNELS
def test_solarize_add_matches_reference(c: int) -> None:
    def reference(im: Image.Image, add: float) -> Image.Image:  # ildoonet SolarizeAdd (np.int -> int64)
        arr = np.clip(np.asarray(im).astype(np.int64) + add, 0, 255).astype(np.uint8)
        return PIL.ImageOps.solarize(Image.fromarray(arr), 128)

    x = _images(c)
    _check(ra.solarize_add(x, 14.67 / 255), x, lambda im, i: reference(im, 14.67), TOL)
    _check(ra.solarize_add(x, 110 / 255), x, lambda im, i: reference(im, 110), TOL)


@CHANNELS
@pytest.mark.parametrize("bits", [1, 2, 4, 7, 8])
def test_posterize_exact(c: int, bits: int) -> None:
    x = _images(c)
    _check(ra.posterize(x, bits), x, lambda im, i: PIL.ImageOps.posterize(im, bits), 1e-6)


def test_posterize_one_bit_keeps_the_top_bit() -> None:
    x = torch.tensor([0, 127, 128, 255], dtype=torch.float32).view(1, 1, 2, 2) / 255
    assert ra.posterize(x, 1).flatten().tolist() == pytest.approx([0, 0, 128 / 255, 128 / 255])
    assert ra.posterize_bits(ra.op_value(ra.OP_INDEX["Posterize"], 4, 32)) == 1  # int(0.53) = 0 -> 1


@CHANNELS
def test_autocontrast(c: int) -> None:
    x = _images(c)
    _check(ra.autocontrast(x), x, lambda im, i: PIL.ImageOps.autocontrast(im), TOL)


@CHANNELS
def test_equalize_exact(c: int) -> None:
    x = _images(c, 40, 40, n=4)  # 1600 pixels: PIL's step is > 2, so its rounding term matters
    # skewed histograms: many pixels in the top bin, and a case where PIL's table exceeds 255
    x[1] = torch.where(torch.rand(c, 40, 40, generator=torch.Generator().manual_seed(1)) < 0.7, 1.0, x[1])
    x[2].view(c, -1)[:, :300] = (torch.arange(300) % 120).float() / 255
    x[2].view(c, -1)[:, 300:] = 250 / 255
    _check(ra.equalize(x), x, lambda im, i: PIL.ImageOps.equalize(im), 1e-6)


ENHANCE = [
    (ra.color, PIL.ImageEnhance.Color),
    (ra.contrast, PIL.ImageEnhance.Contrast),
    (ra.brightness, PIL.ImageEnhance.Brightness),
    (ra.sharpness, PIL.ImageEnhance.Sharpness),
]


@CHANNELS
@pytest.mark.parametrize(("ours", "pil"), ENHANCE, ids=["color", "contrast", "brightness", "sharpness"])
def test_enhance_ops(c: int, ours, pil) -> None:
    x = _images(c)
    for factor in (0.34, 1.0, 1.9):
        _check(ours(x, factor), x, lambda im, i, f=factor: pil(im).enhance(f), TOL)
    factors = torch.tensor([0.1, 0.34, 1.7])  # one factor per image
    _check(ours(x, factors), x, lambda im, i: pil(im).enhance(float(factors[i])), TOL)


def test_sharpness_leaves_the_border_and_uses_the_smooth_kernel() -> None:
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    out = ra.sharpness(x, 0.0)  # factor 0 = the degenerate (smoothed) image itself
    assert out[0, 0, 2, 2].item() == pytest.approx(round(5 / 13 * 255) / 255)
    assert out[0, 0, 1, 1].item() == pytest.approx(round(255 / 13) / 255)
    assert torch.equal(out[0, 0, 0], x[0, 0, 0]) and torch.equal(out[0, 0, :, 4], x[0, 0, :, 4])


# --- geometric ops against PIL (NEAREST, black fill): exact ---------------------------------------------


def _transform(data: tuple[float, ...]):
    return lambda im, i: im.transform(im.size, Image.Transform.AFFINE, data, Image.Resampling.NEAREST)


@CHANNELS
@pytest.mark.parametrize("v", [2, -3, 1.7, -2.4, 13.33, 0.5, 0.4999999, -1.5000001])
def test_translate_exact(c: int, v: float) -> None:
    x = _images(c)
    _check(ra.translate_x(x, v), x, _transform((1, 0, v, 0, 1, 0)), 0)
    _check(ra.translate_y(x, v), x, _transform((1, 0, 0, 0, 1, v)), 0)


def test_translate_integer_is_a_shift() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4) / 16
    out = ra.translate_x(x, 1)[0, 0]
    assert torch.equal(out[:, :3], x[0, 0, :, 1:]) and torch.equal(out[:, 3], torch.zeros(4))


@CHANNELS
@pytest.mark.parametrize("v", [0.04, -0.04, 0.3, -0.3, 0.2])
def test_shear_exact(c: int, v: float) -> None:
    x = _images(c, 32, 32, n=2)  # at 32 px, -0.04 and 0.2 hit pixels where PIL's 16.16 rounding decides
    _check(ra.shear_x(x, v), x, _transform((1, v, 0, 0, 1, 0)), 0)
    _check(ra.shear_y(x, v), x, _transform((1, 0, 0, v, 1, 0)), 0)


@CHANNELS
@pytest.mark.parametrize("deg", [4, -4, 30, -17.5, 12, 90, 180])
def test_rotate_exact(c: int, deg: float) -> None:
    x = _images(c, 32, 32, n=2) if deg in (4, -4, 12, 90, 180) else _images(c, 9, 8)
    _check(ra.rotate(x, deg), x, lambda im, i: im.rotate(deg), 0)


def test_geometric_parameters_are_per_image() -> None:
    x = _images(3, 9, 8)
    deg = torch.tensor([4.0, -4.0, 30.0])
    _check(ra.rotate(x, deg), x, lambda im, i: im.rotate(float(deg[i])), 0)


@CHANNELS
@pytest.mark.parametrize(
    ("size", "cx", "cy"), [(5.33, 3.2, 4.9), (2.7, 1.0, 8.0), (0.0, 5.5, 2.2), (20, 4, 4)]
)
def test_cutout_abs_matches_reference_rectangle(c: int, size: float, cx: float, cy: float) -> None:
    def reference(im: Image.Image) -> Image.Image:  # ildoonet CutoutAbs with the centre given
        x0, y0 = int(max(0, cx - size / 2.0)), int(max(0, cy - size / 2.0))
        x1, y1 = min(im.size[0], x0 + size), min(im.size[1], y0 + size)
        im = im.copy()
        PIL.ImageDraw.Draw(im).rectangle((x0, y0, x1, y1), (125, 123, 114) if c == 3 else 125)
        return im

    x = _images(c, 9, 8)
    _check(ra.cutout_abs(x, size, cx, cy), x, lambda im, i: reference(im), 1e-6)


# --- crop, flip, cutout (hand-computed) --------------------------------------------------------------------


def test_crop_flip_hand_computed() -> None:
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    one = torch.ones(1, dtype=torch.long)
    out = crop_flip(x, 0 * one, 2 * one, torch.zeros(1, dtype=torch.bool), pad=1)[0, 0]
    expected = torch.tensor([[0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]], dtype=torch.float32)
    assert torch.equal(out, expected)
    flipped = crop_flip(x, 0 * one, 2 * one, torch.ones(1, dtype=torch.bool), pad=1)[0, 0]
    assert torch.equal(flipped, expected.flip(1))
    assert torch.equal(crop_flip(x, one, one, torch.zeros(1, dtype=torch.bool), pad=1), x)  # centre crop
    no_flip = torch.zeros(1, dtype=torch.bool)
    low_left = crop_flip(x, 2 * one, 0 * one, no_flip, pad=1)[0, 0]  # source rows +1, columns -1
    expected = torch.tensor(
        [[0, 5, 6, 7], [0, 9, 10, 11], [0, 13, 14, 15], [0, 0, 0, 0]], dtype=torch.float32
    )
    assert torch.equal(low_left, expected)
    corner = torch.zeros(4, 4)
    corner[3, 0] = 4.0  # pad 3, top 0, left 6: out[i, j] = x[i - 3, j + 3]
    assert torch.equal(crop_flip(x, 0 * one, 6 * one, no_flip, pad=3)[0, 0], corner)


def test_cutout_hand_computed() -> None:
    x = torch.ones(2, 1, 5, 5)
    out = cutout(x, torch.tensor([0, 2]), torch.tensor([2, 4]), size=2)
    first = torch.ones(5, 5)
    first[0, 1:3] = 0  # rows [-1, 1) clipped, cols [1, 3)
    second = torch.ones(5, 5)
    second[1:3, 3:5] = 0
    assert torch.equal(out[0, 0], first) and torch.equal(out[1, 0], second)


# --- RandAugment policy ---------------------------------------------------------------------------------


def _reference_apply(x: torch.Tensor, plan, m: float) -> torch.Tensor:
    """Per-image, per-op application of the public op functions (the definition the batched path fuses)."""
    h, w = x.shape[2:]
    ops = {
        "AutoContrast": lambda im, v, k: ra.autocontrast(im),
        "Equalize": lambda im, v, k: ra.equalize(im),
        "Invert": lambda im, v, k: ra.invert(im),
        "Rotate": lambda im, v, k: ra.rotate(im, v),
        "Posterize": lambda im, v, k: ra.posterize(im, ra.posterize_bits(v)),
        "Solarize": lambda im, v, k: ra.solarize(im, v / 255),
        "SolarizeAdd": lambda im, v, k: ra.solarize_add(im, v / 255),
        "Color": lambda im, v, k: ra.color(im, v),
        "Contrast": lambda im, v, k: ra.contrast(im, v),
        "Brightness": lambda im, v, k: ra.brightness(im, v),
        "Sharpness": lambda im, v, k: ra.sharpness(im, v),
        "ShearX": lambda im, v, k: ra.shear_x(im, v),
        "ShearY": lambda im, v, k: ra.shear_y(im, v),
        "CutoutAbs": lambda im, v, k: ra.cutout_abs(
            im, v, w - (w - 1) * k[0].item(), h - (h - 1) * k[1].item()
        ),
        "TranslateXabs": lambda im, v, k: ra.translate_x(im, v),
        "TranslateYAbs": lambda im, v, k: ra.translate_y(im, v),
    }
    out = []
    for i in range(len(x)):
        im = x[i : i + 1]
        for pos in range(plan.ops.shape[1]):
            k = int(plan.ops[i, pos])
            v = ra.op_value(k, m, w) * (float(plan.sign[i, pos]) if ra.OPS[k].signed else 1.0)
            im = ops[ra.OPS[k].name](im, v, plan.centre[i, pos])
        out.append(im)
    return torch.cat(out)


@pytest.mark.parametrize(("c", "m"), [(3, 4.0), (1, 4.0), (3, 17.0)])
def test_apply_plan_equals_per_image_ops(c: int, m: float) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (64, c, 12, 12), generator=g).float() / 255
    plan = draw_plan(64, 3, g)
    assert set(plan.ops.flatten().tolist()) == set(range(16))
    ours = apply_plan(x, plan, m)
    assert torch.allclose(ours, _reference_apply(x, plan, m), atol=1e-6, rtol=0)


def test_op_values_of_the_reference_at_m4() -> None:
    values = {op.name: ra.op_value(i, 4, 32) for i, op in enumerate(ra.OPS)}
    assert values["Rotate"] == pytest.approx(4.0) and values["Solarize"] == pytest.approx(34.133, abs=1e-3)
    assert values["SolarizeAdd"] == pytest.approx(14.667, abs=1e-3) and values["Color"] == pytest.approx(0.34)
    assert values["ShearX"] == pytest.approx(0.04) and values["CutoutAbs"] == pytest.approx(5.333, abs=1e-3)
    assert values["TranslateXabs"] == pytest.approx(13.333, abs=1e-3)
    assert ra.op_value(ra.OP_INDEX["TranslateXabs"], 4, 96) == pytest.approx(40.0)  # pixels scale with size


def test_op_choice_varies_across_images() -> None:
    g = torch.Generator().manual_seed(0)
    plan = draw_plan(448, 3, g)
    for pos in range(3):
        counts = torch.bincount(plan.ops[:, pos], minlength=16)
        assert (counts > 10).all()  # every op kind at every position, none dominating
    x = _images(3, 16, 16, n=1).expand(64, -1, -1, -1).contiguous()
    out = apply_plan(x, draw_plan(64, 3, g), 4.0)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 40  # same image, different ops per row


# --- weak / strong pipelines --------------------------------------------------------------------------------


def _aug(size: int = 32, c: int = 3, **kw) -> Augmenter:
    return Augmenter(AugmentConfig(size, CIFAR["mean"][:c], CIFAR["std"][:c], **kw))


def _batch(n: int = 16, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_defaults_scale_with_image_size() -> None:
    assert (_aug(32).pad, _aug(32).cutout) == (4, 16)
    assert (_aug(8, 1).pad, _aug(8, 1).cutout) == (1, 4)
    assert (_aug(96).pad, _aug(96).cutout) == (12, 48)
    assert _aug(32, pad=0, cutout=0).pad == 0


def test_normalize() -> None:
    x = _batch(2)
    mean, std = torch.tensor(CIFAR["mean"]).view(1, 3, 1, 1), torch.tensor(CIFAR["std"]).view(1, 3, 1, 1)
    assert torch.allclose(_aug().normalize(x), (x - mean) / std, atol=1e-6)


@pytest.mark.parametrize("view", ["weak", "strong"])
@pytest.mark.parametrize(
    ("c", "size", "dtype"), [(3, 32, torch.float32), (1, 8, torch.float32), (3, 16, torch.float64)]
)
def test_views_shape_dtype_and_range(view: str, c: int, size: int, dtype: torch.dtype) -> None:
    aug, x = _aug(size, c), _batch(16, c, size).to(dtype)
    out = getattr(aug, view)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    mean, std = (torch.tensor(v[:c], dtype=dtype).view(1, c, 1, 1) for v in (CIFAR["mean"], CIFAR["std"]))
    raw = out * std + mean  # back to [0, 1]: crop padding is 0, RandAugment output stays in range
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_weak_is_a_crop_and_flip_of_the_input() -> None:
    aug, x = _aug(), _batch(8)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    top, left, flip = aug._draw_crop(8, g2)
    assert torch.allclose(aug.weak(x, g1), aug.normalize(crop_flip(x, top, left, flip, 4)), atol=1e-6)


def test_strong_is_randaugment_crop_normalise_cutout() -> None:
    aug, x = _aug(), _batch(16)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    plan = draw_plan(16, 3, g2)
    top, left, flip = aug._draw_crop(16, g2)
    cy, cx = aug._draw_cutout(16, 32, 32, g2)
    views = aug.normalize(crop_flip(apply_plan(x, plan, 4.0), top, left, flip, 4))
    expected = cutout(views, cy, cx, 16)
    out = aug.strong(x, g1)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(out == 0, expected == 0)


def test_strong_cutout_region_is_exactly_zero() -> None:
    out = _aug().strong(_batch(32), torch.Generator().manual_seed(1))
    for img in out:
        zero = (img == 0).all(0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16  # a 16x16 box, clipped at most to half
        assert zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # a full rectangle
        assert zero.sum() == len(rows) * len(cols)


def test_zero_ops_leaves_crop_and_cutout() -> None:
    aug, x = _aug(ra_n=0, cutout=0), _batch(8)
    out = aug.strong(x, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    draw_plan(8, 0, g)
    assert torch.allclose(out, aug.normalize(crop_flip(x, *aug._draw_crop(8, g), 4)), atol=1e-6)


def test_flip_can_be_disabled() -> None:
    x = torch.arange(8.0).view(1, 1, 1, 8).expand(64, 1, 8, 8) / 8
    out = _aug(8, 1, pad=0, flip=False).weak(x, torch.Generator().manual_seed(0))
    assert torch.allclose(out, _aug(8, 1).normalize(x))


@pytest.mark.parametrize("view", ["weak", "strong"])
def test_views_are_deterministic_given_the_generator(view: str) -> None:
    aug, x = _aug(), _batch(16)
    first = getattr(aug, view)(x, torch.Generator().manual_seed(11))
    again = getattr(aug, view)(x, torch.Generator().manual_seed(11))
    other = getattr(aug, view)(x, torch.Generator().manual_seed(12))
    assert torch.equal(first, again) and not torch.equal(first, other)
    g = torch.Generator().manual_seed(11)
    getattr(aug, view)(x, g)
    state = g.get_state()
    nxt = getattr(aug, view)(x, g)
    assert not torch.equal(nxt, first)  # the generator advances
    assert torch.equal(getattr(aug, view)(x, torch.Generator().set_state(state)), nxt)  # and resumes exactly


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    aug, x = _aug(), _batch(64)
    for view in ("weak", "strong"):
        cpu = getattr(aug, view)(x, torch.Generator().manual_seed(2))
        gpu = getattr(aug, view)(x.cuda(), torch.Generator().manual_seed(2))
        assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-5)
