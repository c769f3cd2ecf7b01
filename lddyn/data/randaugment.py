"""RandAugment ops of the ildoonet reference (FixMatch recipe), batched on (N, C, H, W) tensors in [0, 1].

Every op follows the PIL function the reference calls on uint8 images, with its thresholds rescaled
to [0, 1]. Parameters are a Python scalar or one value per image (a 1-D tensor), so a mixed batch runs
in one call. Pixel ops stay continuous (no uint8 rounding of the output) except where the op is
defined on uint8 levels (posterize, equalize); PIL's uint8 intermediates ("degenerate" images) are
rounded like PIL rounds them, so each op is within 1/255 of PIL on uint8 inputs. Geometric ops
reproduce PIL's NEAREST affine sampler, 16.16 fixed point included, so they agree pixel for pixel.
Geometric and cutout parameters are read on the CPU (they come from a CPU generator), which keeps
the index arithmetic exact in float64 and avoids device syncs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

GREY = (125 / 255, 123 / 255, 114 / 255)  # CutoutAbs fill of the reference, (125, 123, 114) in uint8
_ONE = 65536  # 1.0 in PIL's 16.16 fixed point
_LUMA = (0.299, 0.587, 0.114)  # PIL convert("L"): (19595, 38470, 7471) / 65536

Param = float | Tensor


# --- helpers ------------------------------------------------------------------------------------


def _per_image(v: Param, x: Tensor) -> Tensor:
    """A scalar or per-image parameter shaped to broadcast against (N, C, H, W) x."""
    t = torch.as_tensor(v, dtype=x.dtype).to(x.device, non_blocking=True)
    return t.reshape(-1, 1, 1, 1) if t.ndim else t


def _cpu64(v: Param, n: int) -> Tensor:
    """A scalar or per-image parameter as an (n,) float64 CPU tensor (exact index arithmetic)."""
    return torch.as_tensor(v, dtype=torch.float64).to("cpu").expand(n).clone()


def _levels(x: Tensor) -> Tensor:
    """uint8 levels 0..255 (as floats) of [0, 1] values, rounded like ToPILImage of a uint8 image."""
    return torch.floor(x * 255 + 0.5).clamp_(0, 255)


def _blend(degenerate: Tensor, x: Tensor, factor: Param) -> Tensor:
    """PIL ImageEnhance: degenerate + factor * (image - degenerate), clipped."""
    return torch.lerp(degenerate, x, _per_image(factor, x)).clamp_(0, 1)


def grayscale(x: Tensor) -> Tensor:
    """PIL convert('L') as a (N, 1, H, W) uint8-rounded image; a 1-channel image is its own grey."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _levels(r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]) / 255


# --- pixel ops --------------------------------------------------------------------------------------


def invert(x: Tensor) -> Tensor:
    """ImageOps.invert."""
    return 1 - x


def at_least(x: Tensor, threshold: Param) -> Tensor:
    """1.0 where x >= threshold, else 0.0.

    For float32/64 this is arithmetic only: on CPU, torch.where and bool-to-float casts run ~10x
    slower than a fused multiply. Scaling by 2**100 is exact, so (x - t) * 2**100 + 1 is >= 1 at or
    above the threshold and far below 0 under it, for any threshold that is 0 or above 2**-90.
    """
    t = _per_image(threshold, x)
    if x.dtype not in (torch.float32, torch.float64):
        return (x >= t).to(x.dtype)
    return torch.sub(x, t).mul_(2.0**100).add_(1).clamp_(0, 1)


def solarize(x: Tensor, threshold: Param) -> Tensor:
    """ImageOps.solarize: values at or above the threshold (in [0, 1] units) are inverted.

    |s - x| with s = [x >= t] is x below the threshold and 1 - x at or above it.
    """
    return at_least(x, threshold).sub_(x).abs_()


def solarize_add(x: Tensor, addition: Param, threshold: Param = 128 / 255) -> Tensor:
    """Reference SolarizeAdd: add (clipped), then solarize at 128/255."""
    return solarize((x + _per_image(addition, x)).clamp_(0, 1), threshold)


def posterize(x: Tensor, bits: Param) -> Tensor:
    """ImageOps.posterize on uint8 levels: keep the top `bits` bits (clamped to 1..8)."""
    step = torch.exp2(8 - _per_image(bits, x).floor().clamp(1, 8))
    return torch.floor(_levels(x) / step) * step / 255


