#!/usr/bin/env bash
# The authors' recipe at the paper's size with its dynamics, on one GPU in at most 8 minutes (issue 29, item 4):
#   1. train: MLP-MNIST, p = 0.8, all 60,000 training images, seed 0, --protocol authors (their labels: corruption
#      seed 42 by their numpy draw; their optimizer: SGD lr 1e-3, momentum 0.9, batch 128; a fixed order; their
#      running-accuracy stop rule), dense checkpoints (epochs 0, 2, ..., 20, then every 5th). A run that is still
#      training at the step's limit is closed at its last finished epoch (then recorded as not memorized).
#   2. dynamics: benchmarks/dynamics.py probes the kept checkpoints (MASC, both label sets; the init and raw-input
#      controls fitted once) within its own --budget-s, final and first checkpoint first, then an even grid
#      -> OUT_DIR/<run>/dynamics.json, dynamics.png, metrics.jsonl, config.json
#   3. plot: the figure redrawn from dynamics.json when step 2 was cut off before drawing it.
# OUT_DIR/gpu_science.json lists the steps with their exit codes and seconds; the run folder (weights, checkpoints)
# goes to WORK_DIR. DRY_RUN=1 does the same on the CPU at a digits-like size (1,500 training and 500 test images,
# 6 epochs) in about a minute; tests/test_gpu_science.py runs it.
#
#   bash benchmarks/gpu_science.sh [OUT_DIR]       # OUT_DIR: default $OUT when set, else runs/gpu_science
# Environment: DRY_RUN (1: the CPU dry run), PYTHON (default .venv/bin/python, else python3), DATA_ROOT (default
# ../shared/data beside the checkout, else ./shared/data: on the device machine ../shared does not travel, so copy
# mnist/ into an ignored ./shared/data and carry it), WORK_DIR (the run folder's parent; default
# ${TMPDIR:-/tmp}/gpu_science-runs, dry run OUT_DIR/runs), DEADLINE_S (overall seconds; default 470, dry run 150),
# STEP_BUDGET_S (one time limit for the training and the dynamics steps).
# To publish: copy OUT_DIR/<run>/ under benchmarks/results/dynamics/ (dynamics.py --plot redraws its figure).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY="${DRY_RUN:-0}"
OUT_DIR="${1:-${OUT:-runs/gpu_science}}"
# The run folder (weights, one checkpoint per kept epoch) stays out of OUT_DIR on the GPU: the device machine sends
# back only a few small files from $OUT.
if [ "$DRY" = 1 ]; then WORK_DIR="${WORK_DIR:-$OUT_DIR/runs}"
else WORK_DIR="${WORK_DIR:-${TMPDIR:-/tmp}/gpu_science-runs}"; fi
mkdir -p "$OUT_DIR" "$WORK_DIR"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
DATA_ROOT="${DATA_ROOT:-}"
if [ -z "$DATA_ROOT" ]; then
  for d in ../shared/data shared/data; do [ -d "$d/mnist" ] && DATA_ROOT="$d" && break; done
fi
if [ -z "$DATA_ROOT" ]; then
  echo "gpu_science: no mnist/ under ../shared/data or ./shared/data; set DATA_ROOT" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TQDM_DISABLE=1

if [ "$DRY" = 1 ]; then
  DEVICE=cpu THREADS=1 DEADLINE_S="${DEADLINE_S:-150}"
  export OMP_NUM_THREADS=1
  SIZE=(--subset 1500 --test-subset 500 --max-epochs 6)
  B_TRAIN=60 B_DYN=80
else
  # getconf, not nproc: nproc follows OMP_NUM_THREADS
  DEVICE=cuda THREADS="$(getconf _NPROCESSORS_ONLN)" DEADLINE_S="${DEADLINE_S:-470}"
  SIZE=()
  B_TRAIN=270 B_DYN=170
