"""Training-step throughput on the digits default with and without the baseline probe, and batched
augmentation throughput against a per-image PIL pipeline (bench_augment.py), from one run.

Prints steps/s of the digits-dytrim preset (all callbacks, no progress display) without the
probe, with the probe at its default period and with the probe at every step, and the model's own
compute for one step (no-grad weak forward of muB images, forward/backward of the labeled batch and
the strong views, Adam) as the reference. Ratios are against numbers measured in this same run.

The augmentation part is bench_augment.py's table (CIFAR size, 32x32, batch 448).

    python bench/bench_train.py [--steps 300] [--repeats 3] [--aug-repeats 15]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from bench_augment import report as augment_report
from bench_augment import run as augment_run

from lddyn.config import load_config
from lddyn.train.run import build_callbacks
from lddyn.train.trainer import Trainer


def steps_per_second(overrides: list[str], steps: int) -> float:
    cfg = load_config("digits-dytrim", [f"train.steps={steps}", "train.checkpoint_every=100000", *overrides])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, build_callbacks(cfg, progress=False))
        trainer.dispatch("train_start")
        for _ in range(10):  # warm-up
            ctx, terms = trainer.train_step()
            trainer.dispatch("step_end", ctx, terms)
        start = time.perf_counter()
        while not trainer.finished:
            ctx, terms = trainer.train_step()
            trainer.dispatch("step_end", ctx, terms)
        return (trainer.state.step - 10) / (time.perf_counter() - start)


def model_only_steps_per_second(steps: int) -> float:
    cfg = load_config("digits-dytrim")
    trainer = Trainer(cfg, tempfile.mkdtemp())
    model, opt = trainer.model, trainer.optimizer
    b, u, s = cfg.ssl.batch_size, cfg.ssl.batch_size * cfg.ssl.uratio, cfg.ssl.num_strong
    x = torch.randn(b, *trainer.data.image_shape)
    xu = torch.randn(u, *trainer.data.image_shape)
    start = 0.0
    for i in range(steps + 10):
        if i == 10:
            start = time.perf_counter()
        with torch.no_grad():
            model(xu)
        loss = model(x)["logits"].logsumexp(-1).mean()
        for _ in range(s):
            loss = loss + model(xu)["logits"].logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--aug-repeats", type=int, default=15)
    parser.add_argument("--aug-batch", type=int, default=448)
    args = parser.parse_args()
    cases = {
        "no probe": ["probe.baseline=false"],
        "probe every 25": ["probe.baseline=true", "probe.every=25"],
        "probe every step": ["probe.baseline=true", "probe.every=1"],
    }
    best = {name: 0.0 for name in cases}
    model_only = 0.0
    for _ in range(args.repeats):  # interleave the cases so drift hits them alike
        for name, overrides in cases.items():
            best[name] = max(best[name], steps_per_second(overrides, args.steps))
        model_only = max(model_only, model_only_steps_per_second(args.steps))
    base = best["no probe"]
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{args.steps} steps, best of {args.repeats}"
    )
    print("| case | steps/s | ms/step | probe cost per step |")
    print("|---|---|---|---|")
    for name, rate in best.items():
        cost = "" if name == "no probe" else f"{100 * (base / rate - 1):+.1f} %"
        print(f"| {name} | {rate:.1f} | {1000 / rate:.1f} | {cost} |")
    print(f"| model compute only | {model_only:.1f} | {1000 / model_only:.1f} | |")
    print(f"whole step / model compute: {model_only / base:.2f}x\n")
    augment_report(augment_run(args.aug_batch, args.aug_repeats), args.aug_batch)


if __name__ == "__main__":
    main()
