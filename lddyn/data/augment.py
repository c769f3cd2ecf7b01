"""Weak and strong views of the FixMatch reference recipe, batched on tensors on any device.

Weak = RandomCrop(pad, zero fill) + horizontal flip + Normalize; strong = RandAugment(n, m) on the
[0, 1] image, then the weak pipeline, then Cutout on the normalised tensor (filled with 0, i.e. the
dataset mean). All draws come from the caller's CPU generator, up front and in a fixed order, so a
view is a pure function of (images, generator state) on every device and a resumed run replays it.
No step loops over images: RandAugment runs one batched call per (position, op group).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lddyn.data import randaugment as ra
from lddyn.data.randaugment import GREY, OP_INDEX, OPS, border_index, box_weight, pad_border, take

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "RandAugmentPlan",
    "apply_plan",
    "crop_flip",
    "crop_index",
    "cutout",
    "cutout_weight",
    "draw_plan",
]


@dataclass(frozen=True)
class AugmentConfig:
    """One dataset's augmentation; sizes in pixels default to the CIFAR recipe scaled to image_size."""

    image_size: int  # H == W of the stored images
    mean: tuple[float, ...]  # per channel, for normalisation
    std: tuple[float, ...]
    pad: int | None = None  # random-crop padding; None => round(4 * image_size / 32), at least 1
    flip: bool = True  # horizontal flip with p = 0.5
    ra_n: int = 3  # RandAugment ops per image, chosen with replacement among 16
    ra_m: float = 4.0  # magnitude on the 0..30 scale
    cutout: int | None = None  # Cutout side after normalisation; None => round(16 * image_size / 32)
    fill: tuple[float, ...] | None = None  # CutoutAbs fill in [0, 1]; None => (125, 123, 114) / 255


# --- RandAugment(n, m) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandAugmentPlan:
    """All random draws of RandAugment for a batch, taken up front from one CPU generator."""

    ops: Tensor  # (N, n) indices into randaugment.OPS, chosen with replacement
    sign: Tensor  # (N, n) +-1 (float64): the reference negates signed values with p = 0.5
    centre: Tensor  # (N, n, 2) uniform [0, 1) draws (float64) for CutoutAbs centres (x, y)


def draw_plan(num: int, n: int, generator: torch.Generator) -> RandAugmentPlan:
    """Draw the op choices, signs and CutoutAbs centres of `num` images, n ops each."""
    ops = torch.randint(0, len(OPS), (num, n), generator=generator)
    sign = torch.where(torch.rand(num, n, generator=generator, dtype=torch.float64) > 0.5, -1.0, 1.0)
    return RandAugmentPlan(ops, sign, torch.rand(num, n, 2, generator=generator, dtype=torch.float64))


@dataclass(frozen=True)
class _Params:
    """Parameters of every (image, position) of a plan, computed once, vectorised, on the CPU."""

    value: list[float]  # magnitude of each op kind
    point: Tensor  # (N, n, 3) scale, shift, threshold of the fused pointwise ops
    affine: Tensor  # (N, n, 6) PIL fixed-point coefficients of the geometric ops
    box: Tensor  # (N, n, 4) CutoutAbs bounds y0, y1, x0, x1
    fill: Sequence[float]


_POINTWISE = ("Invert", "Solarize", "SolarizeAdd", "Brightness")  # clamp(s x + b), then solarize at t
_AFFINE = ("Rotate", "ShearX", "ShearY", "TranslateXabs", "TranslateYAbs")


def _pointwise_table(value: list[float]) -> Tensor:
    """(16, 3) (scale, shift, threshold) per op; identity for ops outside the pointwise group."""
    table = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64).repeat(len(OPS), 1)
    table[OP_INDEX["Invert"]] = torch.tensor([1.0, 0.0, 0.0])
    table[OP_INDEX["Solarize"], 2] = value[OP_INDEX["Solarize"]] / 255
    table[OP_INDEX["SolarizeAdd"]] = torch.tensor([1.0, value[OP_INDEX["SolarizeAdd"]] / 255, 128 / 255])
    table[OP_INDEX["Brightness"], 0] = value[OP_INDEX["Brightness"]]
    return table


def _affine_data(ops: Tensor, v: Tensor, h: int, w: int) -> Tensor:
    """(M, 6) PIL affine data of each entry's geometric op (signed value v); identity for other ops."""
    zero = torch.zeros_like(v)

    def only(name: str) -> Tensor:
        return torch.where(ops == OP_INDEX[name], v, zero)

    data = ra.shear_shift_data(
        len(v), sx=only("ShearX"), sy=only("ShearY"), dx=only("TranslateXabs"), dy=only("TranslateYAbs")
    )
    return torch.where((ops == OP_INDEX["Rotate"]).unsqueeze(1), ra.rotate_data(v, len(v), h, w), data)