def autocontrast(x: Tensor) -> Tensor:
    """ImageOps.autocontrast (cutoff 0): per channel, stretch the occupied level range to 0..1."""
    lo = _levels(x.amin((2, 3), keepdim=True))
    hi = _levels(x.amax((2, 3), keepdim=True))
    flat = hi <= lo  # PIL leaves a channel with a single level unchanged
    scale = torch.where(flat, 1 / 255, 1 / (hi - lo).clamp_(min=1))
    return ((x * 255 - torch.where(flat, 0.0, lo)) * scale).clamp_(0, 1)


def equalize(x: Tensor) -> Tensor:
    """ImageOps.equalize: per-channel histogram equalisation on 256 bins, PIL's lookup table."""
    n, c, h, w = x.shape
    q = _levels(x).long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, q, torch.ones_like(q))
    top = hist.gather(1, q.amax(1, keepdim=True))  # pixels in the highest occupied bin
    step = torch.div(h * w - top, 255, rounding_mode="floor")
    below = hist.cumsum(1) - hist
    lut = torch.div(below + step // 2, step.clamp(min=1), rounding_mode="floor").clamp_(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device))
    return lut.gather(1, q).view(n, c, h, w).to(x.dtype) / 255


def color(x: Tensor, factor: Param) -> Tensor:
    """ImageEnhance.Color: blend with the grey image (a no-op on 1-channel images, as in PIL)."""
    return _blend(grayscale(x), x, factor) if x.shape[1] == 3 else x


def contrast(x: Tensor, factor: Param) -> Tensor:
    """ImageEnhance.Contrast: blend with the rounded mean level of the grey image."""
    mean = torch.floor(grayscale(x).mean((1, 2, 3), keepdim=True) * 255 + 0.5) / 255
    return _blend(mean, x, factor)


def brightness(x: Tensor, factor: Param) -> Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return _blend(torch.zeros_like(x), x, factor)


def sharpness(x: Tensor, factor: Param) -> Tensor:
    """ImageEnhance.Sharpness: blend with the SMOOTH-filtered image; PIL keeps border pixels as they are."""
    h, w = x.shape[2:]
    if h < 3 or w < 3:
        return x
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]  # 3x3 box sums by shifted adds (cheaper than pooling)
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smooth = (box + 4 * x[:, :, 1:-1, 1:-1]) / 13  # kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = _levels(smooth) / 255
    return _blend(degenerate, x, factor)


def cutout_abs(x: Tensor, size: Param, cx: Param, cy: Param, fill: Sequence[float] = GREY) -> Tensor:
    """Reference CutoutAbs: a grey PIL rectangle of side `size` around the pixel centre (cx, cy)."""
    return paint(x, box_weight(*cutout_abs_bounds(x.shape[0], size, cx, cy), x), fill)