fi
if [ -n "${STEP_BUDGET_S:-}" ]; then B_TRAIN=$STEP_BUDGET_S B_DYN=$STEP_BUDGET_S; fi  # tests: correctness, not speed
# One run, named by the same flags for training and probing (dynamics.py reads reproduce_paper.py's flags).
RUN_FLAGS=(--row mlp-mnist --rates 0.8 --seeds 0 --protocol authors --preset paper --checkpoints dense
           --device "$DEVICE" --threads "$THREADS" --data-root "$DATA_ROOT" --work-dir "$WORK_DIR" --quiet "${SIZE[@]}")
RP=("$PY" benchmarks/reproduce_paper.py "${RUN_FLAGS[@]}" --table "$OUT_DIR/paper_table.json")
START=$(date +%s)
STEPS=()
LAST_RC=0

STEP_TAG=gpu_science
# shellcheck source=benchmarks/_step.sh
source benchmarks/_step.sh  # step NAME BUDGET_S COMMAND... (the working folder is the repository root)

step train "$B_TRAIN" "${RP[@]}" --stage train --out "$OUT_DIR/results-train.json"
if [ "$LAST_RC" = 124 ] || [ "$LAST_RC" = 137 ]; then
  # Out of time before memorizing: close the run at its last finished epoch (a lower cap on a rerun stops it there).
  RUN=$(ls -d "$WORK_DIR"/mlp-mnist-paper-*-p0.8-s0-authors | head -n 1)
  LAST=$(tail -n 1 "$RUN/metrics.jsonl" 2>/dev/null | sed -E 's/^\{"epoch": ([0-9]+).*/\1/')
  [ -n "$LAST" ] && step close 60 "${RP[@]}" --stage train --max-epochs "$LAST" --out "$OUT_DIR/results-close.json"
fi
# dynamics.py stops starting checkpoints 20 s before its step's limit, so that it ends by itself and draws the figure.
left=$(( DEADLINE_S - ($(date +%s) - START) - 20 ))
(( left < B_DYN )) && B_DYN=$left
step dynamics "$B_DYN" "$PY" benchmarks/dynamics.py "${RUN_FLAGS[@]}" --out-dir "$OUT_DIR" --budget-s $(( B_DYN - 20 ))
RESULTS=$(ls "$OUT_DIR"/mlp-mnist-paper-*-p0.8-s0-authors/dynamics.json 2>/dev/null | head -n 1)
if [ -n "$RESULTS" ] && [ ! -s "${RESULTS%.json}.png" -o "${RESULTS%.json}.png" -ot "$RESULTS" ]; then
  step plot 20 "$PY" benchmarks/dynamics.py --plot "$RESULTS"
fi

# Every step must succeed; a training step that ran out of time counts as done when the run was closed after it.
FAILED=0
for s in "${STEPS[@]}"; do
  [[ $s == *'"rc": 0,'* ]] && continue
  [[ $s == '{"name": "train",'* && $s == *'"timed_out": true'* && ${STEPS[1]:-} == '{"name": "close",'*'"rc": 0,'* ]] \
    && continue
  [[ $s == '{"name": "dynamics",'* && $s == *'"timed_out": true'* && -n "$RESULTS" ]] && continue  # plot follows
  FAILED=1
done
[ -n "$RESULTS" ] || FAILED=1
{
  printf '{"dry_run": %s, "device": "%s", "deadline_s": %s, "seconds": %s, "ok": %s, "results": "%s",\n "steps": [' \
    "$([ "$DRY" = 1 ] && echo true || echo false)" "$DEVICE" "$DEADLINE_S" "$(( $(date +%s) - START ))" \
    "$([ $FAILED = 0 ] && echo true || echo false)" "$RESULTS"
  sep=""
  for s in "${STEPS[@]}"; do printf '%s\n  %s' "$sep" "$s"; sep=","; done
  printf '\n ]}\n'
} > "$OUT_DIR/gpu_science.json"
cat "$OUT_DIR/gpu_science.json"
echo "gpu_science: results in $OUT_DIR (dynamics: ${RESULTS:-none}; steps: $OUT_DIR/gpu_science.json)"
exit $FAILED