def _params(plan: RandAugmentPlan, m: float, h: int, w: int, fill: Sequence[float]) -> _Params:
    num, n = plan.ops.shape
    value = [ra.op_value(k, m, w) for k in range(len(OPS))]
    signed = torch.tensor([op.signed for op in OPS])[plan.ops]
    v = (torch.tensor(value, dtype=torch.float64)[plan.ops] * torch.where(signed, plan.sign, 1.0)).view(-1)
    affine = ra.fixed_point(_affine_data(plan.ops.view(-1), v, h, w)).view(num, n, 6)
    # the reference draws np.random.uniform(w), i.e. low=w, high=1: a centre in (1, w]
    cx = w - (w - 1) * plan.centre[..., 0].reshape(-1)
    cy = h - (h - 1) * plan.centre[..., 1].reshape(-1)
    box = torch.stack(ra.cutout_abs_bounds(num * n, value[OP_INDEX["CutoutAbs"]], cx, cy), 1)
    point = _pointwise_table(value)[plan.ops]
    return _Params(value, point, affine, box.long().view(num, n, 4), fill)


_GroupFn = Callable[[Tensor, Tensor, int, _Params], Tensor]


def _pointwise(x: Tensor, rows: Tensor, pos: int, p: _Params) -> Tensor:
    """Invert, Solarize, SolarizeAdd and Brightness in one pass: clamp(s x + b), inverted where >= t."""
    coef = p.point[rows, pos].to(x.dtype).to(x.device, non_blocking=True).view(-1, 3, 1, 1, 1)
    scale, shift, threshold = coef.unbind(1)
    y = (x * scale).add_(shift).clamp_(0, 1)
    return ra.at_least(y, threshold).sub_(y).abs_()  # solarize(y, threshold)


def _geometric(x: Tensor, rows: Tensor, pos: int, p: _Params) -> Tensor:
    return ra.sample_fixed(x, p.affine[rows, pos])


def _cutout_abs(x: Tensor, rows: Tensor, pos: int, p: _Params) -> Tensor:
    return ra.paint(x, box_weight(*p.box[rows, pos].unbind(1), x), p.fill)


def _single(name: str, fn: Callable[[Tensor, float], Tensor]) -> _GroupFn:
    """A group of one op kind whose only parameter is its (shared) magnitude."""
    k = OP_INDEX[name]
    return lambda x, rows, pos, p: fn(x, p.value[k])


# each group runs as one batched call per position; the five geometric ops share one resampling
_GROUPS: tuple[tuple[tuple[str, ...], _GroupFn], ...] = (
    (_POINTWISE, _pointwise),
    (_AFFINE, _geometric),
    (("CutoutAbs",), _cutout_abs),
    (("AutoContrast",), _single("AutoContrast", lambda x, v: ra.autocontrast(x))),
    (("Equalize",), _single("Equalize", lambda x, v: ra.equalize(x))),
    (("Posterize",), _single("Posterize", lambda x, v: ra.posterize(x, ra.posterize_bits(v)))),
    (("Color",), _single("Color", ra.color)),
    (("Contrast",), _single("Contrast", ra.contrast)),
    (("Sharpness",), _single("Sharpness", ra.sharpness)),
)
_GROUP_OF = torch.tensor([next(g for g, (names, _) in enumerate(_GROUPS) if op.name in names) for op in OPS])


def apply_plan(x: Tensor, plan: RandAugmentPlan, m: float, fill: Sequence[float] = GREY) -> Tensor:
    """Apply each image's ops in drawn order with one batched call per (position, op group).

    At each position the batch is reordered so that images of one group are contiguous (slices are
    views); `order` tracks which image sits in each row and is undone once at the end. Two buffers
    are reused across positions: fresh large allocations cost page faults on CPU.
    """
    if plan.ops.shape[1] == 0:
        return x.clone()
    params = _params(plan, m, x.shape[2], x.shape[3], fill)
    groups = _GROUP_OF[plan.ops]
    order = torch.arange(x.shape[0])
    sorted_, out = torch.empty_like(x), torch.empty_like(x)
    for pos in range(plan.ops.shape[1]):
        perm = torch.argsort(groups[order, pos], stable=True)
        order = order[perm]
        torch.index_select(x if pos == 0 else out, 0, perm.to(x.device, non_blocking=True), out=sorted_)
        torch.cat(_apply_position(sorted_, groups[order, pos], order, pos, params), out=out)
    return torch.index_select(out, 0, torch.argsort(order).to(x.device, non_blocking=True), out=sorted_)


def _apply_position(x: Tensor, group_ids: Tensor, order: Tensor, pos: int, params: _Params) -> list[Tensor]:
    """Rows of x are sorted by op group at `pos`: run each group once on its slice."""
    counts = torch.bincount(group_ids, minlength=len(_GROUPS)).tolist()
    chunks, start = [], 0
    for (_, fn), count in zip(_GROUPS, counts, strict=True):
        if count:
            chunks.append(fn(x[start : start + count], order[start : start + count], pos, params))
        start += count
    return chunks


# --- crop, flip, cutout -------------------------------------------------------------------------------


