"""Reproduce the MASC paper's table (Ketha & Ramaswamy, arXiv 2501.14687) with baselines and controls.

Every cell is one table row (model + dataset) at one corruption rate p and training-set size n: for each seed, corrupt
the training labels, train the network until it memorizes them (the preset's stop target, or the epoch cap), then
probe it. The probe stage runs ONE ProbeRunner per network with the probes masc, ncm, lda, qda, knn and linear,
fitted once on the corrupted and once on the true labels and scored on the clean test set; per probe and label set
it keeps the best layer with and without the raw input in the layer set. Controls in every cell: the same probes on
the package's init control (``masc_probe.runner._controls.init_control``: the run's own epoch-0 weights, rebuilt from
the seed and SHA-256 its config records and verified; for runs trained before that record, the copy the package
re-initializes from the run's seed, which for the paper's models is the same set_seed + constructor, so the same
weights) and on the raw input. Reports are cached in the run folder (``report.json``, ``report-init.json``), so a rerun does not re-probe.

Rows (``--row``; data from ../shared/data/{mnist,fashion_mnist,cifar10}): mlp-mnist, cnn-mnist, cnn-fmnist,
mlp-cifar10, cnn-cifar10, resnet18-cifar10. Other data: ``--model cnn --dataset path/or/spec``. Named sets:
``--set n-sweep`` (MLP-MNIST, p = 0.8, n = 1.5k / 6k / 15k / 60k: the data-size law), ``--set queue-rows`` (the
Fashion-MNIST and CIFAR-10 subsets of ``paper_queue.sh rows``) and ``--full`` (every row at p = 0.2-0.8, full size,
seeds 0 1 2; at full size LDA and kNN on ResNet-18's 16,384-wide layers take long on the CPU: ``--probes`` can
leave them out)::

    python benchmarks/reproduce_paper.py --row mlp-mnist --rates 0.8 --subset 1500 --seeds 0 1 2 --threads 1
    python benchmarks/reproduce_paper.py --set n-sweep --stage train --threads 1 --work-dir runs/paper
    python benchmarks/reproduce_paper.py --set n-sweep --stage probe --threads 1 --work-dir runs/paper
    python benchmarks/reproduce_paper.py --full --device cuda          # the whole table on a GPU
    python benchmarks/reproduce_paper.py --markdown                    # rebuild the RESULTS.md section + plot

Stages: ``train`` trains or resumes every run (``--train-only`` is its old name); ``probe`` probes the runs whose
training finished and skips the others (it never trains, so it may run beside a queue that is still training);
``all`` (default) does both; ``masc-check`` fits MASC on ``--device`` and on the CPU from the same activations of
each finished run and compares them. Results: every cell is merged into ``--table`` (default
benchmarks/results/paper_table.json for rows and sets, ``<work-dir>/paper_table.json`` for other data), keyed by
row/p/n/protocol/preset; a cell keeps one entry per seed and their mean ± std. ``--out`` receives this
invocation's runs (default ``<work-dir>/results.json``).

Reruns resume: each (row, p, n, seed) trains in its own run folder under ``--work-dir``, named
``{model}-{data folder}-{preset}[-b{batch}]-{n<N>|nall}-p{p}-s{seed}[-authors]``, continuing from the last finished
epoch. ``--protocol authors`` runs a cell the way the authors' code does (see PROTOCOLS and the differences below):
the paper preset, a fixed order, the running-accuracy stop rule, train-mode extraction and corruption seed 42::

    python benchmarks/reproduce_paper.py --row mlp-mnist --rates 0.8 --subset 1500 --seeds 0 --protocol authors
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import logging
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO.parent / "shared" / "data"
RESULTS_DIR = REPO / "benchmarks" / "results"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"

# --------------------------------------------------------------------------------------- the paper, as published
# row -> (model spec, folder under ../shared/data)
ROWS: dict[str, tuple[str, str]] = {
    "mlp-mnist": ("mlp", "mnist"), "cnn-mnist": ("cnn", "mnist"), "cnn-fmnist": ("cnn", "fashion_mnist"),
    "mlp-cifar10": ("mlp", "cifar10"), "cnn-cifar10": ("cnn", "cifar10"),
    "resnet18-cifar10": ("resnet18-cifar", "cifar10"),
}  # fmt: skip
ROW_TITLES = {"mlp-mnist": "MLP-MNIST", "cnn-mnist": "CNN-MNIST", "cnn-fmnist": "CNN-FashionMNIST",
              "mlp-cifar10": "MLP-CIFAR10", "cnn-cifar10": "CNN-CIFAR10", "resnet18-cifar10": "ResNet18-CIFAR10"}
RATES = (0.2, 0.4, 0.6, 0.8)
# The authors' table (mean of 3 runs, best layer), per row: model test accuracy, best-layer MASC with
# corrupted-label subspaces, with true-label subspaces; one value per p in RATES.
PAPER: dict[str, dict[str, tuple[float, ...]]] = {
    "mlp-mnist": {"model": (.874, .733, .542, .321), "corrupted": (.969, .965, .948, .834),
                  "true": (.970, .967, .963, .958)},
    "cnn-mnist": {"model": (.875, .694, .471, .283), "corrupted": (.961, .952, .936, .852),
                  "true": (.969, .969, .966, .961)},
    "cnn-fmnist": {"model": (.777, .614, .433, .256), "corrupted": (.836, .819, .800, .739),
                   "true": (.843, .817, .817, .799)},
    "mlp-cifar10": {"model": (.486, .404, .306, .197), "corrupted": (.534, .502, .449, .324),
                    "true": (.540, .526, .510, .484)},
    "cnn-cifar10": {"model": (.605, .462, .310, .183), "corrupted": (.619, .490, .393, .293),
                    "true": (.625, .524, .490, .437)},
    "resnet18-cifar10": {"model": (.674, .515, .345, .200), "corrupted": (.671, .620, .577, .439),
                         "true": (.694, .681, .667, .658)},
}  # fmt: skip
# The authors' baselines fitted on corrupted labels (best layer, mean of 3 runs). Their MASC layer set for the CNNs
# includes the raw input; their baselines' does not.
PAPER_BASELINES: dict[tuple[str, float], dict[str, float]] = {
    ("cnn-cifar10", 0.6): {"masc": .393, "ncm": .532, "lda": .527, "qda": .468, "knn": .401, "linear": .398},
    ("cnn-cifar10", 0.8): {"masc": .293, "ncm": .435, "lda": .330, "qda": .380, "knn": .227, "linear": .220},
    ("cnn-mnist", 0.8): {"masc": .852, "ncm": .912, "lda": .933, "qda": .868, "knn": .407, "linear": .410},
    ("mlp-cifar10", 0.8): {"masc": .324, "ncm": .337, "lda": .255, "qda": .341, "knn": .197, "linear": .231},
    # Not in the paper's tables: the authors' repository's second set of MLP-MNIST p = 0.8 models (60,000 images),
    # Compare_experiments/sensitivity_ablation_studies/results/.../MNIST_MLP/results_0.8 (best layer; only the MASC and
    # QDA figures were read from there).
    ("mlp-mnist", 0.8): {"masc": .804, "qda": .943},
}  # fmt: skip
PAPER_N_TRAIN = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000}
# Whether the authors' MASC layer set holds the raw input (their ResNet-18 probe points start at the max-pool).
PAPER_MASC_HAS_INPUT = {row: not row.startswith("resnet") for row in ROWS}
AUTHORS_DIFFERENCES = """\
1. **Activation extraction mode.** The authors never switch to eval mode before extracting activations: every
   ResNet-18 MASC number of theirs comes from BatchNorm in train mode with batch size 1 (each image normalized by its
   own statistics). We use eval mode (``--protocol authors`` switches to theirs). Irrelevant for the MLP and the CNN.
2. **AlexNet.** Their CIFAR-100 AlexNet (3×3 stride-2 convs, max-pools 3/2, maps 16 → 7 → 3 → 1) and their
   Tiny-ImageNet AlexNet (11×11 stride 4 padding 2, batch 500, no normalization) match neither of ours before the
   package's fix (issue 14, item 1). No AlexNet row is in this table.
3. **ResNet-18 probe points.** Theirs are 9 (maxpool, layer1.0's inner ReLU, layer1.0, layer1.1's inner ReLU,
   layer1, layer2, layer3, layer4, the pooled features); ours were 7 (no inner ReLUs) until issue 14, item 1. Their
   inner ReLU of layer1.0 is their best corrupted-label layer at p = 0.6.
4. **Training order and stop rule.** They never shuffle (a fixed order every epoch) and stop on the *running*
   train-mode accuracy summed over the epoch's batches; we reshuffle per epoch and stop on a separate eval pass.
