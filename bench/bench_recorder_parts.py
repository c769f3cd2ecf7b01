"""Where a recorded step's time goes, and the floor of its largest kernels, on the digits default.

One recorded step of the digits-dytrim preset (the setting of ``bench_recorder.py``'s "grouped,
every step" case) is captured; then each part of the recording is re-run alone on the captured
inputs (warm caches: a lower bound for the same part inside a step), next to the unrecorded step
of the same run and to the bare kernels the design cannot avoid at these shapes:

* the decoupled backward needs the input cotangents of the two large convolutions over the
  step's rows (``replay``);
* the per-group weight sums need, at the very least, one full-batch weight gradient of each of
  them (``group sums``; what they cost is one call per group);
* the observation side needs C backward rows per observation (``observation cotangents``) and
  the products of every group direction with the observations' layer factors.

    python bench/bench_recorder_parts.py [--steps 40] [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from bench_recorder import started_trainer
from torch import nn

from lddyn.config import load_config
from lddyn.dynamics import decoupled, recorder
from lddyn.dynamics.functional import frozen_state, trainable_params
from lddyn.dynamics.obs_jacobian import ObservationJacobian
from lddyn.train.run import build_callbacks

backward = torch.ops.aten.convolution_backward

RECORD = ["record.dynamics=true", "record.obs_per_class=1", "record.baseline=true", "record.realised=false"]


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median milliseconds of ``fn`` after a warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def capture_step(steps: int, repeats: int) -> tuple[float, float, dict[str, Any]]:
    """(median unrecorded ms, median recorded ms, captured inputs), alternating recorded steps.

    The replay needs the step's live graph, so it is re-run (and timed) inside one recorded step
    in the middle of the run; that step's own time is one sample of the median.
    """
    cfg = load_config(
        "digits-dytrim",
        [f"train.steps={2 * steps + 10}", "train.checkpoint_every=100000", "record.every=2", *RECORD],
    )
    got: dict[str, Any] = {}
    sums, replay, decompose = decoupled.site_group_sums, decoupled._replay, recorder.decompose_grads
    calls = [0]

    def keep(name: str, fn: Callable) -> Callable:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            got[name] = (args, kwargs)
            return fn(*args, **kwargs)

        return wrapped

    def replay_timed(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] == steps // 2:
            got["replay ms"] = timed(lambda: replay(*args), repeats)
        return replay(*args)

    callbacks = build_callbacks(cfg, progress=False)
    times: dict[int, list[float]] = {0: [], 1: []}
    decoupled.site_group_sums, decoupled._replay = keep("sums", sums), replay_timed
    recorder.decompose_grads = keep("decompose", decompose)
    try:
        with started_trainer(cfg, callbacks) as trainer:
            while not trainer.finished:
                start = time.perf_counter()
                ctx, terms = trainer.train_step()
                trainer.dispatch("step_end", ctx, terms)
                if trainer.state.step > 10:
                    times[trainer.state.step % 2].append(time.perf_counter() - start)
            got["model"] = trainer.model
    finally:
        decoupled.site_group_sums, decoupled._replay, recorder.decompose_grads = sums, replay, decompose
    return 1000 * statistics.median(times[1]), 1000 * statistics.median(times[0]), got


def conv_kernels(model: nn.Module, rows: int, num_groups: int, repeats: int) -> dict[str, float]:
    """Input-cotangent and weight-gradient kernels of the model's two largest convolutions."""
    convs = sorted((m for m in model.modules() if isinstance(m, nn.Conv2d)), key=lambda m: -m.weight.numel())[
        :2
    ]
    side = {convs[0]: 4, convs[1]: 8}  # digits CNN: the last convolution after pooling
    out = {
        "input cotangents": 0.0,
        "weight gradients, one call": 0.0,
        "weight gradients, one call per group": 0.0,
    }
    for m in convs:
        s = side[m]
        a = torch.randn(rows, m.in_channels, s, s)
        d = torch.randn(rows, m.out_channels, s, s)
        args = (d, a, m.weight.detach(), None, m.stride, m.padding, m.dilation, False, [0, 0], 1)
        sizes = [len(c) for c in torch.arange(rows).chunk(num_groups)]
        parts = list(zip(a.split(sizes), d.split(sizes), strict=True))
        out["input cotangents"] += timed(lambda args=args: backward(*args, [True, False, False]), repeats)
        out["weight gradients, one call"] += timed(
            lambda args=args: backward(*args, [False, True, False]), repeats
        )
        out["weight gradients, one call per group"] += timed(
            lambda parts=parts, m=m: [
                torch.nn.grad.conv2d_weight(ai, m.weight.shape, di, 1, 1) for ai, di in parts
            ],
            repeats,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="recorded (and as many unrecorded) steps")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    unrecorded, recorded, got = capture_step(args.steps, args.repeats)
    model = got["model"]
    (s_args, _), (d_args, d_kwargs) = got["sums"], got["decompose"]
    grads, x_obs = d_args[1], d_args[3]
    params, state = d_kwargs["params"], d_kwargs["state"]
    jac = ObservationJacobian(model, x_obs, params, state)
    directions, k = grads.directions()
    rows = sum(len(t) for t in s_args[1][0])
    groups = len(grads.keys)
    parts = {
        "replay (decoupled backward on the training graph)": got["replay ms"],
        "per-group weight sums (all layers)": timed(lambda: decoupled.site_group_sums(*s_args), args.repeats),
        "observation forward + class cotangents + factors": timed(
            lambda: ObservationJacobian(model, x_obs, params, state), args.repeats
        ),
        f"observation products ({k} directions)": timed(
            lambda: jac.apply_stacked(directions, k), args.repeats
        ),
    }
    floor = conv_kernels(model, rows, groups, args.repeats)
    print(
        f"digits-dytrim, torch threads {torch.get_num_threads()}, {rows} training rows, {groups} groups, "
        f"{len(x_obs)} observations, {sum(p.numel() for p in trainable_params(model).values()):,} parameters "
        f"({len(frozen_state(model))} buffers)\n"
    )
    print(f"unrecorded step (median of {args.steps}): {unrecorded:.1f} ms")
    cost = recorded / unrecorded - 1
    print(f"recorded step (median of {args.steps}):   {recorded:.1f} ms  -> recorder cost {cost:.2f}x\n")
    print("| part of a recorded step, re-run alone | ms | / unrecorded step |")
    print("|---|---|---|")
    for name, ms in parts.items():
        print(f"| {name} | {ms:.1f} | {ms / unrecorded:.2f} |")
    total = sum(parts.values())
    print(f"| sum of the parts | {total:.1f} | {total / unrecorded:.2f} |\n")
    print("| bare kernel, two largest convolutions | ms |")
    print("|---|---|")
    for name, ms in floor.items():
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