def cutout_abs_bounds(n: int, size: Param, cx: Param, cy: Param) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Half-open (y0, y1, x0, x1) of PIL's rectangle (x0, y0, x0 + size, y0 + size) drawn by the reference,
    with x0 = int(max(0, cx - size / 2)): PIL truncates the float corners and fills both ends inclusively,
    so a side is floor(size) + 1 pixels, clipped at the borders.
    """
    size = _cpu64(size, n)
    x0 = torch.floor((_cpu64(cx, n) - size / 2).clamp(min=0))
    y0 = torch.floor((_cpu64(cy, n) - size / 2).clamp(min=0))
    return y0, torch.floor(y0 + size) + 1, x0, torch.floor(x0 + size) + 1


def paint(x: Tensor, box: Tensor, fill: Sequence[float]) -> Tensor:
    """x with the box (an (N, 1, H, W) 0/1 weight) set to the per-channel fill colour."""
    c = x.shape[1]
    colour = torch.tensor(fill[:c], dtype=x.dtype).to(x.device, non_blocking=True).view(1, c, 1, 1)
    return torch.lerp(x, colour, box)  # exact at weights 0 and 1


def box_weight(y0: Tensor, y1: Tensor, x0: Tensor, x1: Tensor, like: Tensor) -> Tensor:
    """(N, 1, H, W) 0/1 weight of the half-open boxes [y0, y1) x [x0, x1), in like's dtype and device.

    Bounds are per image on the CPU; the mask is the outer product of a row and a column mask.
    """
    h, w = like.shape[2:]
    bounds = torch.stack([y0, y1, x0, x1], 1).long().to(like.device, non_blocking=True)
    rows = torch.arange(h, device=like.device)
    cols = torch.arange(w, device=like.device)
    in_y = ((rows >= bounds[:, 0:1]) & (rows < bounds[:, 1:2])).to(like.dtype)
    in_x = ((cols >= bounds[:, 2:3]) & (cols < bounds[:, 3:4])).to(like.dtype)
    return (in_y[:, :, None] * in_x[:, None, :]).unsqueeze(1)


# --- geometric ops (PIL NEAREST affine, black fill) ---------------------------------------------------


def affine(x: Tensor, data: Tensor) -> Tensor:
    """Image.transform(size, AFFINE, data, NEAREST) per image; data (N, 6) maps output centres to input."""
    return sample_fixed(x, fixed_point(data))


def fixed_point(data: Tensor) -> Tensor:
    """PIL's integer form of affine data: (N, 6) int64 with input = (A2 + A0 x + A1 y) >> 16, etc.

    Shear/rotation use PIL's 16.16 fixed-point engine (coefficients rounded to 1/65536). Pure
    scale/translation (a1 = a3 = 0) go through PIL's float ScaleAffine, floor(a2 + a0 (x + 0.5)), which
    this form reproduces exactly for integer scales (translations, flips) by flooring the offset.
    """
    a = data.detach().to("cpu", torch.float64)
    a0, a1, a2, a3, a4, a5 = a.unbind(1)
    x_off, y_off = a2 + 0.5 * a0 + 0.5 * a1, a5 + 0.5 * a3 + 0.5 * a4
    coeffs = torch.stack([a0, a1, x_off, a3, a4, y_off], 1) * _ONE
    scale_path = ((a1 == 0) & (a3 == 0)).unsqueeze(1)
    return torch.where(scale_path, torch.floor(coeffs), torch.floor(coeffs + 0.5)).long()


def sample_fixed(x: Tensor, coeffs: Tensor) -> Tensor:
    """Nearest-neighbour resampling with fixed-point coefficients (see fixed_point); outside is 0.

    int32 like PIL's own arithmetic (its fixed-point engine is only used where that cannot overflow),
    and in place, since the index arithmetic costs as much as the gather.
    """
    n, _, h, w = x.shape
    a = coeffs.to(torch.int32).to(x.device, non_blocking=True).view(n, 6, 1, 1).unbind(1)
    cols = torch.arange(w, device=x.device, dtype=torch.int32).view(1, 1, w)
    rows = torch.arange(h, device=x.device, dtype=torch.int32).view(1, h, 1)
    x_in = torch.add(a[0] * cols + a[2], a[1] * rows).bitwise_right_shift_(16).clamp_(-1, w)
    y_in = torch.add(a[3] * cols + a[5], a[4] * rows).bitwise_right_shift_(16).clamp_(-1, h)
    index = y_in.mul_(w + 2).add_(x_in).add_(w + 3)  # border_index, in place
    return take(pad_border(x), index.long(), h, w)


def border_index(y_in: Tensor, x_in: Tensor, h: int, w: int) -> Tensor:
    """Flat index into the image padded by one fill pixel on each side (see pad_border).

    Coordinates outside the image are clamped onto that border, so no mask is needed. y_in and x_in
    broadcast to (N, H, W): separable maps (crop, flip) pass (N, H, 1) and (N, 1, W).
    """
    return (y_in.clamp(-1, h) + 1) * (w + 2) + (x_in.clamp(-1, w) + 1)


def pad_border(x: Tensor) -> Tensor:
    """(N, C, (H + 2) * (W + 2)): x with a one-pixel border of zeros, flattened for take()."""
    return F.pad(x, (1, 1, 1, 1)).flatten(2)


def take(src: Tensor, index: Tensor, h: int, w: int) -> Tensor:
    """Gather an (N, C, H, W) image from flattened pixels src (N, C, P) at index (N, H, W)."""
    n, c, _ = src.shape
    flat = index.expand(n, h, w).reshape(n, 1, h * w).expand(n, c, h * w)
    return src.gather(2, flat).view(n, c, h, w)


def rotate_data(degrees: Param, n: int, h: int, w: int) -> Tensor:
    """(n, 6) affine data of Image.rotate(degrees): counter-clockwise about (w/2, h/2), no expand."""
    angle = -torch.deg2rad(_cpu64(degrees, n) % 360)
    cos, sin = torch.round(torch.cos(angle), decimals=15), torch.round(torch.sin(angle), decimals=15)
    cx, cy = w / 2, h / 2
    return torch.stack([cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy], 1)


def shear_shift_data(n: int, sx: Param = 0.0, sy: Param = 0.0, dx: Param = 0.0, dy: Param = 0.0) -> Tensor:
    """(n, 6) affine data (1, sx, dx, sy, 1, dy): the reference's Shear and Translate transforms."""
    one = torch.ones(n, dtype=torch.float64)
    return torch.stack([one, _cpu64(sx, n), _cpu64(dx, n), _cpu64(sy, n), one, _cpu64(dy, n)], 1)


