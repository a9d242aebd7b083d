#!/usr/bin/env bash
# The long training runs of the paper reproduction (issue "Reproduce the paper at the scale of its data"), one after
# another on ONE thread, each resumable: rerunning this script continues every unfinished run where it stopped and
# skips finished ones. The code runs from a snapshot of masc_probe/ taken at the first start (runs/paper/.code), so
# that edits to the work tree cannot change a run halfway; delete that folder to run later code. CODE_REF names the
# commit to snapshot (default HEAD); runs/paper/.code/COMMIT records it.
#   nohup bash benchmarks/paper_queue.sh > runs/paper/queue.log 2>&1 &            # MLP-MNIST: n-sweep, 60k
#   nohup bash benchmarks/paper_queue.sh rows > runs/paper/queue-rows.log 2>&1 &  # Fashion-MNIST, CIFAR-10 rows
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=runs/paper
mkdir -p "$WORK"
if [ ! -d "$WORK/.code/masc_probe" ]; then
  mkdir -p "$WORK/.code.tmp" && git archive "${CODE_REF:-HEAD}" masc_probe benchmarks/reproduce_paper.py | tar -x -C "$WORK/.code.tmp"
  git rev-parse "${CODE_REF:-HEAD}" > "$WORK/.code.tmp/COMMIT" && mv "$WORK/.code.tmp" "$WORK/.code"
fi
export PYTHONPATH="$PWD/$WORK/.code" OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1
PY=".venv/bin/python $WORK/.code/benchmarks/reproduce_paper.py --threads 1 --preset fast --train-only --work-dir $WORK"
MNIST=../shared/data/mnist
if [ "${1:-}" = rows ]; then
  # Subsets: a CNN epoch on 60,000 images takes minutes on one thread here.
  $PY --dataset ../shared/data/fashion_mnist --model cnn --rates 0.8 --subset 6000 --seeds 0 --out $WORK/train-cnn-fmnist.json
  $PY --dataset ../shared/data/cifar10 --model mlp --rates 0.8 --subset 10000 --seeds 0 --out $WORK/train-mlp-cifar10.json
  $PY --dataset ../shared/data/cifar10 --model cnn --rates 0.8 --subset 5000 --seeds 0 --out $WORK/train-cnn-cifar10.json
  $PY --dataset ../shared/data/fashion_mnist --model cnn --rates 0.2 0.4 0.6 --subset 6000 --seeds 0 --out $WORK/train-cnn-fmnist-low.json
  echo "rows done $(date)"
  exit 0
fi
# The data-size law first (minutes each, 3 seeds), then the full 60,000-image run, then 15,000.
$PY --dataset $MNIST --rates 0.8 --subset 1500 --seeds 0 1 2 --out $WORK/train-n1500.json
$PY --dataset $MNIST --rates 0.8 --subset 6000 --seeds 0 1 2 --out $WORK/train-n6000.json
$PY --dataset $MNIST --rates 0.8 --seeds 0 --out $WORK/train-nall.json
$PY --dataset $MNIST --rates 0.8 --subset 15000 --seeds 0 --out $WORK/train-n15000.json
echo "queue done $(date)"
