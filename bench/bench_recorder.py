"""Cost of the dynamics recorder against unrecorded steps of the same run, measured in one run.

``--setting digits`` (default): the digits-dytrim preset through lddyn's trainer, every callback
but the progress display. Cases:

* ``unrecorded``: the recorder off;
* ``recorded every step``: the grouped decomposition (term x source class x correctness x status,
  decoupled groups plus the BatchNorm coupling) with the update split (``update_logp``), measured
  change, drift and residual, at every step, at one test image per class plus the two baseline
  images (target: cost <= 1.6x an unrecorded step);
* ``recorded every step (exact groups)``: the same with ``record.groups=exact``;
* ``default schedule (every 10)``: the digits default as it runs (target: <= 10 % of a run).

``--setting reference``: the reference recipe's shapes in a plain loop of one's own through the
public ``Recorder``: WRN-28-2, Adam, 32 labeled + 2 x 64 strong-view CIFAR-shaped synthetic images
as three train-mode forwards (the weak view is a no-grad forward), observed at 10 test images and
2 baseline images; unrecorded against recorded at every step.

The cost column is (recorded - unrecorded) / unrecorded time per step. Cases alternate over the
repeats so machine load hits them alike; each keeps its fastest repeat. torch's OpenMP defaults
apply (the policy is printed).

    python bench/bench_recorder.py [--steps 100] [--repeats 3]
    python bench/bench_recorder.py --breakdown [--steps 30]     # where a recorded step's time goes
    python bench/bench_recorder.py --setting reference --breakdown [--steps 3]
    python bench/bench_recorder.py --per-step [--steps 200]     # recorded and other steps, one by one
    python bench/bench_recorder.py --setting reference [--steps 5] [--device cuda]

``--per-step`` times every step of one run per schedule alone and prints the medians of recorded
and other steps: the default schedule's cost without the noise of a difference of two run times.

``--breakdown`` times the recorder's phases inside recorded steps of the setting (one thread, CPU
time of this process), next to an unrecorded step: the J_o of the observations (one forward and C
backwards, then the layer blocks), the decoupled group gradients (the extra backward and the
per-layer sums), the update split, the products with J_o, the measuring forwards and the rows.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from lddyn.config import load_config
from lddyn.dynamics import ObservationSet, Recorder, contract, groups, jacobian, recorder
from lddyn.models import build_model
from lddyn.sinks.parquet import ParquetSink
from lddyn.train.callbacks.dynamics import DynamicsRecorder, is_recorded
from lddyn.train.run import build_callbacks
from lddyn.train.trainer import Trainer

RECORD = ["record.dynamics=true", "record.obs_per_class=1", "record.baseline=true"]
CASES: dict[str, list[str]] = {
    "unrecorded": ["record.dynamics=false"],
    "recorded every step": [*RECORD, "record.every=1"],
    "recorded every step (exact groups)": [*RECORD, "record.every=1", "record.groups=exact"],
    "default schedule (every 10)": [*RECORD, "record.every=10"],
}


def digits_steps_per_second(
    overrides: list[str],
    steps: int,
    clock=time.perf_counter,
    warm=lambda: None,  # noqa: ANN001
) -> float:
    cfg = load_config(
        "digits-dytrim", [f"train.steps={steps + 10}", "train.checkpoint_every=100000", *overrides]
    )
    callbacks = build_callbacks(cfg, progress=False)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, callbacks)
        for c in callbacks:
            if isinstance(c, DynamicsRecorder):
                c.console.quiet = True
        trainer.dispatch("train_start")
        for _ in range(10):  # warm-up: first touches of memory, oneDNN primitive creation
            trainer.dispatch("step_end", *trainer.train_step())
        warm()
        start = clock()
        while not trainer.finished:
            trainer.dispatch("step_end", *trainer.train_step())
        return (trainer.state.step - 10) / (clock() - start)


def step_times(overrides: list[str], steps: int) -> tuple[list[float], list[bool]]:
    """Wall ms of each step after 10 warm-up steps, and whether the recorder recorded it."""
    schedule = [f"train.steps={steps + 10}", "train.checkpoint_every=100000"]
    cfg = load_config("digits-dytrim", [*schedule, *overrides])
    callbacks = build_callbacks(cfg, progress=False)
    times, recorded = [], []
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, callbacks)
        dyn = next((c for c in callbacks if isinstance(c, DynamicsRecorder)), None)
        if dyn is not None:
            dyn.console.quiet = True
        trainer.dispatch("train_start")
        while not trainer.finished:
            start = time.perf_counter()
            trainer.dispatch("step_end", *trainer.train_step())
            if trainer.state.step > 10 and not trainer.finished:  # the last step flushes and saves
                times.append(1000 * (time.perf_counter() - start))
                recorded.append(dyn is not None and is_recorded(dyn.cfg, trainer.state.step))
    return times, recorded


def per_step(steps: int) -> None:
    """Median wall ms of recorded and unrecorded steps, each schedule in one run."""
    print(f"digits-dytrim, {steps} steps after 10 warm-up steps, torch threads {torch.get_num_threads()}\n")
    print("| run | median ms, recorded steps | median ms, other steps |\n|---|---|---|")
    for name in ("unrecorded", "recorded every step", "default schedule (every 10)"):
        times, rec = step_times(CASES[name], steps)
        on = [t for t, r in zip(times, rec, strict=True) if r]
        off = [t for t, r in zip(times, rec, strict=True) if not r]
        cell = [f"{statistics.median(v):.1f}" if v else "" for v in (on, off)]
        print(f"| {name} | {cell[0]} | {cell[1]} |")


PHASES = {  # label -> (module, attribute) of a recorder phase
    "J_o: forward and C backwards": (jacobian, "site_blocks"),
    "J_o: dense blocks formed": (contract.LazyJac, "full"),
    "J_o: per-channel factor tests": (jacobian, "_channel_factors"),
    "J_o: all of it": (recorder, "ObservationJacobian"),
    "groups: per-group weight gradients": (groups, "_per_group_weight"),
    "groups: per-layer sums": (groups, "_layer_sums"),
    "groups: all of it (extra backward included)": (recorder, "decoupled_sums"),
    "update split": (recorder, "split_update"),
    "products with J_o": (jacobian.ObservationJacobian, "apply"),
    "measuring forwards": (recorder, "observed_logits"),
    "rows (tidy frame)": (recorder.tidy, "step_frame"),
    "rows written to parquet (digits; pyarrow's threads included)": (ParquetSink, "flush"),
}


def breakdown(steps: int, setting: str) -> None:
    """CPU ms per recorded step of each phase (nested phases are part of their parent's time)."""
    torch.set_num_threads(1)
    spent: dict[str, float] = collections.defaultdict(float)
    for label, (owner, name) in PHASES.items():
        original = getattr(owner, name)

        def timed(*args, _f=original, _label=label, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.process_time()
            try:
                return _f(*args, **kwargs)
            finally:
                spent[_label] += time.process_time() - start

        setattr(owner, name, functools.wraps(original)(timed))
    per_step = {}
    for name, overrides in (("unrecorded", CASES["unrecorded"]), ("recorded", CASES["recorded every step"])):
        clock, warm = time.process_time, spent.clear
        if setting == "digits":
            rate = digits_steps_per_second([*overrides, "train.threads=1"], steps, clock, warm)
        else:
            rate = reference_steps_per_second(name == "recorded", steps, "cpu", clock, warm)
        per_step[name] = 1 / rate
    what = "digits-dytrim" if setting == "digits" else "WRN-28-2, 32 + 2 x 64 images"
    warm = 10 if setting == "digits" else 2
    print(f"{what}, {steps} timed steps after {warm} warm-up steps, one thread, CPU ms per step\n")
    print("| part | ms / step | x unrecorded step |\n|---|---|---|")
    base = per_step["unrecorded"]
    for label, value in [("unrecorded step", base), ("recorded step", per_step["recorded"])] + [
        (label, spent[label] / steps) for label in PHASES
    ]:
        print(f"| {label} | {1000 * value:.1f} | {value / base:.2f} |")


def reference_steps_per_second(
    recorded: bool,
    steps: int,
    device: str,
    clock=time.perf_counter,
    warm=lambda: None,  # noqa: ANN001
) -> float:
    """WRN-28-2 under Adam in a plain loop; the Recorder at every step when ``recorded``."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model("wrn28_2", num_classes=10, image_shape=(3, 32, 32)).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.002)
    x_test, base = torch.randn(10, 3, 32, 32, device=dev), torch.zeros(2, 3, 32, 32, device=dev)
    base[1] += 1.0
    sets = [ObservationSet("test", x_test, labels=torch.arange(10)), ObservationSet("baseline", base, "own")]
    rec = Recorder(model, opt, sets, by=("term", "source_class")) if recorded else None

    def step() -> None:
        x, y = torch.randn(32, 3, 32, 32, device=dev), torch.randint(0, 10, (32,), device=dev)
        u = torch.randn(64, 3, 32, 32, device=dev)
        with torch.no_grad():
            pseudo = model(u)["logits"].argmax(-1)  # the weak view
        z = model(x)["logits"]
        zs = torch.cat([model(u + 0.1 * torch.randn_like(u))["logits"] for _ in range(2)])
        l_sup = F.cross_entropy(z, y, reduction="none") / len(y)
        l_uns = F.cross_entropy(zs, pseudo.repeat(2), reduction="none") / len(zs)
        if block is not None:
            block.term("sup", logits=z, losses=l_sup, source_class=y)
            block.term("unsup", logits=zs, losses=l_uns, source_class=pseudo.repeat(2))
        opt.zero_grad()
        (l_sup.sum() + l_uns.sum()).backward()
        opt.step()

    def timed(n: int) -> float:
        nonlocal block
        start = clock()
        for _ in range(n):
            block = rec.step().__enter__() if rec is not None else None
            step()
            if block is not None:
                block.__exit__(None, None, None)
                block.rows()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return clock() - start

    block = None
    timed(2)  # warm-up
    warm()
    return steps / timed(steps)


def table(best: dict[str, float], header: str) -> None:
    base = best["unrecorded"]
    print(header + "\n")
    print("| case | steps/s | ms/step | recorder cost / unrecorded step |")
    print("|---|---|---|---|")
    for name, rate in best.items():
        cost = "" if name == "unrecorded" else f"{base / rate - 1:.2f}x"
        print(f"| {name} | {rate:.2f} | {1000 / rate:.1f} | {cost} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=("digits", "reference"), default="digits")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per case (100 digits, 5 reference)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="reference setting: cpu | cuda")
    parser.add_argument("--breakdown", action="store_true", help="time the recorder's phases")
    parser.add_argument("--per-step", action="store_true", help="digits: each step timed alone")
    args = parser.parse_args()
    if args.per_step:
        per_step(args.steps or 200)
        return
    if args.breakdown:
        breakdown(args.steps or (30 if args.setting == "digits" else 3), args.setting)
        return
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    env = (
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPU cores, load average {load}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    if args.setting == "digits":
        steps = args.steps or 100
        best = dict.fromkeys(CASES, 0.0)
        for _ in range(args.repeats):
            for name, overrides in CASES.items():
                best[name] = max(best[name], digits_steps_per_second(overrides, steps))
        table(best, f"digits-dytrim, {steps} timed steps, best of {args.repeats}, {env}")
        return
    steps = args.steps or 5
    best = {"unrecorded": 0.0, "recorded every step": 0.0}
    for _ in range(args.repeats):
        for name in best:
            rate = reference_steps_per_second(name != "unrecorded", steps, args.device)
            best[name] = max(best[name], rate)
    table(
        best,
        f"WRN-28-2, 32 + 2 x 64 images, Adam, {steps} timed steps, best of {args.repeats}, "
        f"{args.device}, {env}",
    )


if __name__ == "__main__":
    main()