5. **Relabeling.** They relabel the training set with subspaces fitted on the whole training set (each sample in its
   own class's subspace); our default is the cross-fitted version. (The table does not relabel.)
6. **Not every run of theirs memorized.** Many of their models never reached the stop target and were cut off at
   500 epochs (e.g. CNN-CIFAR10 at every p; CNN-FMNIST at p ≥ 0.4). The tables here say per cell whether ours did.
7. **Rank cut-off.** Our eigenvalues below 64 float32 epsilons of the largest count as zero; on a constructed
   spectrum that gave k = 1 where the float64 rule gives k = 116 (checked on real wide layers by issue 14, item 2).
"""

PROBE_NAMES = ("masc", "ncm", "lda", "qda", "knn", "linear")
LABEL_SETS = ("corrupted", "true")
# The protocols a cell can be run under: the preset it defaults to, TrainConfig overrides, ProbeRunner arguments and
# the corruption seed (None: the run's seed). "clean" is the package's default (eval-mode extraction, shuffled epochs,
# eval-pass stop rule). "authors" is the MASC authors' code: their optimizer (the paper preset), the data's own order
# every epoch, the stop rule on the running train-mode accuracy, layers read in train mode one sample at a time, and
# one corruption seed (42) for every run, so that seeds change only the initialization. Its run folders get a
# "-authors" suffix (run_dir), its cells their own key.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "clean": {"preset": "fast", "train": {}, "runner": {}, "corruption_seed": None, "corruption_mode": "random"},
    "authors": {"preset": "paper", "train": {"protocol": "authors"}, "runner": {"protocol": "authors"},
                "corruption_seed": 42, "corruption_mode": "authors"},
}
# Named sets of runs: groups of rows × rates × {subset (None = all): seeds}.
SETS: dict[str, list[dict[str, Any]]] = {
    # The data-size law, exactly the first lane of benchmarks/paper_queue.sh (3 seeds where a run takes minutes).
    "n-sweep": [{"rows": ["mlp-mnist"], "rates": [0.8],
                 "subsets": {1500: [0, 1, 2], 6000: [0, 1, 2], 15000: [0], None: [0, 1, 2]}}],
    # The queue's second lane (`paper_queue.sh rows`): Fashion-MNIST and CIFAR-10 rows on subsets, one seed.
    "queue-rows": [{"rows": ["cnn-fmnist"], "rates": [0.8, 0.2, 0.4, 0.6], "subsets": {6000: [0]}},
                   {"rows": ["mlp-cifar10"], "rates": [0.8], "subsets": {10000: [0]}},
                   {"rows": ["cnn-cifar10"], "rates": [0.8], "subsets": {5000: [0]}}],
    "full": [{"rows": list(ROWS), "rates": list(RATES), "subsets": {None: [0, 1, 2]}}],
}
MARK_BEGIN = "<!-- paper-reproduction:begin (generated by benchmarks/reproduce_paper.py --markdown) -->"
MARK_END = "<!-- paper-reproduction:end -->"

log = logging.getLogger("reproduce_paper")


class Job(NamedTuple):
    """One training run: a table row (or other data) at one rate, training-set size and seed."""

    row: str  # "mlp-mnist", … or "<model>-<data name>" for data outside the paper's rows
    paper_row: str | None  # the paper row whose numbers apply (mnist-5k is still MNIST), or None
    model: str
    dataset: str  # dataset spec handed to load_data
    data_name: str  # the dataset folder's name: part of the run folder's name
    family: str  # what preset_config is told the dataset is (it picks the stop target)
    rate: float
    subset: int | None
    seed: int


# ----------------------------------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--row", nargs="+", choices=list(ROWS), default=None,
                   help="paper rows (model + dataset in --data-root); overrides --model/--dataset")
    p.add_argument("--set", choices=list(SETS), default=None, dest="run_set",
                   help="a named set of runs; --row/--rates/--subset/--seeds given as well override its values")
    p.add_argument("--full", action="store_true", help="--set full: every row at p = 0.2-0.8, all data, 3 seeds")
    p.add_argument("--data-root", default=str(DATA_ROOT), help="folder of mnist/, fashion_mnist/, cifar10/")
    p.add_argument("--dataset", default=None,
                   help="dataset spec when no --row: an MNIST idx folder (default: <data-root>/mnist), another "
                        "local folder/file, a built-in (mnist-5k, digits) or a Hub name")
    p.add_argument("--model", default="mlp", help="paper model when no --row: mlp (default), cnn, resnet18-cifar")
    p.add_argument("--rates", type=float, nargs="+", default=None, help="corruption rates p (default: all four)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds: corruption, init, order (default 0)")
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="clean", help="see PROTOCOLS in the script")
    p.add_argument("--preset", choices=("paper", "fast"), default=None,
                   help="paper: the authors' optimizer (MLP: SGD lr 1e-3, momentum 0.9, batch 32); fast: Adam lr "
                        "3e-4, batch 128, lr/10 at plateaus (default: the protocol's, fast for clean)")
    p.add_argument("--max-epochs", type=int, default=None, help="epoch cap (default: the preset's, 500)")
    p.add_argument("--checkpoints", choices=("final", "dense"), default="final",
                   help="checkpoints kept: the final one (default), or dense (epochs 0, 2, …, 20, then every 5th: "
                        "for MASC over training, e.g. `masc-probe probe RUN --all-checkpoints`)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's)")
    p.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                   help="autocast for training (default no, fp32): bf16 changes the numbers, so its run folders get a "
                        "'-bf16' suffix and its cells their own key")
    p.add_argument("--subset", type=int, default=None,
                   help="train on N training images (stratified by true class, seeded by --subset-seed)")
    p.add_argument("--test-subset", type=int, default=None, help="score on N test images (default: all)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the subsets (the same for every run)")
    p.add_argument("--probes", nargs="+", choices=PROBE_NAMES, default=list(PROBE_NAMES), help="probes fitted")
    p.add_argument("--n-components", type=float, default=0.99, help="MASC variance fraction (or count if >= 1)")
    p.add_argument("--qda-reg-param", type=float, default=1e-3,
                   help="QDA's reg_param (default 1e-3): scikit-learn >= 1.6 refuses a rank-deficient class "
                        "covariance (constant pixels, dead ReLUs), which the authors' version only warned about")
    p.add_argument("--no-control", action="store_true", help="skip the random-init network control")
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: an accelerator when present)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and BLAS CPU threads; 1 is much faster than 2 on a busy 2-core machine")
    p.add_argument("--work-dir", default="runs/reproduce_paper", help="parent of the run folders")
    p.add_argument("--out", default=None, help="JSON with this invocation's runs (default: <work-dir>/results.json)")
    p.add_argument("--table", default=None,
                   help="merged results (default: benchmarks/results/paper_table.json for --row/--set/--full, "
                        "else <work-dir>/paper_table.json)")
    p.add_argument("--import-table", default=None, help="merge the cells of another paper_table.json into --table")
    p.add_argument("--stage", choices=("train", "probe", "all", "masc-check", "loaders"), default="all",
                   help="train, probe (finished runs only), all (default), masc-check, or loaders (train each "
                        "run with both --loader paths alternately: identical weights? seconds of each)")
    p.add_argument("--repeats", type=int, default=3, help="--stage loaders: trainings per loader (default 3)")
    p.add_argument("--train-only", action="store_true", help="the same as --stage train")
    p.add_argument("--markdown", action="store_true",
                   help="rebuild the RESULTS.md section and the data-size plot from --table; run nothing")
    p.add_argument("--results-md", default=str(RESULTS_MD), help="the markdown file --markdown updates")
    p.add_argument("--loader", choices=("tensors", "dataloader"), default="tensors",
                   help="tensors (default): decode the training data once and batch it by index on the device; "
                        "dataloader: decode every epoch through a DataLoader (same order, same steps)")
    p.add_argument("--quiet", action="store_true", help="log warnings only")
    args = p.parse_args(argv)
    for name in ("subset", "test_subset", "max_epochs", "threads", "batch_size", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.rates is not None and any(not 0 <= r <= 1 for r in args.rates):
        p.error(f"--rates must lie in [0, 1], got {args.rates}")
    if args.n_components <= 0:
        p.error(f"--n-components must be a fraction in (0, 1) or a count >= 1, got {args.n_components}")
    if args.n_components >= 1:
        args.n_components = int(args.n_components)
    if not 0 <= args.qda_reg_param <= 1:
        p.error(f"--qda-reg-param must lie in [0, 1], got {args.qda_reg_param}")
    if args.full:
        if args.run_set not in (None, "full"):
            p.error(f"--full is --set full; got --set {args.run_set} as well")
        args.run_set = "full"
    if args.train_only:
        args.stage = "train"
    args.preset = args.preset or PROTOCOLS[args.protocol]["preset"]
    return args


def plan(args: argparse.Namespace) -> list[Job]:
    """The runs this invocation covers, in order: per group of the named set (or the flags alone), rows ×
    (subset, seeds) × rates. --row, --rates, --subset and --seeds given with a set override its values."""
    groups = SETS[args.run_set] if args.run_set else [{"rows": None, "rates": list(RATES), "subsets": {None: [0]}}]
    jobs = []
    for group in groups:
        rows = args.row or group["rows"]
        rates = args.rates or group["rates"]
        if args.subset is not None or not args.run_set:
            subsets = {args.subset: args.seeds or [0]}
        else:
            subsets = {n: args.seeds or seeds for n, seeds in group["subsets"].items()}
        if rows:
            specs = [(row, row, ROWS[row][0], str(Path(args.data_root) / ROWS[row][1])) for row in rows]
        else:
            dataset = args.dataset or str(Path(args.data_root) / "mnist")
            name = _data_name(dataset)
            folder = _PAPER_FOLDER.get(name.lower())
            paper_row = next((r for r, (m, f) in ROWS.items() if m == args.model and f == folder), None)
            row = paper_row if paper_row and name == ROWS[paper_row][1] else f"{args.model}-{name}"
            specs = [(row, paper_row, args.model, dataset)]
        for row, paper_row, model, dataset in specs:
            for subset, seeds in subsets.items():
                for rate in rates:
                    for seed in seeds:
                        job = Job(row=row, paper_row=paper_row, model=model, dataset=dataset,
                                  data_name=_data_name(dataset), family=_family(dataset), rate=rate, subset=subset,
                                  seed=seed)
                        if job not in jobs:
                            jobs.append(job)
    return jobs


_PAPER_FOLDER = {"mnist": "mnist", "mnist-5k": "mnist", "ylecun/mnist": "mnist", "fashion_mnist": "fashion_mnist",
                 "fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist", "cifar10": "cifar10",
                 "cifar-10": "cifar10", "uoft-cs/cifar10": "cifar10"}  # fmt: skip


def _data_name(dataset: str) -> str:
    return Path(str(dataset).rstrip("/")).name or "data"


def _family(dataset: str) -> str:
    """The dataset name preset_config receives: a built-in's or Hub name's own, a local folder's name, lower case."""
    from masc_probe.data import describe_data

    return _FAMILIES.setdefault(dataset, (describe_data(_load(dataset, "test", 0.0, 0))["name"]
                                          or _data_name(dataset).lower()))


_FAMILIES: dict[str, str] = {}


# -------------------------------------------------------------------------------------------------------- data
def stratified_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of *n* samples whose class shares match *labels*'; None when *n* covers everything."""
    if n is None or n >= len(labels):
        return None
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
    return np.sort(idx)


def _load(dataset: str, split: str, rate: float, seed: int, mode: str = "random") -> Any:
    from masc_probe import load_data

    return load_data(dataset, split=split, corrupt=rate, seed=seed, mode=mode)


def load_split(dataset: str, *, split: str, n: int | None, subset_seed: int, rate: float = 0.0,
               seed: int = 0, mode: str = "random") -> Any:  # fmt: skip
    """One split, corrupted over its whole length in file order (mode "random": a sample's label depends on its
    index only; "authors": the authors' sequential numpy draw), then subset."""
    data = _load(dataset, split, rate, seed, mode)
    true = data.with_format("numpy")["true_label"][:]  # no image is decoded for this
    idx = stratified_subset(true, n, subset_seed)
    return data if idx is None else data.select(idx)


def batches(data: Any, loader: str, device: str) -> Any:
    """What training and probing iterate: the data held as tensors on *device*, or a DataLoader over it."""
    if loader == "tensors":
        from masc_probe.data import TensorBatches

        return TensorBatches.from_data(data, device=device)
    from torch.utils.data import DataLoader

    return DataLoader(data, batch_size=256)


# --------------------------------------------------------------------------------------------------- training
def run_dir(args: argparse.Namespace, job: Job) -> Path:
    """The run folder: one per setting that changes the training data or schedule (the queue's names, unchanged)."""
    subset = f"n{job.subset}" + (f"-ss{args.subset_seed}" if args.subset_seed else "") if job.subset else "nall"
    batch = f"-b{args.batch_size}" if args.batch_size else ""
    protocol = "" if args.protocol == "clean" else f"-{args.protocol}"
    return Path(args.work_dir) / f"{job.model}-{job.data_name}-{args.preset}{batch}-{subset}-p{job.rate:g}-s{job.seed}" \
        f"{protocol}{precision_suffix(args)}"


def precision_suffix(args: argparse.Namespace) -> str:
    """"" for fp32 training (every run before the flag existed), else "-bf16": a run folder's and a cell key's tail."""
    precision = getattr(args, "mixed_precision", "no")
    return "" if precision == "no" else f"-{precision}"


def corruption_seed(args: argparse.Namespace, job: Job) -> int:
    """The seed of the run's label corruption: the protocol's fixed one (authors: 42), else the run's seed."""
    fixed = PROTOCOLS[args.protocol]["corruption_seed"]
    return job.seed if fixed is None else int(fixed)


def corruption_mode(args: argparse.Namespace) -> str:
    """The corruption mode of the protocol: the package's hashed "random" draw, or the authors' numpy recipe."""
    return str(PROTOCOLS[args.protocol]["corruption_mode"])


def train_config(args: argparse.Namespace, job: Job, num_classes: int, preprocessing: Any, *,
                 max_epochs: int | None = None) -> Any:  # fmt: skip
    """The run's TrainConfig: the preset with the queue's overrides (changing any non-resumable one would make
    train() refuse the existing run folders)."""
    from masc_probe.training import preset_config

    overrides: dict[str, Any] = {
        "seed": job.seed, "num_classes": num_classes, "output_dir": str(run_dir(args, job)),
        "progress": not args.quiet, "cpu": args.device == "cpu",
        "corruption": {"mode": corruption_mode(args), "rate": job.rate, "seed": corruption_seed(args, job)}
        if job.rate else None,
        "preprocessing": preprocessing,
        **PROTOCOLS[args.protocol]["train"]}
    if args.checkpoints == "final":  # the table reads no training dynamics; "dense" keeps the preset's epochs (0, 2, …)
        overrides.update(checkpoint_dense_until=-1, checkpoint_every=0)
    if max_epochs or args.max_epochs:
        overrides["max_epochs"] = max_epochs or args.max_epochs
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if getattr(args, "mixed_precision", "no") != "no":
        overrides["mixed_precision"] = args.mixed_precision
    return preset_config(job.model, job.family, preset=args.preset, **overrides)


def initial_model(model: str, seed: int, num_classes: int, input_size: list[int]) -> Any:
    """The network a run starts from, what training is handed (so both loader paths start from the same weights):
    the package's ``masc_probe.training._init.initial_model`` (set_seed(seed), then load_model, as the pipeline and
    train() build a model from its spec; what a run's recorded init rebuilds)."""
    from masc_probe.training._init import initial_model as package_initial_model

    return package_initial_model(model, seed=seed, num_classes=num_classes, input_size=input_size)


def finished(path: Path) -> bool:
    """Whether a run's training ended: train() writes model.safetensors only when it stops."""
    return (path / "model.safetensors").is_file() and (path / "config.json").is_file()


# ---------------------------------------------------------------------------------------------------- probing
def probe_layers(net: Any) -> list[str]:
    """The network's probe points, with the raw input first (ResNet-18's points leave it out)."""
    from masc_probe import list_layers

    declared = list(getattr(net, "PROBE_LAYERS", None) or [])
    if not declared:
        from masc_probe.layers import default_layers

        declared = default_layers(net)
    return (["input"] if "input" not in declared and "input" in list_layers(net) else []) + declared


def probe_kwargs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Constructor arguments of the probes that need some (recorded in every report and cell)."""
    return {"qda": {"reg_param": args.qda_reg_param}} if "qda" in args.probes and args.qda_reg_param else {}


def probe(net: Any, layers: list[str], train: Any, test: Any, *, args: argparse.Namespace, job: Job,
          num_classes: int, extra: dict[str, Any]) -> Any:  # fmt: skip
    """One ProbeRunner over every probe, layer and label set of *net*: its report."""
    from masc_probe import ProbeRunner

    runner = ProbeRunner(net, layers=layers, probes=tuple(args.probes), labels="both", n_components=args.n_components,
                         device=args.device, progress=not args.quiet, train_accuracy=False, seed=job.seed,
                         probe_kwargs=probe_kwargs(args), **PROTOCOLS[args.protocol]["runner"],
                         controls=())  # fmt: skip  (the controls are probed on their own, into report-init.json)
    runner.fit(train, num_classes=num_classes)
    report = runner.evaluate(test, model_name=job.model, dataset=job.dataset, corruption=extra.pop("corruption"),
                             extra={**extra, "failed": runner.failed_})
    runner.close()
    return report


def cached_report(path: Path, probing: dict[str, Any]) -> Any:
    """The report saved at *path* when it was made with exactly these probing settings, else None."""
    from masc_probe import ProbeReport

    if not path.is_file():
        return None
    report = ProbeReport.from_json_file(path)
    return report if report.extra.get("probing") == probing else None


def best(results: list[dict[str, Any]], probe_name: str, labels: str, *, with_input: bool) -> dict[str, Any] | None:
    """The best layer of one probe and label set (ties: the earliest layer), with or without the raw input."""
    rows = [r for r in results if r["probe"] == probe_name and r["labels"] == labels
            and (with_input or r["layer"] != "input")]  # fmt: skip
    if not rows:
        return None
    top = max(rows, key=lambda r: r["test_accuracy"])
    return {"layer": top["layer"], "accuracy": top["test_accuracy"]}


def series_summary(results: list[dict[str, Any]], probes: list[str]) -> dict[str, Any]:
    return {f"{p}/{s}": {"with_input": best(results, p, s, with_input=True),
                         "without_input": best(results, p, s, with_input=False)}
            for p in probes for s in LABEL_SETS}  # fmt: skip


def by_layer(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in results:
        out.setdefault(f"{r['probe']}/{r['labels']}", {})[r["layer"]] = r["test_accuracy"]
    return out


def run_one(args: argparse.Namespace, job: Job, test_batches: Any, n_test: int,
            publish: Callable[[dict[str, Any]], None] = lambda result: None) -> dict[str, Any] | None:  # fmt: skip
    """Train (or resume) one run, probe it and its initial network; its numbers (None: skipped, unfinished).

    *publish* receives the numbers of the trained network as soon as they exist, before the control is probed.
    """
    import torch

    from masc_probe import load_model
    from masc_probe.data import describe_data
    from masc_probe.training import train

    t0 = time.perf_counter()
    path = run_dir(args, job)
    if args.stage == "probe" and not finished(path):
        log.warning("%s: training has not finished (still queued or running); not probed", path)
        return None
    train_data = load_split(job.dataset, split="train", n=job.subset, subset_seed=args.subset_seed, rate=job.rate,
                            seed=corruption_seed(args, job), mode=corruption_mode(args))
    info = describe_data(train_data)
    labels = train_data.with_format("numpy")
    y, y_true = labels["label"][:], labels["true_label"][:]
    num_classes = info["num_classes"]
    # The probe stage never trains: capping the epochs at the run's last one makes train() only check the settings
    # (a run closed earlier by a lower --max-epochs would otherwise continue).
    saved = json.loads((path / "config.json").read_text())["masc_probe"] if args.stage == "probe" else None
    config = train_config(args, job, num_classes, info["preprocessing"], max_epochs=saved["epoch"] if saved else None)
    source = batches(train_data, args.loader, args.device)
    input_size = [int(s) for s in train_data[0]["image"].shape]
    t_data = time.perf_counter() - t0
    log.info("%s p=%g n=%d seed=%d: %s %s (%s preset, target %.3f) in %s", job.row, job.rate, len(y), job.seed,
             "training" if not finished(path) else "found", job.model, args.preset, config.target_accuracy, path)
    # On a finished run with the same settings train() returns at once; with other settings it raises.
    trained = train(initial_model(job.model, job.seed, num_classes, input_size), source, config=config)
    last = trained.history[-1]
    t_train = time.perf_counter() - t0
    result: dict[str, Any] = {
        "row": job.row, "rate": job.rate, "seed": job.seed, "run_dir": str(path), "n_train": int(len(y)),
        "realized_rate": float(np.mean(y != y_true)), "epochs": trained.epochs, "stopped": trained.stopped,
        "memorized": trained.stopped == "target", "target_accuracy": config.target_accuracy,
        "train_accuracy_corrupted": last["train_accuracy_corrupted"], "train_accuracy_true": last["train_accuracy_true"],
        "training": {"preset": args.preset, "optimizer": config.optimizer, "lr": config.lr,
                     **({"momentum": config.momentum} if config.optimizer == "sgd" else {}),
                     "batch_size": config.batch_size, "lr_schedule": config.lr_schedule, "lr_last": last.get("lr"),
                     "max_epochs": saved["training"]["max_epochs"] if saved else config.max_epochs,
                     "mixed_precision": config.mixed_precision},
        # seconds_data: loading, corrupting and (tensors) decoding the data; seconds_train includes it
        "seconds_data": round(t_data, 1), "seconds_train": round(t_train, 1),
    }
    if args.stage == "train":
        return result

    probing = {"probes": list(args.probes), "probe_kwargs": probe_kwargs(args), "labels": "both",
               "n_components": args.n_components, "n_test": n_test,
               "epochs": trained.epochs, "protocol": args.protocol,
               **({"test_subset_seed": args.subset_seed} if args.test_subset else {})}  # fmt: skip
    corruption = {"mode": corruption_mode(args), "rate": job.rate, "seed": corruption_seed(args, job),
                  "realized_rate": result["realized_rate"]}
    net = load_model(path)  # exactly the saved, final checkpoint
    layers = probe_layers(net)
    report = cached_report(path / "report.json", {**probing, "layers": layers})
    if report is None:
        report = probe(net, layers, source, test_batches, args=args, job=job, num_classes=num_classes,
                       extra={"corruption": corruption if job.rate else None, "protocol": args.protocol,
                              "probing": {**probing, "layers": layers},
                              "training": {"epochs": trained.epochs, "stopped": trained.stopped,
                                           **config.to_dict()}})  # fmt: skip
        report.to_json(path / "report.json")
    results = report.results
    result.update(model_test_accuracy=report.model_test_accuracy, n_test=report.n_test, layers=layers,
                  probes=series_summary(results, args.probes), accuracy_by_layer=by_layer(results),
                  failed=report.extra.get("failed", []), device=str(args.device), loader=args.loader,
                  torch_threads=torch.get_num_threads(), machine=machine())
    result["controls"] = {"raw_input": {f"{p}/{s}": r["test_accuracy"] for r in results if r["layer"] == "input"
                                        for p, s in [(r["probe"], r["labels"])]}}  # fmt: skip
    # The keys of the earlier, MASC-only output (tests/test_examples.py reads them).
    masc = {s: result["probes"].get(f"masc/{s}", {}) for s in LABEL_SETS}
    for s in LABEL_SETS:
        with_input, hidden_best = masc[s].get("with_input"), masc[s].get("without_input")
        result[f"masc_{s}"] = with_input["accuracy"] if with_input and (job.rate or s == "true") else None
        result[f"masc_{s}_layer"] = with_input["layer"] if with_input and (job.rate or s == "true") else None
        result[f"masc_{s}_hidden"] = hidden_best["accuracy"] if hidden_best else None
        result[f"masc_{s}_hidden_layer"] = hidden_best["layer"] if hidden_best else None
    result["by_layer"] = {f"{layer}/{s}": acc for s in LABEL_SETS if job.rate or s == "true"
                          for layer, acc in result["accuracy_by_layer"].get(f"masc/{s}", {}).items()}
    if not args.no_control:
        hidden = [layer for layer in layers if layer != "input"]
        init_probing = {**probing, "layers": hidden, "network": "random-init"}
        control = cached_report(path / "report-init.json", init_probing)
        if control is None:
            # Published without the control first: a time limit that stops the control leaves the trained numbers.
            publish({**result, "seconds_total": round(time.perf_counter() - t0, 1)})
            from masc_probe.runner._controls import init_control

            fresh = init_control(path, net, seed=job.seed).model  # the package's init control of this run
            control = probe(fresh, hidden, source, test_batches, args=args, job=job, num_classes=num_classes,
                            extra={"corruption": corruption if job.rate else None, "protocol": args.protocol,
                                   "probing": init_probing})
            control.to_json(path / "report-init.json")
        # The raw input is the same for both networks: the control's layer set with the input reuses those rows.
        both = control.results + [r for r in results if r["layer"] == "input"]
        result["controls"]["random_init"] = {
            "model_test_accuracy": control.model_test_accuracy, "probes": series_summary(both, args.probes),
            "accuracy_by_layer": by_layer(control.results), "failed": control.extra.get("failed", [])}
    result["seconds_total"] = round(time.perf_counter() - t0, 1)
    return result


def masc_check(args: argparse.Namespace, job: Job, test_data: Any) -> dict[str, Any] | None:
    """Fit MASC per layer on ``--device`` and on the CPU from the same activations; compare predictions and k_c."""
    import torch

    from masc_probe import MinimumAngleSubspaceClassifier, ProbeRunner, load_model

    path = run_dir(args, job)
    if not finished(path):
        log.warning("%s: training has not finished; no MASC check", path)
        return None
    train_data = load_split(job.dataset, split="train", n=job.subset, subset_seed=args.subset_seed, rate=job.rate,
                            seed=corruption_seed(args, job), mode=corruption_mode(args))
    net = load_model(path)
    layers = [layer for layer in probe_layers(net) if layer != "input"]
    runner = ProbeRunner(net, layers=layers, probes=("masc",), device=args.device, progress=False, controls=())

    def rows(data: Any) -> tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray]:
        feats: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
        ys, ys_true = [], []
        with torch.no_grad():
            for b in batches(data, args.loader, args.device):
                for layer, f in runner.features(b["image"]).items():
                    feats[layer].append(f)
                ys.append(b["label"].cpu().numpy())
                ys_true.append(b["true_label"].cpu().numpy())
        return {k: torch.cat(v) for k, v in feats.items()}, np.concatenate(ys), np.concatenate(ys_true)

    x_train, y, _ = rows(train_data)
    x_test, _, y_test = rows(test_data)
    out: dict[str, Any] = {"row": job.row, "rate": job.rate, "seed": job.seed, "run_dir": str(path),
                           "device": str(args.device), "n_train": len(y), "n_test": len(y_test), "layers": {}}
    sync = torch.cuda.synchronize if str(args.device).startswith("cuda") else (lambda: None)
    for layer in layers:
        sync()
        t = time.perf_counter()
        on_device = MinimumAngleSubspaceClassifier(args.n_components, device=args.device)
        pred_device = on_device.fit(x_train[layer], torch.as_tensor(y, device=x_train[layer].device)) \
            .predict(x_test[layer])
        sync()
        t_device = time.perf_counter() - t
        xtr, xte = x_train[layer].cpu().numpy(), x_test[layer].cpu().numpy()
        t = time.perf_counter()
        on_cpu = MinimumAngleSubspaceClassifier(args.n_components).fit(xtr, y)
        pred_cpu = on_cpu.predict(xte)
        t_cpu = time.perf_counter() - t
        pred_device = pred_device.cpu().numpy() if hasattr(pred_device, "cpu") else np.asarray(pred_device)
        out["layers"][layer] = {
            "dim": int(xtr.shape[1]), "agreement": float(np.mean(pred_device == pred_cpu)),
            "accuracy_device": float(np.mean(pred_device == y_test)), "accuracy_cpu": float(np.mean(pred_cpu == y_test)),
            "n_components_device": [int(k) for k in np.asarray(on_device.n_components_)],
            "n_components_cpu": [int(k) for k in np.asarray(on_cpu.n_components_)],
            "seconds_device": round(t_device, 3), "seconds_cpu": round(t_cpu, 3)}
    return out


def compare_loaders(args: argparse.Namespace, job: Job) -> dict[str, Any]:
    """Train one run from scratch with each --loader path, alternately, ``--repeats`` times (``--max-epochs``,
    default 2): whether the weights come out identical, and the wall and CPU seconds of each way."""
    import torch
    from safetensors.torch import load_file

    from masc_probe.data import describe_data
    from masc_probe.training import train

    train_data = load_split(job.dataset, split="train", n=job.subset, subset_seed=args.subset_seed, rate=job.rate,
                            seed=corruption_seed(args, job), mode=corruption_mode(args))
    info = describe_data(train_data)
    input_size = [int(s) for s in train_data[0]["image"].shape]
    epochs = args.max_epochs or 2
    times: dict[str, dict[str, list[float]]] = {}
    identical = []
    warm = train_data.select(range(min(256, len(train_data))))
    for loader in ("tensors", "dataloader"):  # untimed: the first training in a process pays one-off set-up costs
        config = train_config(args, job, info["num_classes"], info["preprocessing"], max_epochs=1).replace(
            output_dir=str(run_dir(args, job).with_name("loaders-warm-up")), resume=False, batch_size=64)
        train(initial_model(job.model, job.seed, info["num_classes"], input_size), batches(warm, loader, args.device),
              config=config)
    for rep in range(args.repeats):
        final = {}
        for loader in ("tensors", "dataloader")[:: 1 if rep % 2 == 0 else -1]:  # alternate who goes first
            folder = run_dir(args, job).with_name(f"loaders-{loader}")
            config = train_config(args, job, info["num_classes"], info["preprocessing"], max_epochs=epochs).replace(
                output_dir=str(folder), resume=False)
            wall, cpu = time.perf_counter(), time.process_time()
            source = batches(train_data, loader, args.device)  # the tensors path decodes everything here
            prepare = (time.perf_counter() - wall, time.process_time() - cpu)
            train(initial_model(job.model, job.seed, info["num_classes"], input_size), source, config=config)
            total = (time.perf_counter() - wall, time.process_time() - cpu)
            entry = times.setdefault(loader, {"prepare_wall": [], "prepare_cpu": [], "total_wall": [],
                                              "total_cpu": [], "loadavg": []})
            for key, value in zip(("prepare_wall", "prepare_cpu", "total_wall", "total_cpu"), (*prepare, *total)):
                entry[key].append(round(value, 2))
            entry["loadavg"].append(os.getloadavg()[0])
            final[loader] = load_file(folder / "model.safetensors")
            log.info("loaders, repeat %d, %s: %.1f s wall, %.1f s CPU", rep + 1, loader, *total)
        identical.append(all(torch.equal(final["tensors"][k], final["dataloader"][k]) for k in final["tensors"]))
    median = {loader: {k: float(np.median(v)) for k, v in t.items()} for loader, t in times.items()}
    return {"row": job.row, "n_train": len(train_data), "epochs": epochs, "repeats": args.repeats,
            "device": str(args.device), "torch_threads": torch.get_num_threads(), "identical_weights": identical,
            "seconds": times, "median": median,
            "dataloader_over_tensors": {k: median["dataloader"][k] / median["tensors"][k]
                                        for k in ("total_wall", "total_cpu")}}


# ---------------------------------------------------------------------------------------------- the merged table
def cell_key(row: str, rate: float, n_train: int, protocol: str, preset: str) -> str:
    return f"{row}/p{rate:g}/n{n_train}/{protocol}/{preset}"


def stat(values: list[float | None]) -> dict[str, Any] | None:
    """Mean and sample standard deviation (ddof=1; None for one value) over seeds."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "n": len(vals)}


def _series_stats(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per probe/labels and with/without input: accuracy mean ± std and the best layer of each seed."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for e in entries for k in e):
        out[key] = {}
        for part in ("with_input", "without_input"):
            picks = [e.get(key, {}).get(part) for e in entries]
            out[key][part] = {"accuracy": stat([p["accuracy"] if p else None for p in picks]),
                              "layers": [p["layer"] if p else None for p in picks]}
    return out


def summarize_cell(runs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """A cell's numbers over its seeds (runs keyed by seed)."""
    ordered = [runs[k] for k in sorted(runs, key=int)]
    summary: dict[str, Any] = {
        "seeds": [r["seed"] for r in ordered], "epochs": [r["epochs"] for r in ordered],
        "memorized": [r["memorized"] for r in ordered],
        "train_accuracy_corrupted": stat([r["train_accuracy_corrupted"] for r in ordered]),
        "model_test_accuracy": stat([r["model_test_accuracy"] for r in ordered]),
        "realized_rate": stat([r["realized_rate"] for r in ordered]),
        "probes": _series_stats([r["probes"] for r in ordered]),
        "controls": {"raw_input": {k: stat([r["controls"]["raw_input"].get(k) for r in ordered])
                                   for k in dict.fromkeys(k for r in ordered for k in r["controls"]["raw_input"])}},
    }  # fmt: skip
    inits = [r["controls"].get("random_init") for r in ordered]
    if all(inits):
        summary["controls"]["random_init"] = {
            "model_test_accuracy": stat([c["model_test_accuracy"] for c in inits]),
            "probes": _series_stats([c["probes"] for c in inits])}
    return summary


# What must agree for runs of different invocations to share a cell; a run made otherwise replaces the cell's runs.
_CELL_SETTINGS = ("n_test", "probes_fitted", "probe_kwargs", "n_components", "target_accuracy", "optimizer")


def make_cell(job: Job, args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    """The cell one probed run belongs to (without its runs)."""
    rate_i = next((i for i, r in enumerate(RATES) if abs(r - job.rate) < 1e-9), None)
    paper = PAPER.get(job.paper_row or "")
    return {
        "row": job.row, "model": job.model, "dataset": job.data_name, "p": job.rate, "n_train": run["n_train"],
        "n_test": run["n_test"], "protocol": args.protocol, "preset": args.preset, "probes_fitted": list(args.probes),
        "probe_kwargs": probe_kwargs(args), "n_components": args.n_components, "target_accuracy": run["target_accuracy"],
        "optimizer": {k: v for k, v in run["training"].items() if k not in ("lr_last", "max_epochs")},
        "paper_row": job.paper_row,
        "paper": ({k: v[rate_i] for k, v in paper.items()} if paper and rate_i is not None else None),
        "paper_baselines": PAPER_BASELINES.get((job.paper_row or "", job.rate)),
        "paper_n_train": PAPER_N_TRAIN.get(ROWS[job.paper_row][1]) if job.paper_row else None,
    }


def merge_cell(table: dict[str, Any], key: str, cell: dict[str, Any], runs: Mapping[str, dict[str, Any]]) -> None:
    """Put *runs* (keyed by seed) into the cell *key* of *table*: same-seed runs are replaced, others kept."""
    cells = table.setdefault("cells", {})
    old = cells.get(key)
    kept: dict[str, Any] = {}
    if old is not None:
        if all(old.get(k) == cell.get(k) for k in _CELL_SETTINGS):
            kept = dict(old["runs"])
        else:
            changed = [k for k in _CELL_SETTINGS if old.get(k) != cell.get(k)]
            log.warning("cell %s: settings changed (%s); its earlier runs are replaced", key, ", ".join(changed))
    kept.update({str(k): v for k, v in runs.items()})
    cells[key] = {**cell, "runs": kept, "summary": summarize_cell(kept)}


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on *path*'s folder: concurrent invocations merge into the table one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_table(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"schema_version": 1, "cells": {}}
    table = json.loads(path.read_text())
    if not isinstance(table, dict) or not isinstance(table.get("cells"), dict):
        raise SystemExit(f"{path}: expected a paper table (a JSON object with 'cells'), got something else")
    return table


def update_table(path: Path, updates: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
    """Merge (key, cell, runs) updates into the table file, re-read under the lock."""
    with locked(path):
        table = read_table(path)
        for key, cell, runs in updates:
            merge_cell(table, key, cell, runs)
        table["cells"] = dict(sorted(table["cells"].items(), key=lambda kv: _cell_order(kv[1])))
        table["updated"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        write_json(path, table)


def _cell_order(cell: dict[str, Any]) -> tuple[Any, ...]:
    rows = list(ROWS)
    return (rows.index(cell["row"]) if cell["row"] in rows else len(rows), cell["row"], cell["protocol"],
            cell["preset"], cell["p"], cell["n_train"])


# ---------------------------------------------------------------------------------------------- markdown and plot
def _fmt(s: dict[str, Any] | None, digits: int = 3) -> str:
    if s is None:
        return "—"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s.get("std") is not None else "")


def _acc(summary: dict[str, Any], key: str, part: str) -> dict[str, Any] | None:
    return (summary["probes"].get(key) or {}).get(part, {}).get("accuracy")


def _layers(summary: dict[str, Any], key: str, part: str) -> str:
    names = [x for x in (summary["probes"].get(key) or {}).get(part, {}).get("layers", []) if x]
    return "/".join(dict.fromkeys(names)) or "—"


def _machine_text(run: dict[str, Any]) -> str:
    m = run.get("machine") or {}
    where = m.get("cuda") if str(run.get("device", "")).startswith("cuda") else m.get("processor")
    return f"{run.get('device', '?')} ({where or '?'}, {m.get('cpu_count', '?')} CPUs), " \
           f"{run.get('torch_threads', '?')} torch thread(s), torch {m.get('torch', '?')}"


def _title(cell: dict[str, Any]) -> str:
    return ROW_TITLES.get(cell["row"], cell["row"])


def _memorized(summary: dict[str, Any]) -> str:
    m = summary["memorized"]
    return "yes" if all(m) else "no" if not any(m) else f"{sum(m)} of {len(m)}"


def _diff(ours: dict[str, Any] | None, paper: float | None) -> str:
    return "—" if ours is None or paper is None else f"{ours['mean'] - paper:+.3f}"


def build_section(table: dict[str, Any], *, plot_name: str | None = "results/data_size.png") -> str:
    """The RESULTS.md section: every cell of *table* beside the paper, baselines, controls, the data-size law."""
    cells = list(table.get("cells", {}).values())
    out = [MARK_BEGIN, "## Paper reproduction: rows, baselines, controls (reproduce_paper.py)", ""]
    differences = ["", "### Where our setup differs from the authors' code (checked against their repository)", "",
                   AUTHORS_DIFFERENCES.rstrip(), MARK_END]
    if not cells:
        return "\n".join(out + ["No cell has been probed yet (benchmarks/results/paper_table.json is empty)."]
                         + differences)
    out += [
        "Built from `benchmarks/results/paper_table.json` by `python benchmarks/reproduce_paper.py --markdown`; the "
        "cells come from `reproduce_paper.py --stage probe` on runs trained by `benchmarks/paper_queue.sh` (and "
        "`--full --device cuda` on a GPU). Each number is the mean over the cell's seeds (± sample "
        "std when there are several); paper numbers are in parentheses. Best layer = best test accuracy over the "
        "probed layers; *+input* = the raw input counts as a layer, *hidden* = it does not. MASC fitted on the "
        "corrupted labels vs. on the true labels; test labels are always clean. CIFAR-10 is the JPEG re-encoded copy "
        "in ../shared/data (accuracies close to, not identical with, the original's).", ""]
    machines = sorted({_machine_text(r) for c in cells for r in c["runs"].values()})
    out += [f"Machines of the probed runs: {'; '.join(machines)}.", "", "### The paper's table, side by side", "",
            "| row | p | n train | seeds | protocol, optimizer | epochs | memorized | model test acc. "
            "| MASC corrupted-label, +input | Δ | MASC true-label, +input | Δ | MASC corrupted / true, hidden |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        s, paper = c["summary"], c.get("paper") or {}
        masc_part = "with_input" if PAPER_MASC_HAS_INPUT.get(c.get("paper_row") or "", True) else "without_input"
        opt = c["optimizer"]
        opt_text = f"{c['protocol']}, {c['preset']}: {opt['optimizer']} lr {opt['lr']:g} b{opt['batch_size']}" + \
            (f" {opt['lr_schedule']}" if opt.get("lr_schedule") not in (None, "constant") else "")

        def pp(name: str) -> str:
            return f" ({paper[name]:.3f})" if name in paper else ""

        mc, mt = _acc(s, "masc/corrupted", masc_part), _acc(s, "masc/true", masc_part)
        out.append(
            f"| {_title(c)} | {c['p']:g} | {c['n_train']:,} | {len(s['seeds'])} | {opt_text} | "
            f"{', '.join(map(str, s['epochs']))} | {_memorized(s)} | {_fmt(s['model_test_accuracy'])}{pp('model')} | "
            f"{_fmt(mc)}{pp('corrupted')} | {_diff(mc, paper.get('corrupted'))} | {_fmt(mt)}{pp('true')} | "
            f"{_diff(mt, paper.get('true'))} | {_fmt(_acc(s, 'masc/corrupted', 'without_input'))} / "
            f"{_fmt(_acc(s, 'masc/true', 'without_input'))} |")
    out += ["", "For ResNet18-CIFAR10 the MASC columns are the hidden-layer numbers: the authors' ResNet-18 layer set "
            "has no raw input.", "", "### Every probe, best layer (corrupted-label / true-label subspaces)", "",
            "Accuracy and best layer per probe; hidden layers only, then with the raw input in the layer set. The "
            "authors' baselines (in parentheses, corrupted labels) exclude the input; their MASC includes it.", ""]
    probes = list(dict.fromkeys(p for c in cells for p in c["probes_fitted"]))
    out += ["| row | p | n | " + " | ".join(probes) + " |", "|---|---|---|" + "---|" * len(probes)]
    for c in cells:
        s, base = c["summary"], c.get("paper_baselines") or {}
        parts = []
        for p in probes:
            text = []
            for part, tag in (("without_input", "hidden"), ("with_input", "+input")):
                cor, tru = _acc(s, f"{p}/corrupted", part), _acc(s, f"{p}/true", part)
                text.append(f"{tag}: {_fmt(cor)} / {_fmt(tru)} ({_layers(s, f'{p}/corrupted', part)} / "
                            f"{_layers(s, f'{p}/true', part)})")
            paper_text = f" — paper {base[p]:.3f}" if p in base else ""
            parts.append("<br>".join(text) + paper_text)
        out.append(f"| {_title(c)} | {c['p']:g} | {c['n_train']:,} | " + " | ".join(parts) + " |")
    notes = []
    for c in cells:
        gone: dict[str, set[str]] = {}
        for r in c["runs"].values():
            for f in r.get("failed", []) + ((r["controls"].get("random_init") or {}).get("failed") or []):
                gone.setdefault(f["probe"], set()).add(f["layer"])
        if gone:
            notes.append(f"- {_title(c)}, p = {c['p']:g}, n = {c['n_train']:,}: "
                         + "; ".join(f"{p} not fitted on {', '.join(sorted(layers))}" for p, layers in gone.items()))
    if notes:
        qda = next((c["probe_kwargs"].get("qda") for c in cells if c.get("probe_kwargs", {}).get("qda")), None)
        out += ["", "Probes that could not be fitted (shown as —). QDA "
                + (f"(scikit-learn, {', '.join(f'{k}={v:g}' for k, v in qda.items())}) " if qda else "")
                + "needs more rows per class than the layer has features; scikit-learn >= 1.6 refuses any "
                  "rank-deficient class covariance, which the authors' version only warned about.", "", *notes]
    out += ["", "### Controls: trained network vs. randomly initialized network vs. raw input", "",
            "Best hidden layer of the trained network, of the same architecture at its initial weights (the run's "
            "own epoch-0 network), and the probe on the raw input; corrupted-label / true-label subspaces.", "",
            "| row | p | n | probe | trained (hidden) | random init (hidden) | raw input | random-init model acc. |",
            "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        s = c["summary"]
        init = s["controls"].get("random_init")
        for p in c["probes_fitted"]:
            def pair(summary: dict[str, Any] | None) -> str:
                if summary is None:
                    return "—"
                return f"{_fmt(_acc(summary, f'{p}/corrupted', 'without_input'))} / " \
                       f"{_fmt(_acc(summary, f'{p}/true', 'without_input'))}"

            raw = s["controls"]["raw_input"]
            out.append(f"| {_title(c)} | {c['p']:g} | {c['n_train']:,} | {p} | {pair(s)} | {pair(init)} | "
                       f"{_fmt(raw.get(f'{p}/corrupted'))} / {_fmt(raw.get(f'{p}/true'))} | "
                       f"{_fmt(init['model_test_accuracy']) if init else '—'} |")
    sweep = data_size_cells(table)
    if sweep:
        out += ["", "### The data-size law: MLP-MNIST, p = 0.8", "",
                "Best layer (+input) per probe against the number of training images; corrupted-label / true-label "
                "subspaces.", "", "| n train | seeds | memorized | model | " + " | ".join(probes) + " |",
                "|---|---|---|---|" + "---|" * len(probes)]
        for c in sweep:
            s = c["summary"]
            out.append(f"| {c['n_train']:,} | {len(s['seeds'])} | {_memorized(s)} | {_fmt(s['model_test_accuracy'])} | "
                       + " | ".join(f"{_fmt(_acc(s, f'{p}/corrupted', 'with_input'))} / "
                                    f"{_fmt(_acc(s, f'{p}/true', 'with_input'))}" for p in probes) + " |")
        if plot_name:
            out += ["", f"![accuracy against training-set size]({plot_name})"]
    out += ["", "### Where our numbers differ from the paper's, and what the data says about why", ""]
    out += explain(cells) or ["No cell has paper numbers to compare with."]
    return "\n".join(out + differences)


def data_size_cells(table: dict[str, Any]) -> list[dict[str, Any]]:
    """MLP-MNIST p = 0.8 cells of the most common protocol/preset, by n (the data-size law)."""
    cells = [c for c in table.get("cells", {}).values() if c["row"] == "mlp-mnist" and abs(c["p"] - 0.8) < 1e-9]
    if not cells:
        return []
    groups: dict[tuple[str, str], int] = {}
    for c in cells:
        groups[(c["protocol"], c["preset"])] = groups.get((c["protocol"], c["preset"]), 0) + 1
    protocol, preset = max(groups, key=lambda g: (groups[g], g == ("clean", "fast")))
    return sorted((c for c in cells if (c["protocol"], c["preset"]) == (protocol, preset)), key=lambda c: c["n_train"])


def explain(cells: list[dict[str, Any]]) -> list[str]:
    """One bullet per cell with paper numbers: the gaps, and the measured facts that bear on them."""
    lines = []
    for c in cells:
        paper, s = c.get("paper"), c["summary"]
        if not paper:
            continue
        masc_part = "with_input" if PAPER_MASC_HAS_INPUT.get(c.get("paper_row") or "", True) else "without_input"
        mc = _acc(s, "masc/corrupted", masc_part)
        facts = [f"model {_fmt(s['model_test_accuracy'])} vs {paper['model']:.3f}"
                 f" ({_diff(s['model_test_accuracy'], paper['model'])})"]
        if mc is not None:
            facts.append(f"MASC corrupted-label {mc['mean']:.3f} vs {paper['corrupted']:.3f} "
                         f"({mc['mean'] - paper['corrupted']:+.3f})")
        n_paper = c.get("paper_n_train")
        if n_paper and c["n_train"] < n_paper:
            facts.append(f"trained on {c['n_train']:,} of the paper's {n_paper:,} images "
                         f"({100 * c['n_train'] / n_paper:.1f}%)")
        bigger = sorted((o for o in cells if o["row"] == c["row"] and o["p"] == c["p"] and o["n_train"] > c["n_train"]
                         and (o["protocol"], o["preset"]) == (c["protocol"], c["preset"])), key=lambda o: o["n_train"])
        if bigger and mc is not None:
            top = _acc(bigger[-1]["summary"], "masc/corrupted", masc_part)
            if top is not None:
                facts.append(f"the same probe at n = {bigger[-1]['n_train']:,} gives {top['mean']:.3f}")
        if not all(s["memorized"]):
            facts.append(f"{'no run' if not any(s['memorized']) else 'not every run'} reached the stop target "
                         f"({c['target_accuracy']:g}; train acc. on the corrupted labels "
                         f"{_fmt(s['train_accuracy_corrupted'], 4)} after {', '.join(map(str, s['epochs']))} epochs)")
        layers = (s["probes"].get("masc/corrupted") or {}).get("with_input", {}).get("layers", [])
        raw, hidden = s["controls"]["raw_input"].get("masc/corrupted"), _acc(s, "masc/corrupted", "without_input")
        if layers and all(x == "input" for x in layers) and raw and hidden:
            facts.append(f"its best layer is the raw input ({raw['mean']:.3f}); the best hidden layer gives "
                         f"{hidden['mean']:.3f}")
        init = s["controls"].get("random_init")
        init_hidden = _acc(init, "masc/corrupted", "without_input") if init else None
        if init_hidden and hidden:
            facts.append(f"a randomly initialized network gives {init_hidden['mean']:.3f} (training: "
                         f"{hidden['mean'] - init_hidden['mean']:+.3f} on the best hidden layer)")
        if c["preset"] != "paper":
            opt = c["optimizer"]
            facts.append(f"optimizer {opt['optimizer']} lr {opt['lr']:g} batch {opt['batch_size']} "
                         f"({opt.get('lr_schedule', 'constant')}), not the paper's")
        lines.append(f"- **{_title(c)}, p = {c['p']:g}, n = {c['n_train']:,}**: " + "; ".join(facts) + ".")
    return lines


def replace_section(text: str, section: str) -> str:
    """*text* with the marked section replaced by *section* (appended when there are no markers yet)."""
    pattern = re.compile(re.escape(MARK_BEGIN.split(" (")[0]) + r".*?" + re.escape(MARK_END), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: section, text, count=1)
    return text.rstrip("\n") + "\n\n" + section + "\n"


def plot_data_size(table: dict[str, Any], path: Path) -> Path | None:
    """Accuracy against n (log axis) per probe, corrupted- and true-label subspaces; None when there is no sweep."""
    cells = data_size_cells(table)
    if len(cells) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [c["n_train"] for c in cells]
    probes = list(dict.fromkeys(p for c in cells for p in c["probes_fitted"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, labels in zip(axes, LABEL_SETS):
        for i, p in enumerate(probes):
            stats = [_acc(c["summary"], f"{p}/{labels}", "with_input") for c in cells]
            ax.errorbar(n, [s["mean"] if s else np.nan for s in stats], yerr=[(s or {}).get("std") or 0 for s in stats],
                        marker="o", capsize=3, label=p, color=f"C{i}")
            raw = [c["summary"]["controls"]["raw_input"].get(f"{p}/{labels}") for c in cells]
            if p == "masc":
                ax.plot(n, [r["mean"] if r else np.nan for r in raw], ":", color=f"C{i}", label="masc, raw input")
        model = [c["summary"]["model_test_accuracy"] for c in cells]
        ax.errorbar(n, [m["mean"] if m else np.nan for m in model], yerr=[(m or {}).get("std") or 0 for m in model],
                    color="black", linestyle="--", marker="s", capsize=3, label="model itself")
        ax.set_xscale("log")
        ax.set_xlabel("training images (log scale)")
        ax.set_title(f"MLP-MNIST, p = 0.8: probes fitted on {labels} labels")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (best layer, +input)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_markdown(table_path: Path, md_path: Path) -> tuple[Path, Path | None]:
    table = read_table(table_path)
    plot = plot_data_size(table, table_path.parent / "data_size.png")
    rel = os.path.relpath(plot, md_path.parent) if plot else None
    section = build_section(table, plot_name=rel)
    text = md_path.read_text() if md_path.is_file() else "# Benchmark results\n"
    write_text(md_path, replace_section(text, section))
    return md_path, plot


# ------------------------------------------------------------------------------------------- console and files
def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row and rate: means (and standard deviations over seeds) of the MASC table's three numbers."""
    out = []
    for row, rate in dict.fromkeys((r["row"], r["rate"]) for r in runs):
        mine = [r for r in runs if (r["row"], r["rate"]) == (row, rate)]
        entry: dict[str, Any] = {"row": row, "rate": rate, "seeds": [r["seed"] for r in mine],
                                 "epochs": [r["epochs"] for r in mine],
                                 "memorized": all(r["stopped"] == "target" for r in mine)}
        for key in ("model_test_accuracy", "masc_corrupted", "masc_true", "masc_corrupted_hidden",
                    "masc_true_hidden", "train_accuracy_corrupted"):
            values = [r[key] for r in mine if r.get(key) is not None]
            entry[key] = float(np.mean(values)) if values else None
            entry[key + "_std"] = float(np.std(values)) if len(values) > 1 else None
        paper_row = mine[0].get("paper_row")
        rate_i = next((i for i, r in enumerate(RATES) if abs(r - rate) < 1e-9), None)
        entry["paper"] = None if paper_row not in PAPER or rate_i is None else {
            "model_test_accuracy": PAPER[paper_row]["model"][rate_i],
            "masc_corrupted": PAPER[paper_row]["corrupted"][rate_i], "masc_true": PAPER[paper_row]["true"][rate_i]}
        out.append(entry)
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    """The console table: ours (± std over seeds when several) beside the paper's numbers (in parentheses)."""
    def cell(row: dict[str, Any], key: str, paper_key: str | None = None) -> str:
        value, std = row.get(key), row.get(key + "_std")
        text = "—" if value is None else f"{value:.3f}" + (f" ± {std:.3f}" if std else "")
        if row["paper"] and paper_key:
            text += f" ({row['paper'][paper_key]:.3f})"
        return text

    lines = ["| row | p | model (paper) | MASC, corrupted-label subspaces (paper) | MASC, true-label subspaces (paper) "
             "| best hidden layer: corrupted / true | epochs | train acc. (corrupted labels) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        reached = "" if row["memorized"] else " (target not reached)"
        lines.append(f"| {row['row']} | {row['rate']:g} | {cell(row, 'model_test_accuracy', 'model_test_accuracy')} | "
                     f"{cell(row, 'masc_corrupted', 'masc_corrupted')} | {cell(row, 'masc_true', 'masc_true')} | "
                     f"{cell(row, 'masc_corrupted_hidden')} / {cell(row, 'masc_true_hidden')} | "
                     f"{', '.join(map(str, row['epochs']))} | {row['train_accuracy_corrupted']:.4f}{reached} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader polling the file never sees half of it


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text(path, json.dumps(payload, indent=1) + "\n")


def publish_run(table_path: Path, args: argparse.Namespace, job: Job, command: str, result: dict[str, Any]) -> None:
    """Merge one probed run into its cell of the table."""
    result = {**result, "paper_row": job.paper_row, "command": command}
    key = cell_key(job.row, job.rate, result["n_train"], args.protocol, args.preset) + precision_suffix(args)
    update_table(table_path, [(key, make_cell(job, args, result), {str(job.seed): result})])


def apply_threads(args: argparse.Namespace) -> None:
    """``--threads N``: torch's intra-op threads and numpy's BLAS (sklearn's probes: LDA, QDA, kNN) both set to N;
    nothing when the flag is absent. Every script that takes reproduce_paper.py's flags calls this."""
    if args.threads is None:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("accelerate", "masc_probe"):  # per-epoch state saves and per-pass plans: too chatty here
        logging.getLogger(noisy).setLevel(logging.WARNING)
    named = bool(args.row or args.run_set)
    table_path = Path(args.table) if args.table else (RESULTS_DIR / "paper_table.json" if named or args.markdown
                                                      else Path(args.work_dir) / "paper_table.json")
    if args.import_table:
        other = read_table(Path(args.import_table))
        update_table(table_path, [(k, {x: v for x, v in c.items() if x not in ("runs", "summary")}, c["runs"])
                                  for k, c in other["cells"].items()])
        print(f"merged {len(other['cells'])} cells of {args.import_table} into {table_path}")
        if not args.markdown:
            return 0
    if args.markdown:
        md, plot = write_markdown(table_path, Path(args.results_md))
        print(f"rebuilt the section of {md} from {table_path}" + (f"; plot: {plot}" if plot else "; no sweep plot"))
        return 0
    import torch

    apply_threads(args)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out) if args.out else Path(args.work_dir) / "results.json"
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__),
                                                            *(sys.argv[1:] if argv is None else argv)])
    started = time.time()
    jobs = plan(args)
    payload: dict[str, Any] = {"command": command, "settings": dict(vars(args)), "machine": machine(), "runs": [],
                               "table": []}
    tests: dict[str, tuple[Any, Any]] = {}
    for job in jobs:
        if job.dataset not in tests:
            test = load_split(job.dataset, split="test", n=args.test_subset, subset_seed=args.subset_seed)
            probing = args.stage not in ("train", "loaders")
            tests[job.dataset] = (test, batches(test, args.loader, args.device) if probing else None)
        test, test_batches = tests[job.dataset]
        if args.stage == "loaders":
            payload.setdefault("loaders", []).append(compare_loaders(args, job))
            write_json(out, payload)
            continue
        if args.stage == "masc-check":
            check = masc_check(args, job, test)
            if check is not None:
                payload.setdefault("masc_check", []).append(check)
                write_json(out, payload)
            continue
        publish = functools.partial(publish_run, table_path, args, job, command)
        result = run_one(args, job, test_batches, len(test), publish)
        if result is None:
            continue
        result["paper_row"] = job.paper_row
        payload["runs"].append(result)
        if args.stage == "train":
            log.info("%s p=%g seed=%d: %d epochs (%s), train acc %.4f, %.0f s", job.row, job.rate, job.seed,
                     result["epochs"], result["stopped"], result["train_accuracy_corrupted"], result["seconds_train"])
        else:
            log.info("%s p=%g seed=%d: %d epochs (%s), model %.3f, MASC corrupted %s, true %.3f, %.0f s", job.row,
                     job.rate, job.seed, result["epochs"], result["stopped"], result["model_test_accuracy"],
                     result["masc_corrupted"], result["masc_true"], result["seconds_total"])
            publish(result)
            payload["table"] = summarize(payload["runs"])
        payload["seconds"] = round(time.time() - started, 1)
        write_json(out, payload)
    if args.stage == "loaders":
        for entry in payload.get("loaders", []):
            print(json.dumps({k: entry[k] for k in ("row", "n_train", "epochs", "identical_weights", "median",
                                                     "dataloader_over_tensors")}, indent=1))
    if args.stage in ("train", "masc-check", "loaders") or not payload["runs"]:
        print(f"{len(payload['runs'] or payload.get('masc_check', payload.get('loaders', [])))} runs; "
              f"all numbers: {out}")
        return 0
    print(f"\n{len(payload['runs'])} runs probed, {payload['seconds']:.0f} s; {args.preset} preset, "
          f"{args.protocol} protocol")
    print(markdown(payload["table"]))
    print(f"\nthis invocation: {out}; merged table: {table_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
