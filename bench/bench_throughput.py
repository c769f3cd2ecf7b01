"""Training throughput of the reference recipe: lddyn's device-side pipeline against a per-image
DataLoader pipeline with PIL augmentation, on synthetic CIFAR-shaped data.

Recipe (docs/recipe.md): WRN-28-2, 10 classes, 32 labeled + 64 unlabeled images per
step, one weak and two strong views per unlabeled image (RandAugment(3, 4), crop, flip, Cutout 16),
a no-grad train-mode forward of the weak views for the soft pseudo-labels, three separate
training forwards (labeled, strong 1, strong 2), Adam 0.0015 and the EMA step.

* lddyn: ``Trainer.train_step`` plus the EMA callback on the reference preset (FixMatch, no
  debiasing method), images resident on the training device, views drawn batched on tensors.
* per-image: a torch ``DataLoader`` over uint8 HWC arrays whose items are made one by one with
  PIL (bench_augment.py's RandAugment, crop, flip, normalise, Cutout), ``--workers`` processes,
  feeding the same model, loss, Adam and EMA written plainly here.

Both use the same threads, alternate in rounds so that they see the same machine load, and report
iterations/s (median over rounds, best in brackets).

    python bench/bench_throughput.py [--iters 10] [--rounds 2] [--workers 1] [--threads N] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from bench_augment import pil_strong, pil_weak
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lddyn.config import load_config
from lddyn.data.sets import SSLData
from lddyn.models import build_model
from lddyn.train.callbacks import EMA
from lddyn.train.device import resolve_device
from lddyn.train.trainer import Trainer

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
B, MU, CLASSES = 32, 2, 10


def synthetic(n_lb: int = 2000, n_ulb: int = 6000, n_test: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Random CIFAR-shaped uint8 images (N, 32, 32, 3) and labels."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("lb", n_lb), ("ulb", n_ulb), ("test", n_test)):
        out[f"x_{name}"] = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        out[f"y_{name}"] = rng.integers(0, CLASSES, n)
    return out


# --- lddyn --------------------------------------------------------------------------------------------------


def lddyn_step_fn(raw: dict[str, np.ndarray], device: str, run_dir: str):  # noqa: ANN201
    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).float().div(255).contiguous()

    t = torch.from_numpy
    data = SSLData("synthetic", images(raw["x_lb"]), t(raw["y_lb"]), images(raw["x_ulb"]), t(raw["y_ulb"]),
                   images(raw["x_test"]), t(raw["y_test"]), CLASSES, MEAN, STD,
                   torch.arange(len(raw["y_lb"])), torch.arange(len(raw["y_ulb"])))  # fmt: skip
    cfg = load_config("reference", ["methods=", f"train.device={device}"])
    trainer = Trainer(cfg, run_dir, [EMA()], data=data)

    def step() -> None:
        ctx, terms = trainer.train_step()
        trainer.dispatch("step_end", ctx, terms)

    return step, trainer.device


# --- per-image DataLoader pipeline ----------------------------------------------------------------------


class Labeled(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(pil_weak(Image.fromarray(self.x[i]))), int(self.y[i])


class Unlabeled(Labeled):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        img = Image.fromarray(self.x[i])
        return tuple(torch.from_numpy(a) for a in (pil_weak(img), pil_strong(img), pil_strong(img)))  # type: ignore[return-value]


def forever(loader: DataLoader):  # noqa: ANN201
    while True:
        yield from loader


def per_image_step_fn(raw: dict[str, np.ndarray], device: torch.device, workers: int):  # noqa: ANN201
    torch.manual_seed(0)
    model = build_model("wrn28_2", num_classes=CLASSES, image_shape=(3, 32, 32)).to(device)
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(model.parameters(), lr=0.0015)
    kw = dict(shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0,
              pin_memory=device.type == "cuda")  # fmt: skip
    lb = forever(DataLoader(Labeled(raw["x_lb"], raw["y_lb"]), batch_size=B, **kw))
    ulb = forever(DataLoader(Unlabeled(raw["x_ulb"], raw["y_ulb"]), batch_size=B * MU, **kw))

    def step() -> None:
        x, y = next(lb)
        u_w, u_s1, u_s2 = next(ulb)
        x, y, u_w, u_s1, u_s2 = (t.to(device, non_blocking=True) for t in (x, y, u_w, u_s1, u_s2))
        model.train()
        with torch.no_grad():
            q = torch.softmax(model(u_w)["logits"], -1)
        logits_x, logits_s1, logits_s2 = (model(v)["logits"] for v in (x, u_s1, u_s2))
        loss_u = sum(-(q * F.log_softmax(s, -1)).sum(-1).mean() for s in (logits_s1, logits_s2)) / 2
        loss = F.cross_entropy(logits_x, y) + loss_u
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            student = model.state_dict()
            for k, v in ema.state_dict().items():
                if v.dtype.is_floating_point:
                    v.mul_(0.999).add_(student[k], alpha=0.001)
                    student[k].mul_(1 - 0.04 * 0.0015)

    return step


# --- timing -------------------------------------------------------------------------------------------------


def iterations_per_second(step, iters: int, device: torch.device) -> float:  # noqa: ANN001
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    raw = synthetic()
    with tempfile.TemporaryDirectory() as run_dir:
        per_image = f"per-image PIL DataLoader ({args.workers} workers)"
        fns = {
            "lddyn (device-side)": lddyn_step_fn(raw, args.device, run_dir)[0],
            per_image: per_image_step_fn(raw, device, args.workers),
        }
        for fn in fns.values():
            for _ in range(args.warmup):
                fn()
        rates: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                rates[name].append(iterations_per_second(fn, args.iters, device))
    threads = torch.get_num_threads()
    print(f"device {device}, torch threads {threads}, {args.rounds} rounds x {args.iters} iterations")
    for name, r in rates.items():
        print(f"{name:40s} {statistics.median(r):7.3f} it/s  (best {max(r):.3f})")
    lddyn, per_image = (statistics.median(r) for r in rates.values())
    best = [max(r) for r in rates.values()]
    print(f"{'speed-up':40s} {lddyn / per_image:7.2f}x       (best {best[0] / best[1]:.2f}x)")


if __name__ == "__main__":
    main()
