#!/usr/bin/env bash
# The paper reproduction's check on a machine with one GPU (issue 14), in under 8 minutes:
#   1. MLP-MNIST, p = 0.8, all 60,000 training images, seed 0, fast preset: trained until memorized (a rerun
#      continues; at the step's time limit the run is closed at its last epoch and recorded as not memorized),
#      then probed with masc, ncm, lda, qda, knn, linear on both label sets, with both controls
#      -> OUT_DIR/paper_table.json (cells as in benchmarks/results/paper_table.json), OUT_DIR/results*.json
#   2. MASC fitted on the GPU against MASC fitted on the CPU, from the same activations of that run
#      -> OUT_DIR/masc_check.json (per layer: prediction agreement, k_c of both, seconds of both)
#   2b. (GPU only) MASC's profile and the runner's selection on the GPU against the CPU, from the same features:
#      benchmarks/profile_device_check.py (k_c and predict_profile at every subspace size, a ProbeRunner report's
#      profile rows and selection block) -> OUT_DIR/profile_check.json. Left out of the dry run (its step list is
#      fixed by the CI test); tests/test_bench_device.py runs the same command on the CPU.
#   3. A ResNet-18 ProbeRunner pass: benchmarks/bench_probe.py --device cuda (images/s of the bare forward and the
#      probe pass, the floor table, and the CPU's images/s on 1,000 images beside) -> OUT_DIR/bench_probe.json
#   4. Training at the hardware's speed: benchmarks/bench_train.py --device cuda on ResNet-18, all of CIFAR-10, the
#      paper's preset (SGD 1e-3, batch 32): seconds per epoch of train() beside a bare loop on the same data, model and
#      initial weights, train()'s parts, and the estimated time to memorize -> OUT_DIR/bench_train.json
#   5. (GPU only) MASC fit+predict on the GPU with the CPU beside it: benchmarks/bench_masc.py --device cuda at half
#      its sizes -> OUT_DIR/bench_masc.json. The dry run leaves it out: its step list is fixed by the CI test, and
#      tests/test_bench_device.py runs the same command on the CPU.
# Every step runs under its own time limit within one overall deadline; OUT_DIR/gpu_check.json lists the steps with
# their exit codes and seconds. `--dry-run` runs the same steps on the CPU at tiny sizes (a few minutes; step 4 on
# MNIST, not CIFAR-10, whose 60,000 JPEG images take longer to decode than the rest; CI runs it through
# tests/test_reproduce_paper.py).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]      # OUT_DIR: default $OUT when set, else runs/gpu_check
# Environment: PYTHON (default .venv/bin/python, else python3), DATA_ROOT (default ../shared/data beside the
# checkout, else ./shared/data), DEADLINE_S (overall seconds; default 450, dry run 180), STEP_BUDGET_S (one time
# limit for every step).
# To publish step 1's cell: python benchmarks/reproduce_paper.py --import-table OUT_DIR/paper_table.json --markdown
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_DIR="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
DATA_ROOT="${DATA_ROOT:-}"
if [ -z "$DATA_ROOT" ]; then
  for d in ../shared/data shared/data; do [ -d "$d/mnist" ] && DATA_ROOT="$d" && break; done
fi
[ -n "$DATA_ROOT" ] || { echo "gpu_check: no mnist/ under ../shared/data or ./shared/data; set DATA_ROOT" >&2; exit 2; }
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TQDM_DISABLE=1

if [ "$DRY" = 1 ]; then
  DEVICE=cpu THREADS=1 DEADLINE_S="${DEADLINE_S:-180}"
  export OMP_NUM_THREADS=1
  SIZE=(--subset 300 --test-subset 200 --max-epochs 2)
  BENCH=(--n-train 200 --n-test 100 --batch-size 100 --quiet)
  B_TRAIN=35 B_PROBE=50 B_MASC=25 B_RESNET=35 B_TRAIN_BENCH=60 B_MASC_BENCH=0 B_PROFILE=0
  TRAIN_BENCH=(--n-train 64 --n-test 64 --batch-size 32 --epochs 1 --repeats 1 --data mnist)
else
  # getconf, not nproc: nproc follows OMP_NUM_THREADS
  DEVICE=cuda THREADS="$(getconf _NPROCESSORS_ONLN)" DEADLINE_S="${DEADLINE_S:-450}"
  SIZE=()
  BENCH=(--n-train 10000 --n-test 2000 --quiet --cpu-reference 1000)
  B_TRAIN=180 B_PROBE=200 B_MASC=40 B_RESNET=60 B_TRAIN_BENCH=150 B_MASC_BENCH=40 B_PROFILE=45
  TRAIN_BENCH=(--epochs 2 --repeats 2)
