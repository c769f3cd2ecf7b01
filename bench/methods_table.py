"""bACC and GM on digits for every method preset over seeds, with each run's training wall time.

Runs each preset x seed through ``lddyn.train.run.start_run`` into ``OUT/<preset>-s<seed>`` (a
finished run is read, not rerun; a killed one is resumed), then prints a Markdown table: mean ±
std over seeds of the final balanced accuracy and geometric mean of recalls (debiased view: the
predictions after each method's test-time hook, equal to the raw ones for methods without one),
and the mean training wall time per run.

    python bench/methods_table.py --seeds 0 1 2            # the docs/methods.md table (1500 steps)
    python bench/methods_table.py --seeds 0 --steps 60     # a quick check that everything runs
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from lddyn.config import load_config
from lddyn.sinks.parquet import read_table
from lddyn.train.run import resume_run, start_run

PRESETS = (
    "digits-fixmatch",
    "digits-cdmad",
    "digits-dytrim",
    "digits-bmb",
    "digits-alternate",
    "digits-flexmatch",
    "digits-flexmatch-cdmad",
    "digits-flexmatch-dytrim",
    "digits-freematch",
    "digits-freematch-cdmad",
    "digits-freematch-dytrim",
)


def run_one(preset: str, seed: int, steps: int | None, out: Path, threads: int) -> Path:
    run_dir = out / f"{preset}-s{seed}"
    if (run_dir / "run.json").exists():
        return resume_run(run_dir, progress=False) or run_dir  # a finished run is left as it is
    overrides = [f"train.seed={seed}", f"train.threads={threads}", "record.dynamics=false"]
    if steps is not None:
        cdmad_start = max(steps // 5, 1)  # the presets' 300 of 1500, kept in proportion
        overrides += [f"train.steps={steps}", f"train.eval_every={max(steps // 10, 1)}"]
        cfg = load_config(preset)
        names = {m.name for m in cfg.methods}
        if "cdmad" in names:
            overrides.append(f"methods.cdmad.start_step={cdmad_start}")
        if "dytrim" in names:
            overrides.append(f"methods.dytrim.prior_start_step={cdmad_start}")
    return start_run(load_config(preset, overrides), run_dir, progress=False)


def final_scores(run_dir: Path) -> dict[str, float]:
    metrics = read_table(run_dir, "metrics")
    last = metrics[(metrics.step == metrics.step.max()) & metrics.debiased]
    scores = {m: float(last[last.metric == m].value.iloc[0]) for m in ("bacc", "gm")}
    info = json.loads((run_dir / "run.json").read_text())
    scores["wall"] = float(info["wall_seconds"])
    scores["steps"] = float(info["config"]["train"]["steps"])
    return scores


def mean_std(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values) * scale:.1f}"


def markdown(rows: dict[str, list[dict[str, float]]], seeds: list[int]) -> str:
    lines = [
        "| method (preset) | bACC % | GM % | steps | wall s / run | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for preset, scores in rows.items():
        bacc = mean_std([s["bacc"] for s in scores])
        gm = mean_std([s["gm"] for s in scores])
        wall = statistics.fmean(s["wall"] for s in scores)
        steps = int(scores[0]["steps"])
        seed_list = ",".join(map(str, seeds))
        lines.append(f"| {preset} | {bacc} | {gm} | {steps} | {wall:.0f} | {seed_list} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--steps", type=int, default=None, help="override train.steps (default: the presets')"
    )
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--out", type=Path, default=Path("runs/methods-table"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows: dict[str, list[dict[str, float]]] = {}
    for preset in args.presets:
        for seed in args.seeds:
            run_dir = run_one(preset, seed, args.steps, args.out, args.threads)
            rows.setdefault(preset, []).append(final_scores(run_dir))
    print(markdown(rows, args.seeds), end="")


if __name__ == "__main__":
    main()