def rotate(x: Tensor, degrees: Param) -> Tensor:
    """Reference Rotate: Image.rotate(v), NEAREST, black fill."""
    return affine(x, rotate_data(degrees, x.shape[0], x.shape[2], x.shape[3]))


def shear_x(x: Tensor, v: Param) -> Tensor:
    """Reference ShearX: transform AFFINE (1, v, 0, 0, 1, 0)."""
    return affine(x, shear_shift_data(x.shape[0], sx=v))


def shear_y(x: Tensor, v: Param) -> Tensor:
    """Reference ShearY: transform AFFINE (1, 0, 0, v, 1, 0)."""
    return affine(x, shear_shift_data(x.shape[0], sy=v))


def translate_x(x: Tensor, pixels: Param) -> Tensor:
    """Reference TranslateXabs: transform AFFINE (1, 0, v, 0, 1, 0) (content moves left for v > 0)."""
    return affine(x, shear_shift_data(x.shape[0], dx=pixels))


def translate_y(x: Tensor, pixels: Param) -> Tensor:
    """Reference TranslateYabs: transform AFFINE (1, 0, 0, 0, 1, v)."""
    return affine(x, shear_shift_data(x.shape[0], dy=pixels))


# --- the reference op list ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OpSpec:
    """One RandAugment op: its range (value = m / 30 * (hi - lo) + lo) and how the value is used."""

    name: str
    lo: float
    hi: float
    pixels: bool = False  # a length in pixels at 32 px: scaled by image_size / 32
    signed: bool = False  # negated with p = 0.5


# the 16 ops of ildoonet's augment_list, in its order (op indices in a plan refer to this tuple)
OPS: tuple[OpSpec, ...] = (
    OpSpec("AutoContrast", 0, 1),
    OpSpec("Equalize", 0, 1),
    OpSpec("Invert", 0, 1),
    OpSpec("Rotate", 0, 30, signed=True),
    OpSpec("Posterize", 0, 4),
    OpSpec("Solarize", 0, 256),
    OpSpec("SolarizeAdd", 0, 110),
    OpSpec("Color", 0.1, 1.9),
    OpSpec("Contrast", 0.1, 1.9),
    OpSpec("Brightness", 0.1, 1.9),
    OpSpec("Sharpness", 0.1, 1.9),
    OpSpec("ShearX", 0.0, 0.3, signed=True),
    OpSpec("ShearY", 0.0, 0.3, signed=True),
    OpSpec("CutoutAbs", 0, 40, pixels=True),
    OpSpec("TranslateXabs", 0.0, 100, pixels=True, signed=True),
    OpSpec("TranslateYAbs", 0.0, 100, pixels=True, signed=True),
)
OP_NAMES = tuple(op.name for op in OPS)
OP_INDEX = {name: i for i, name in enumerate(OP_NAMES)}


def op_value(index: int, m: float, image_size: int) -> float:
    """Magnitude of op `index` at RandAugment level m (unsigned; pixel lengths scaled to image_size)."""
    op = OPS[index]
    v = m / 30 * (op.hi - op.lo) + op.lo
    return v * image_size / 32 if op.pixels else v


def posterize_bits(value: float) -> int:
    """Reference Posterize keeps int(value) bits; 0 (m < 7.5) is clamped to 1 bit (docs/recipe.md)."""
    return min(8, max(1, int(value)))