fi
RP=("$PY" benchmarks/reproduce_paper.py --row mlp-mnist --rates 0.8 --seeds 0 --preset fast --device "$DEVICE"
    --threads "$THREADS" --data-root "$DATA_ROOT" --work-dir "$OUT_DIR/runs" --table "$OUT_DIR/paper_table.json"
    --quiet "${SIZE[@]}")
if [ -n "${STEP_BUDGET_S:-}" ]; then  # one budget for every step (the tests' dry run: correctness, not speed)
  B_TRAIN=$STEP_BUDGET_S B_PROBE=$STEP_BUDGET_S B_MASC=$STEP_BUDGET_S B_RESNET=$STEP_BUDGET_S
  B_TRAIN_BENCH=$STEP_BUDGET_S
  [ "$DRY" = 1 ] || { B_MASC_BENCH=$STEP_BUDGET_S; B_PROFILE=$STEP_BUDGET_S; }
fi
# The MASC benchmark (tests/test_bench_device.py runs it on the CPU at a smaller --scale).
MASC_BENCH=("$PY" benchmarks/bench_masc.py --device "$DEVICE" --threads "$THREADS" --repeats 1 --ref-repeats 0
            --wide-ref-repeats 0 --scale 0.5 --json "$OUT_DIR/bench_masc.json")
START=$(date +%s)
STEPS=()
LAST_RC=0

STEP_TAG=gpu_check
# shellcheck source=benchmarks/_step.sh
source benchmarks/_step.sh  # step NAME BUDGET_S COMMAND... (the working folder is the repository root)

step train "$B_TRAIN" "${RP[@]}" --stage train --out "$OUT_DIR/results-train.json"
TRAIN_RC=$LAST_RC
if [ "$TRAIN_RC" = 124 ] || [ "$TRAIN_RC" = 137 ]; then
  # Out of time before memorizing: close the run at its last finished epoch (a lower cap on a rerun stops it there).
  RUN=$(ls -d "$OUT_DIR"/runs/mlp-mnist-fast-*-p0.8-s0 | head -n 1)
  LAST=$(tail -n 1 "$RUN/metrics.jsonl" 2>/dev/null | sed -E 's/^\{"epoch": ([0-9]+).*/\1/')
  [ -n "$LAST" ] && step close "$B_MASC" "${RP[@]}" --stage train --max-epochs "$LAST" --out "$OUT_DIR/results-close.json"
fi
# The cell is written as soon as the trained network is probed, and again with the random-init control.
step probe "$B_PROBE" "${RP[@]}" --stage probe --out "$OUT_DIR/results.json"
step masc-check "$B_MASC" "${RP[@]}" --stage masc-check --out "$OUT_DIR/masc_check.json"
[ "$DRY" = 1 ] || step profile-check "$B_PROFILE" "$PY" benchmarks/profile_device_check.py --device "$DEVICE" \
  --threads "$THREADS" --json "$OUT_DIR/profile_check.json"
step resnet18-probe "$B_RESNET" "$PY" benchmarks/bench_probe.py --device "$DEVICE" --threads "$THREADS" --no-linear \
  "${BENCH[@]}" --json "$OUT_DIR/bench_probe.json"
step train-bench "$B_TRAIN_BENCH" "$PY" benchmarks/bench_train.py --workloads resnet18-cifar10 --device "$DEVICE" \
  --threads "$THREADS" --data-root "$DATA_ROOT" "${TRAIN_BENCH[@]}" --json "$OUT_DIR/bench_train.json"
[ "$DRY" = 1 ] || step masc-bench "$B_MASC_BENCH" "${MASC_BENCH[@]}"

# Every step must succeed; a training step that ran out of time counts as done when the run was closed after it
# (the cell then says "not memorized").
FAILED=0
for s in "${STEPS[@]}"; do
  [[ $s == *'"rc": 0,'* ]] && continue
  [[ $s == '{"name": "train",'* && $s == *'"timed_out": true'* && ${STEPS[1]:-} == '{"name": "close",'*'"rc": 0,'* ]] \
    && continue
  FAILED=1
done
{
  printf '{"dry_run": %s, "device": "%s", "deadline_s": %s, "seconds": %s, "ok": %s,\n "steps": [' \
    "$([ $DRY = 1 ] && echo true || echo false)" "$DEVICE" "$DEADLINE_S" "$(( $(date +%s) - START ))" \
    "$([ $FAILED = 0 ] && echo true || echo false)"
  sep=""
  for s in "${STEPS[@]}"; do printf '%s\n  %s' "$sep" "$s"; sep=","; done
  printf '\n ]}\n'
} > "$OUT_DIR/gpu_check.json"
cat "$OUT_DIR/gpu_check.json"
exit $FAILED
