"""Throughput of the batched tensor augmentation against a per-image PIL pipeline, on the same CPU cores.

At CIFAR size (448 images of 32x32x3, the unlabeled share of a 64 + 7*64 FixMatch batch) it times one
weak and one strong view of every image: lddyn's `Augmenter.weak` / `Augmenter.strong` on a float CPU
tensor, and the reference recipe written image by image with PIL (RandAugment(3, 4) from ildoonet's
op list, RandomCrop(32, padding=4), horizontal flip, ToTensor via numpy, Normalize, Cutout 16), from
a uint8 array to a stacked batch tensor. Both run in this process with torch's default thread count
(override with --threads); the two pipelines alternate so that they see the same machine load. The
median over the repeats is reported, with the best in brackets (the speed-up row: ratio of medians,
ratio of bests); on a shared machine the best is the steadier figure.

    python bench/bench_augment.py [--repeats 15] [--batch 448] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

import numpy as np
import PIL.ImageDraw
import PIL.ImageEnhance
import PIL.ImageOps
import torch
from PIL import Image

from lddyn.data.augment import AugmentConfig, Augmenter

MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
STD = np.array([0.2471, 0.2435, 0.2616], dtype=np.float32)


# --- the per-image PIL reference -------------------------------------------------------------------------


def _signed(v: float) -> float:
    return -v if random.random() > 0.5 else v


def _affine(img: Image.Image, data: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, data)


def _solarize_add(img: Image.Image, v: float) -> Image.Image:
    arr = np.clip(np.asarray(img).astype(np.int64) + v, 0, 255).astype(np.uint8)
    return PIL.ImageOps.solarize(Image.fromarray(arr), 128)


def _cutout_abs(img: Image.Image, v: float) -> Image.Image:
    w, h = img.size
    x0, y0 = int(max(0, np.random.uniform(w) - v / 2)), int(max(0, np.random.uniform(h) - v / 2))
    img = img.copy()
    PIL.ImageDraw.Draw(img).rectangle((x0, y0, min(w, x0 + v), min(h, y0 + v)), (125, 123, 114))
    return img


PIL_OPS: list[tuple[Callable[[Image.Image, float], Image.Image], float, float]] = [
    (lambda img, v: PIL.ImageOps.autocontrast(img), 0, 1),
    (lambda img, v: PIL.ImageOps.equalize(img), 0, 1),
    (lambda img, v: PIL.ImageOps.invert(img), 0, 1),
    (lambda img, v: img.rotate(_signed(v)), 0, 30),
    (lambda img, v: PIL.ImageOps.posterize(img, max(1, int(v))), 0, 4),  # Pillow >= 11 rejects 0 bits
    (lambda img, v: PIL.ImageOps.solarize(img, v), 0, 256),
    (_solarize_add, 0, 110),
    (lambda img, v: PIL.ImageEnhance.Color(img).enhance(v), 0.1, 1.9),
    (lambda img, v: PIL.ImageEnhance.Contrast(img).enhance(v), 0.1, 1.9),
    (lambda img, v: PIL.ImageEnhance.Brightness(img).enhance(v), 0.1, 1.9),
    (lambda img, v: PIL.ImageEnhance.Sharpness(img).enhance(v), 0.1, 1.9),
    (lambda img, v: _affine(img, (1, _signed(v), 0, 0, 1, 0)), 0.0, 0.3),
    (lambda img, v: _affine(img, (1, 0, 0, _signed(v), 1, 0)), 0.0, 0.3),
    (_cutout_abs, 0, 40),
    (lambda img, v: _affine(img, (1, 0, _signed(v), 0, 1, 0)), 0.0, 100),
    (lambda img, v: _affine(img, (1, 0, 0, 0, 1, _signed(v))), 0.0, 100),
]


def pil_randaugment(img: Image.Image, n: int = 3, m: float = 4.0) -> Image.Image:
    for op, lo, hi in random.choices(PIL_OPS, k=n):
        img = op(img, m / 30 * (hi - lo) + lo)
    return img


def pil_weak(img: Image.Image, pad: int = 4) -> np.ndarray:
    """RandomCrop(padding=pad) + flip + ToTensor + Normalize, as a (C, H, W) float32 array."""
    w, h = img.size
    top, left = random.randint(0, 2 * pad), random.randint(0, 2 * pad)
    img = PIL.ImageOps.expand(img, pad, 0).crop((left, top, left + w, top + h))
    if random.random() < 0.5:
        img = PIL.ImageOps.mirror(img)
    arr = (np.asarray(img, dtype=np.float32) / 255 - MEAN) / STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def pil_strong(img: Image.Image, length: int = 16) -> np.ndarray:
    arr = pil_weak(pil_randaugment(img))
    h, w = arr.shape[1:]
    y, x = np.random.randint(h), np.random.randint(w)
    arr[:, max(0, y - length // 2) : y + length // 2, max(0, x - length // 2) : x + length // 2] = 0
    return arr


def pil_views(data: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    images = [Image.fromarray(a) for a in data]
    weak = torch.from_numpy(np.stack([pil_weak(img) for img in images]))
    strong = torch.from_numpy(np.stack([pil_strong(img) for img in images]))
    return weak, strong


# --- timing ----------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(batch: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(data).permute(0, 3, 1, 2).float().div(255).contiguous()
    aug = Augmenter(AugmentConfig(32, tuple(MEAN.tolist()), tuple(STD.tolist())))
    gen = torch.Generator().manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    pil_one = {
        "weak": lambda: [pil_weak(Image.fromarray(a)) for a in data],
        "strong": lambda: [pil_strong(Image.fromarray(a)) for a in data],
        "weak + strong": lambda: pil_views(data),
    }
    ours = {
        "weak": lambda: aug.weak(x, gen),
        "strong": lambda: aug.strong(x, gen),
        "weak + strong": lambda: (aug.weak(x, gen), aug.strong(x, gen)),
    }
    times: dict[str, dict[str, list[float]]] = {"PIL": {}, "lddyn": {}}
    for name in ours:
        for _ in range(2):  # warm-up
            pil_one[name](), ours[name]()
        times["PIL"][name], times["lddyn"][name] = [], []
        for _ in range(repeats):
            times["PIL"][name].append(timed(pil_one[name]))
            times["lddyn"][name].append(timed(ours[name]))
    return times


def report(times: dict[str, dict[str, list[float]]], batch: int) -> None:
    cols = list(times["PIL"])

    def rate(ts: list[float]) -> str:
        return f"{batch / statistics.median(ts):,.0f} ({batch / min(ts):,.0f})"

    def speedup(c: str) -> str:
        pil, ours = times["PIL"][c], times["lddyn"][c]
        return f"{statistics.median(pil) / statistics.median(ours):.1f}x ({min(pil) / min(ours):.1f}x)"

    print(
        f"images/s, median (best) of {len(times['PIL'][cols[0]])} repeats, batch {batch}, 32x32x3, "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPU cores\n"
    )
    print("| pipeline | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    print("| per-image PIL | " + " | ".join(rate(times["PIL"][c]) for c in cols) + " |")
    print("| lddyn batched tensor | " + " | ".join(rate(times["lddyn"][c]) for c in cols) + " |")
    print("| speed-up | " + " | ".join(speedup(c) for c in cols) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report(run(args.batch, args.repeats), args.batch)


if __name__ == "__main__":
    main()