def crop_index(top: Tensor, left: Tensor, flip: Tensor, pad: int, like: Tensor) -> Tensor:
    """Source of each output pixel of RandomCrop(pad) at (top, left) in 0..2*pad, then a mirror.

    Offsets index the zero-padded image, as torchvision's do; the result indexes pad_border(image),
    whose border stands in for all of the padding.
    """
    (n, _, h, w), device = like.shape, like.device
    top, left, flip = (t.to(device, non_blocking=True).view(n, 1, 1) for t in (top, left, flip))
    cols = torch.arange(w, device=device).view(1, 1, w)
    rows = torch.arange(h, device=device).view(1, h, 1)
    return border_index(rows + top - pad, torch.where(flip, w - 1 - cols, cols) + left - pad, h, w)


def cutout_weight(cy: Tensor, cx: Tensor, size: int, like: Tensor) -> Tensor:
    """(N, 1, H, W) 0/1 box of CutoutDefault(size): rows [cy - size//2, cy + size//2), same for columns."""
    half = size // 2
    return box_weight(cy - half, cy + half, cx - half, cx + half, like)


def crop_flip(x: Tensor, top: Tensor, left: Tensor, flip: Tensor, pad: int) -> Tensor:
    """RandomCrop(H, padding=pad, zero fill) at the given offsets, then mirror where flip is set."""
    return take(pad_border(x), crop_index(top, left, flip, pad, x), *x.shape[2:])


def cutout(x: Tensor, cy: Tensor, cx: Tensor, size: int) -> Tensor:
    """CutoutDefault(size) on a normalised batch: the box centred at (cy, cx) becomes exactly 0."""
    if size <= 0:
        return x
    return torch.addcmul(x, x, cutout_weight(cy, cx, size, x), value=-1)  # x - x * box


class Augmenter:
    """The weak, strong and test transforms of one dataset (see AugmentConfig)."""

    def __init__(self, cfg: AugmentConfig) -> None:
        s = cfg.image_size
        self.cfg = cfg
        self.pad = cfg.pad if cfg.pad is not None else max(1, round(4 * s / 32))
        self.cutout = cfg.cutout if cfg.cutout is not None else round(16 * s / 32)
        self.fill = cfg.fill if cfg.fill is not None else GREY
        self._stats: dict[tuple[torch.device, torch.dtype, int], tuple[Tensor, Tensor]] = {}

    def _affine_norm(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(1, C, 1, 1) tensors -mean/std and 1/std in x's dtype and device (cached): x / std - mean / std."""
        key = (x.device, x.dtype, x.shape[1])
        if key not in self._stats:
            c = x.shape[1]
            if len(self.cfg.mean) < c or len(self.cfg.std) < c:
                raise ValueError(f"mean/std have fewer than the {c} channels of the images")
            inv_std = 1 / torch.tensor(self.cfg.std[:c], dtype=torch.float64)
            bias = -torch.tensor(self.cfg.mean[:c], dtype=torch.float64) * inv_std
            self._stats[key] = tuple(t.to(x.dtype).to(x.device).view(1, c, 1, 1) for t in (bias, inv_std))
        return self._stats[key]

    def normalize(self, x: Tensor) -> Tensor:
        """The test transform: (x - mean) / std per channel."""
        bias, inv_std = self._affine_norm(x)
        return (x * inv_std).add_(bias)

    def _draw_crop(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(top, left, flip) of n images, torchvision's order: crop offsets, then the flip coin."""
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        flip = (torch.rand(n, generator=generator) < 0.5) & self.cfg.flip
        return offsets[:, 0], offsets[:, 1], flip

    @staticmethod
    def _draw_cutout(n: int, h: int, w: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(cy, cx) of n images, CutoutDefault's order: row, then column."""
        return torch.randint(0, h, (n,), generator=generator), torch.randint(0, w, (n,), generator=generator)

    def _crop_normalize(self, x: Tensor, index: Tensor) -> Tensor:
        """normalize(crop(x)) as one gather: the border of pad_border(x), normalised, is normalize(0),
        i.e. the crop's zero padding."""
        c = x.shape[1]
        bias, inv_std = (t.view(1, c, 1) for t in self._affine_norm(x))
        src = pad_border(x).mul_(inv_std).add_(bias)  # in place: cheaper than addcmul on CPU
        return take(src, index, *x.shape[2:])

    def weak(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Crop (zero padding) + flip, then normalise."""
        index = crop_index(*self._draw_crop(x.shape[0], generator), self.pad, x)
        return self._crop_normalize(x, index)

    def strong(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """RandAugment on [0, 1], then crop + flip, normalise, and Cutout (0 = the dataset mean)."""
        n, _, h, w = x.shape
        plan = draw_plan(n, self.cfg.ra_n, generator)
        index = crop_index(*self._draw_crop(n, generator), self.pad, x)
        cy, cx = self._draw_cutout(n, h, w, generator)
        out = self._crop_normalize(apply_plan(x, plan, self.cfg.ra_m, self.fill), index)
        if self.cutout > 0:
            out.addcmul_(out, cutout_weight(cy, cx, self.cutout, out), value=-1)  # x - x * box: exact zeros
        return out
