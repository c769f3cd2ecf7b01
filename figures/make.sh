#!/usr/bin/env bash
# Regenerate figures/: six short runs on the long-tailed digits (the digits default, DyTrim on
# CDMAD, and FixMatch, logit adjustment, reweighting, resampling, CDMAD), then `lddyn report`.
# Short runs: 400 steps instead of the presets' 1500, debiasing from step 100 instead of 300.
# About 2-3 minutes on 2 CPU cores (two runs at a time, one thread each).
# Usage: bash figures/make.sh [RUNS_DIR]   (runs go to runs/figures by default)
set -euo pipefail
cd "$(dirname "$0")/.."
LDDYN=${LDDYN:-.venv/bin/lddyn}
RUNS=${1:-runs/figures}
rm -rf "$RUNS"
mkdir -p "$RUNS/logs"
COMMON=(--probe baseline --record dynamics --quiet --no-plot
  --set train.steps=400 --set train.threads=1 --set train.eval_every=20 --set train.checkpoint_every=400
  --set probe.every=20 --set record.every=50)

run() {  # run NAME PRESET [OVERRIDES...]
  local name=$1 preset=$2
  shift 2
  "$LDDYN" run -p "$preset" "${COMMON[@]}" --out "$RUNS/$name" "$@" >"$RUNS/logs/$name.log" 2>&1
}

run 6-digits-dytrim digits-dytrim --set methods.cdmad.start_step=100 --set methods.dytrim.prior_start_step=100 &
run 1-fixmatch digits-fixmatch &
wait
run 2-logit_adjust digits-fixmatch --set methods=logit_adjust &
run 3-reweight digits-fixmatch --set methods=reweight &
wait
run 4-resample digits-fixmatch --set methods=resample &
run 5-cdmad digits-cdmad --set methods.cdmad.start_step=100 &
wait
"$LDDYN" report "$RUNS"/*-* --out figures --per-run 6-digits-dytrim
