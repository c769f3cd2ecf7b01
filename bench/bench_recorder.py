"""Cost of the dynamics recorder on the digits default, against unrecorded steps of the same run.

Cases, all on the digits-dytrim preset with every callback but the progress display:

* ``unrecorded``: the recorder off;
* ``grouped, every step``: the grouped decomposition (term x source class x correctness x status)
  at every step, at one test image per class plus the baseline image(s), without the realised
  update, in the default ``record.groups=decoupled`` mode (the issue's target: <= 1x an unrecorded
  step, i.e. a recorded run <= 2x as long);
* ``grouped (exact), every step``: the same with ``record.groups=exact`` (one backward per group
  through the training graph);
* ``grouped + realised, every step``: the same plus the optimiser-preconditioned prediction and
  the measured change (two extra forwards at the observations);
* ``grouped every step + per-sample every 50``: the grouped case plus, every 50 steps, exact
  per-sample contributions of *every* sample of the batch (one gradient per sample through the
  training graph, and the eval-mode eNTK K(x_o, x_b) G_b); the target is <= 50 % on average over
  the grouped case.

The cases alternate over the repeats so machine load hits them alike; each keeps its fastest
repeat. Ratios are against the unrecorded (or grouped) case of this same run. torch's OpenMP
defaults apply unless ``OMP_WAIT_POLICY`` is set: on a machine shared with busy neighbours,
``OMP_WAIT_POLICY=PASSIVE`` avoids slow-downs of up to tens of times; on an idle machine it makes
the recorder's many small operations about 2x slower (each waits for sleeping workers), so the
recorded numbers use the defaults and print the policy.

    python bench/bench_recorder.py [--steps 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from lddyn.config import RunConfig, load_config
from lddyn.dynamics.recorder import DynamicsRecorder
from lddyn.losses import LossTerm
from lddyn.train.events import Callback
from lddyn.train.run import build_callbacks
from lddyn.train.trainer import Trainer

PER_SAMPLE_EVERY = 50


class WholeBatchTracker(DynamicsRecorder):
    """Tracks every sample of the batch (not just a tracked subset) at per-sample steps."""

    def _track(self, step: int, terms: list[LossTerm]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if step % PER_SAMPLE_EVERY:
            return {}, {}
        track = {t.name: torch.arange(len(t.targets)) for t in terms}
        inputs = {t.name: t.inputs for t in terms if t.inputs is not None}
        return track, (inputs if len(inputs) == len(track) else {})


@contextmanager
def started_trainer(cfg: RunConfig, callbacks: list[Callback]) -> Iterator[Trainer]:
    """A trainer in a temporary run folder, its recorder quiet, past ``train_start``."""
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, callbacks)
        for c in callbacks:
            if isinstance(c, DynamicsRecorder):
                c.console.quiet = True
        trainer.dispatch("train_start")
        yield trainer


def steps_per_second(overrides: list[str], steps: int, whole_batch: bool = False) -> float:
    cfg = load_config(
        "digits-dytrim", [f"train.steps={steps + 10}", "train.checkpoint_every=100000", *overrides]
    )
    callbacks = build_callbacks(cfg, progress=False)
    if whole_batch:
        callbacks = [WholeBatchTracker() if isinstance(c, DynamicsRecorder) else c for c in callbacks]
    with started_trainer(cfg, callbacks) as trainer:
        for _ in range(10):  # warm-up: first touches of memory, oneDNN primitive creation
            ctx, terms = trainer.train_step()
            trainer.dispatch("step_end", ctx, terms)
        start = time.perf_counter()
        while not trainer.finished:
            ctx, terms = trainer.train_step()
            trainer.dispatch("step_end", ctx, terms)
        return (trainer.state.step - 10) / (time.perf_counter() - start)


RECORD = ["record.dynamics=true", "record.every=1", "record.obs_per_class=1", "record.baseline=true"]
CASES: dict[str, tuple[list[str], bool]] = {
    "unrecorded": (["record.dynamics=false"], False),
    "grouped, every step": ([*RECORD, "record.realised=false", "record.groups=decoupled"], False),
    "grouped (exact), every step": ([*RECORD, "record.realised=false", "record.groups=exact"], False),
    "grouped + realised, every step": ([*RECORD, "record.realised=true"], False),
    f"grouped every step + per-sample every {PER_SAMPLE_EVERY}": (
        [*RECORD, "record.realised=false", f"record.per_sample_every={PER_SAMPLE_EVERY}"],
        True,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per case (after 10 warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.steps % PER_SAMPLE_EVERY:
        parser.error(f"--steps must be a multiple of {PER_SAMPLE_EVERY}, got {args.steps}")
    best = dict.fromkeys(CASES, 0.0)
    for _ in range(args.repeats):
        for name, (overrides, whole_batch) in CASES.items():
            best[name] = max(best[name], steps_per_second(overrides, args.steps, whole_batch))
    base, grouped = best["unrecorded"], best["grouped, every step"]
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"digits-dytrim, {args.steps} timed steps, best of {args.repeats}, torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPU cores, load average at the end {load}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}\n"
    )
    print("| case | steps/s | ms/step | recorder cost / unrecorded step | over grouped |")
    print("|---|---|---|---|---|")
    for name, rate in best.items():
        cost = "" if name == "unrecorded" else f"{base / rate - 1:.2f}x"
        over = "" if name in ("unrecorded", "grouped, every step") else f"{100 * (grouped / rate - 1):+.0f} %"
        print(f"| {name} | {rate:.1f} | {1000 / rate:.1f} | {cost} | {over} |")


if __name__ == "__main__":
    main()
