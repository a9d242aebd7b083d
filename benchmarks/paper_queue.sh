#!/usr/bin/env bash
# The long training runs of the paper reproduction (issue "Reproduce the paper at the scale of its data"), one after
# another on ONE thread per lane, each resumable: rerunning this script continues every unfinished run where it
# stopped and skips finished ones. Probe finished runs with `reproduce_paper.py --set ... --stage probe` (see
# benchmarks/RESULTS.md), which can run beside the queue.
#   nohup bash benchmarks/paper_queue.sh > runs/paper/queue.log 2>&1 &            # MLP-MNIST: n-sweep, 60k
#   nohup bash benchmarks/paper_queue.sh rows > runs/paper/queue-rows.log 2>&1 &  # Fashion-MNIST, CIFAR-10 rows
#   nohup bash benchmarks/paper_queue.sh seeds > runs/paper/queue-seeds.log 2>&1 &     # MLP-MNIST 60k p=0.8: seeds 1, 2
#   nohup bash benchmarks/paper_queue.sh rates > runs/paper/queue-rates.log 2>&1 &     # MLP-MNIST 60k: p=0, .2, .4, .6
#   nohup bash benchmarks/paper_queue.sh authors > runs/paper/queue-authors.log 2>&1 & # the authors' recipe at 60k
# runs/ is ignored by git and does not outlive a session's machine: a fresh clone starts these runs from epoch 0.
# The code runs from a snapshot of masc_probe/ and the script taken at the first start (runs/paper/.code), so that
# edits to the work tree cannot change a run halfway; delete that folder to run later code. CODE_REF names the
# commit to snapshot (default HEAD); runs/paper/.code/COMMIT records it. This file itself is copied before it runs:
# bash reads a script as it goes, and an edit to a running script once made two lanes train the same run folder.
set -uo pipefail
WORK=runs/paper
if [ -z "${MASC_QUEUE_ROOT:-}" ]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  mkdir -p "$root/$WORK" && cp "$0" "$root/$WORK/.queue-${1:-main}.sh"
  MASC_QUEUE_ROOT=$root exec bash "$root/$WORK/.queue-${1:-main}.sh" "$@"
fi
cd "$MASC_QUEUE_ROOT"
(  # one snapshot, whichever lane starts first
  flock 9
  if [ ! -d "$WORK/.code/masc_probe" ]; then
    rm -rf "$WORK/.code.tmp" && mkdir -p "$WORK/.code.tmp"
    git archive "${CODE_REF:-HEAD}" masc_probe benchmarks/reproduce_paper.py | tar -x -C "$WORK/.code.tmp"
    git rev-parse "${CODE_REF:-HEAD}" > "$WORK/.code.tmp/COMMIT" && mv "$WORK/.code.tmp" "$WORK/.code"
  fi
) 9>"$WORK/.code.lock"
export PYTHONPATH="$PWD/$WORK/.code" OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1
PY=".venv/bin/python $WORK/.code/benchmarks/reproduce_paper.py --threads 1 --preset fast --stage train --work-dir $WORK --data-root $MASC_QUEUE_ROOT/../shared/data"
case "${1:-}" in
  # Issue "Does memorization keep, add or remove what MASC reads?": the 60,000-image headline's seeds (about 90
  # epochs of 45-150 s on one thread each), the other corruption rates (p = 0 is the clean reference) and the
  # authors' recipe (their SGD, batch 128, their labels; up to 500 epochs, dense checkpoints from epoch 0).
  seeds) $PY --row mlp-mnist --rates 0.8 --seeds 1 2; echo "seeds lane done $(date)"; exit 0 ;;
  rates) $PY --row mlp-mnist --rates 0 0.2 0.4 0.6 --seeds 0; echo "rates lane done $(date)"; exit 0 ;;
  authors) $PY --row mlp-mnist --rates 0.8 --seeds 0 --protocol authors --preset paper --checkpoints dense
           echo "authors lane done $(date)"; exit 0 ;;
esac
if [ "${1:-}" = rows ]; then
  # Subsets: a CNN epoch on 60,000 images takes minutes on one thread here.
  $PY --row mlp-cifar10 --rates 0.8 --subset 10000 --seeds 0
  $PY --row cnn-fmnist --rates 0.8 --subset 6000 --seeds 0
  $PY --row cnn-cifar10 --rates 0.8 --subset 5000 --seeds 0
  $PY --row cnn-fmnist --rates 0.2 0.4 0.6 --subset 6000 --seeds 0
  echo "rows done $(date)"
  exit 0
fi
# MLP-MNIST at p=0.8: the data-size law (n = 1.5k, 6k, 15k, 60k); the full run early, since it takes hours here.
$PY --row mlp-mnist --rates 0.8 --subset 1500 --seeds 0 1 2
$PY --row mlp-mnist --rates 0.8 --subset 6000 --seeds 0
$PY --row mlp-mnist --rates 0.8 --seeds 0
$PY --row mlp-mnist --rates 0.8 --subset 6000 --seeds 1 2
$PY --row mlp-mnist --rates 0.8 --subset 15000 --seeds 0
$PY --row mlp-mnist --rates 0.8 --seeds 1 2  # the 60,000-image cell with three seeds
echo "queue done $(date)"
