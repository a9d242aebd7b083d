"""Benchmark ``masc_probe.training.train`` against a bare training loop on the same data, model and initial weights
(issue 22): seconds per epoch of both in ONE run, alternating which goes first, and train()'s time broken down.

Workloads (data from ../shared/data, loaded as benchmarks/reproduce_paper.py loads it: labels corrupted at p = 0.8
over the whole split with seed 0, then a stratified subset, decoded once and held as tensors on ``--device``):

* ``mlp-mnist``: the paper's MLP on 15,000 MNIST images, the fast preset (Adam 3e-4, batch 128, plateau schedule);
* ``cnn-cifar10``: the paper's CNN on 5,000 CIFAR-10 images, the fast preset;
* ``resnet18-cifar10``: ResNet-18 on all 50,000 CIFAR-10 images at the paper's preset (SGD lr 1e-3, momentum 0.9,
  batch 32): the GPU section (``gpu_check.sh`` runs it with ``--device cuda``), which also prints the seconds per
  epoch and the time memorizing would take at ``--memorize-epochs``.

The bare loop is what an epoch cannot do without: over the seeded order train() uses (``epoch_order``), per batch
zero_grad, forward, cross-entropy, backward, step.

``--inputs`` names the forms train() is handed the same training data in (issue 30), each timed in every repeat
beside the bare loop, the order rotating: ``tensors`` (``TensorBatches``), ``dataloader`` (a ``DataLoader`` over
the ``load_data`` dataset, batch ``batch_size``: train() takes it in the same seeded order) and ``list`` (a list of
batch dicts in data order, which train() takes as it is every epoch; its weights are compared with a bare loop over
the same list, run once after the repeats). train() runs as reproduce_paper.py runs it (no test data, only the
final checkpoint kept, the resume state written every epoch) and is stopped from outside after ``--epochs`` epochs,
so no end-of-run evaluation falls in the timed window. After each pair the two networks' weights are compared: the
bare loop takes exactly train()'s steps.

train()'s epochs are broken down by wrapping the loop module's own functions in this process: steps (the epoch's
batches), the stop rule's pass over the training data, the test pass, checkpoints, the resume state, the metrics
file, logging, and the rest. Alone, once: a full evaluation pass over the training data (what the stop rule cost on
every epoch before issue 22, and what an ``--eval-every`` epoch still pays) and the test pass, from which the cost
per epoch at each evaluation schedule is given.

    python benchmarks/bench_train.py --workloads mlp-mnist cnn-cifar10 --threads 1 --json out.json
    python benchmarks/bench_train.py --workloads resnet18-cifar10 --device cuda --epochs 2 --repeats 2
    python benchmarks/bench_train.py --workloads mlp-mnist --inputs tensors dataloader list --threads 1 --epochs 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
# workload: (model, data folder, training images (None: all), preset)
WORKLOADS: dict[str, tuple[str, str, int | None, str]] = {
    "mlp-mnist": ("mlp", "mnist", 15_000, "fast"),
    "cnn-cifar10": ("cnn", "cifar10", 5_000, "fast"),
    "resnet18-cifar10": ("resnet18-cifar", "cifar10", None, "paper"),
}
RATE, SEED = 0.8, 0
INPUTS = ("tensors", "dataloader", "list")  # the forms of training data handed to train(), see --inputs
# The loop module's functions timed inside train(), by part (names missing in a version of the loop are skipped).
# evaluate and scan are told apart by their data: the pass over the training data, or the test pass.
PARTS = {"epoch_steps": "steps", "stop_pass": "stop_pass", "realized_rate": "setup", "skip_pass": "test_pass",
         "save_checkpoint": "checkpoints", "save_model": "checkpoints", "save_resume": "resume_state",
         "write_metrics": "metrics_file", "write_margins": "margins", "_margin_row": "margins"}
BY_DATA = ("evaluate", "scan")


def _reproduce_paper() -> Any:
    spec = importlib.util.spec_from_file_location("_reproduce_paper", REPO / "benchmarks" / "reproduce_paper.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------------------- data
def load(workload: str, args: argparse.Namespace) -> dict[str, Any]:
    """The workload's training and test data as tensors on the device, its TrainConfig and initial network."""
    from masc_probe.data import TensorBatches, describe_data
    from masc_probe.training import preset_config

    rp = _reproduce_paper()
    model, folder, n_train, preset = WORKLOADS[workload]
    dataset = str(Path(args.data_root) / (args.data or folder))
    n_train = args.n_train or n_train
    t0 = time.perf_counter()
    train_data = rp.load_split(dataset, split="train", n=n_train, subset_seed=0, rate=RATE, seed=SEED)
    test_data = rp.load_split(dataset, split="test", n=args.n_test, subset_seed=0)
    info = describe_data(train_data)
    device = torch.device(args.device)
    train = TensorBatches.from_data(train_data, device=device)
    test = TensorBatches.from_data(test_data, device=device)
    input_size = [int(s) for s in train.x.shape[1:]]
    overrides: dict[str, Any] = {
        "seed": SEED, "num_classes": info["num_classes"], "progress": False, "cpu": device.type == "cpu",
        "corruption": {"mode": "random", "rate": RATE, "seed": SEED}, "preprocessing": info["preprocessing"],
        "checkpoint_dense_until": -1, "checkpoint_every": 0, **train_options(args)}  # as reproduce_paper.py
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    config = preset_config(model, rp._family(dataset), preset=preset, **overrides)
    init = rp.initial_model(model, SEED, info["num_classes"], input_size)
    return {"workload": workload, "model": model, "dataset": dataset, "n_train": train.num_samples,
            "n_test": test.num_samples, "train": train, "test": test, "config": config, "train_dataset": train_data,
            "init": {k: v.detach().clone() for k, v in init.state_dict().items()}, "net": init,
            "seconds_data": round(time.perf_counter() - t0, 1), "device": device}


def train_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields the command line sets (only those given: the loop of an older checkout has fewer)."""
    out: dict[str, Any] = {}
    if args.mixed_precision != "no":
        out["mixed_precision"] = args.mixed_precision
    if args.compile:
        out["compile"] = True
    return out


def train_input(work: dict[str, Any], form: str) -> Any:
    """The workload's training data in the form *form* of :data:`INPUTS`."""
    bs = work["config"].batch_size
    if form == "dataloader":
        from torch.utils.data import DataLoader

        return DataLoader(work["train_dataset"], batch_size=bs)
    if form == "list":
        return list(work["train"].with_batches(bs))
    return work["train"]


def fresh(work: dict[str, Any]) -> torch.nn.Module:
    """The workload's initial network (the same weights every time)."""
    net = copy.deepcopy(work["net"])
    net.load_state_dict(work["init"])
    return net


# ------------------------------------------------------------------------------------------------------ the bare loop
def bare_loop(work: dict[str, Any], epochs: int, batches: list[dict[str, torch.Tensor]] | None = None,
              ) -> tuple[list[float], list[float], dict[str, torch.Tensor]]:
    """Seconds of each epoch of the bare loop (wall clock, and this process's CPU time), and its final weights. The
    arithmetic is train()'s (per-sample losses averaged, the optimizer made by make_optimizer, the memory format and
    autocast train() chooses), nothing else. Over *batches* as they are every epoch when given, else over the
    seeded order."""
    from masc_probe.data._batches import epoch_order
    from masc_probe.training import make_optimizer

    config, device, data = work["config"], work["device"], work["train"]
    net = fresh(work).to(device)
    fmt = _memory_format(net, device)
    if fmt is not None:
        net = net.to(memory_format=fmt)
    forward = torch.compile(net) if getattr(config, "compile", False) else net
    optimizer = make_optimizer(net.parameters(), config.optimizer, lr=config.lr, momentum=config.momentum)
    autocast = _autocast(config, device)
    x_all, y_all, n, bs = data.x, data.y, data.num_samples, config.batch_size
    seconds, cpu = [], []
    for epoch in range(1, epochs + 1):
        t, c = _sync(device), time.process_time()
        net.train()
        order = epoch_order(n, config.seed, epoch).to(device)
        for start in range(0, n, bs) if batches is None else range(len(batches)):
            if batches is None:
                pick = order[start:start + bs]
                x, y = x_all[pick], y_all[pick]
            else:
                x, y = batches[start]["image"].to(device), batches[start]["label"].to(device)
            if fmt is not None:
                x = x.contiguous(memory_format=fmt)
            with autocast():
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y, reduction="none").mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(_sync(device) - t)
        cpu.append(time.process_time() - c)
    return seconds, cpu, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _memory_format(net: torch.nn.Module, device: torch.device) -> torch.memory_format | None:
    """The memory format train() gives this network on this device (None: the default, or an older loop)."""
    from masc_probe.training import _loop

    choose = getattr(_loop, "_memory_format", None)
    return choose(net, device) if choose is not None else None


def _autocast(config: Any, device: torch.device) -> Callable[[], Any]:
    if config.mixed_precision == "no":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


# ------------------------------------------------------------------------------------------------------ train()
class _Stop(Exception):
    """Raised after the timed epochs: train() stops there without its end-of-run evaluation."""


@contextlib.contextmanager
def instrumented(work: dict[str, Any], epochs: int) -> Iterator[dict[str, Any]]:
    """Wrap the loop module's functions: seconds per part, epoch boundaries, and a stop after *epochs* epochs."""
    from masc_probe.training import _loop

    device, train_x, test_x = work["device"], work["train"].x, work["test"].x
    rec: dict[str, Any] = {"parts": {}, "calls": {}, "epoch_ends": [], "cpu_ends": [], "first_step": None}
    saved: dict[str, Any] = {}

    def add(part: str, seconds: float) -> None:
        if rec["first_step"] is None and part != "steps":
            part = "setup"  # before the first epoch: the realized-rate pass, checkpoint 0
        rec["parts"][part] = rec["parts"].get(part, 0.0) + seconds
        rec["calls"][part] = rec["calls"].get(part, 0) + 1

    def timed(name: str, fn: Callable[..., Any], part: Callable[..., str]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t = _sync(device)
            if name == "epoch_steps" and rec["first_step"] is None:
                rec["first_step"], rec["first_cpu"] = t, time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                end = _sync(device)
                add(part(*a, **kw), end - t)
                if name == "write_metrics" and rec["first_step"] is not None:
                    rec["epoch_ends"].append(end)
                    rec["cpu_ends"].append(time.process_time())
                    if len(rec["epoch_ends"]) == epochs:
                        raise _Stop

        return wrapper

    def which_pass(model: Any, data: Any, *a: Any, **kw: Any) -> str:
        x = getattr(data, "x", None)
        return "train_pass" if x is train_x else "test_pass" if x is test_x else "other_pass"

    for name, part in PARTS.items():
        if hasattr(_loop, name):
            saved[name] = getattr(_loop, name)
            setattr(_loop, name, timed(name, saved[name], lambda *a, _p=part, **kw: _p))
    for name in BY_DATA:
        if hasattr(_loop, name):
            saved[name] = getattr(_loop, name)
            setattr(_loop, name, timed(name, saved[name], which_pass))
    saved["logger"] = _loop.logger
    _loop.logger = _TimedLogger(saved["logger"], add)
    try:
        yield rec
    finally:
        for name, value in saved.items():
            setattr(_loop, name, value)


class _TimedLogger:
    """The loop's logger, its calls timed as the part "logging"."""

    def __init__(self, inner: logging.Logger, add: Callable[[str, float], None]) -> None:
        self._inner, self._add = inner, add

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._inner, name)
        if name not in ("debug", "info", "warning"):
            return fn

        def call(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self._add("logging", time.perf_counter() - t)

        return call


def timed_train(work: dict[str, Any], epochs: int, folder: Path, data: Any = None,
                ) -> tuple[list[float], list[float], dict[str, Any], dict[str, torch.Tensor]]:
    """Seconds of each of train()'s first *epochs* epochs (wall clock, and CPU time) on *data* (default: the
    workload's tensors), its parts, and its weights after them."""
    from masc_probe.training import train

    net = fresh(work)
    config = work["config"].replace(output_dir=str(folder), resume=False)
    t0 = _sync(work["device"])
    with instrumented(work, epochs) as rec:
        try:
            train(net, work["train"] if data is None else data, config=config)
        except _Stop:
            pass
    ends = [rec["first_step"], *rec["epoch_ends"]]
    seconds = [b - a for a, b in zip(ends, ends[1:])]
    cpu_ends = [rec["first_cpu"], *rec["cpu_ends"]]
    cpu = [b - a for a, b in zip(cpu_ends, cpu_ends[1:])]
    if len(seconds) != epochs:
        raise SystemExit(f"bench_train: train() ran {len(seconds)} epochs, expected {epochs} (it memorized?)")
    parts = {k: v for k, v in rec["parts"].items() if k != "setup"}
    parts["rest"] = sum(seconds) - sum(parts.values())
    # setup: the Accelerator, prepare, the realized-rate pass and checkpoint 0 — once per run, not per epoch
    info = {"parts": parts, "calls": {k: v for k, v in rec["calls"].items() if k != "setup"},
            "setup": rec["first_step"] - t0}
    return seconds, cpu, info, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def alone(work: dict[str, Any], net: torch.nn.Module) -> dict[str, float]:
    """Seconds of one full evaluation pass over the training data and one over the test data (batch
    eval_batch_size), each alone, with the trained network; ``*_cpu``: this process's CPU seconds of each."""
    from masc_probe.training import evaluate

    device, bs = work["device"], work["config"].eval_batch_size
    net = net.to(device)
    out = {}
    for name, data in (("train_pass", work["train"]), ("test_pass", work["test"])):
        batches = data.with_batches(bs)
        t, c = _sync(device), time.process_time()
        evaluate(net, batches, device=device)
        out[name] = _sync(device) - t
        out[f"{name}_cpu"] = time.process_time() - c
    return out


def default_eval_every() -> int | None:
    """--eval-every's default in this checkout (None: an older loop evaluates the test data every epoch)."""
    from masc_probe.training import TrainConfig

    return getattr(TrainConfig(), "eval_every", None)


# ---------------------------------------------------------------------------------------------------------- run
def run_workload(workload: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    work = load(workload, args)
    forms = args.inputs
    log(f"{workload}: {work['n_train']} training images ({work['seconds_data']} s to load), {args.repeats} x "
        f"{args.epochs} epochs each of the bare loop and train() on {', '.join(forms)}, the order rotating")
    pairs, lists = [], {}
    for r in range(args.repeats):
        runs = ["bare", *forms]
        order = runs[r % len(runs):] + runs[:r % len(runs)]
        pair: dict[str, Any] = {"order": order, "inputs": {}}
        weights = {}
        for which in order:
            if which == "bare":
                pair["bare"], pair["bare_cpu"], weights["bare"] = bare_loop(work, args.epochs)
                continue
            data = train_input(work, which)
            seconds, cpu, info, weights[which] = timed_train(work, args.epochs, scratch / f"{workload}-{r}-{which}",
                                                             data)  # fmt: skip
            pair["inputs"][which] = {"train": seconds, "train_cpu": cpu, "train_info": info}
            if which == "list":
                lists[r] = data
        for which, form in pair["inputs"].items():
            form["ratio"] = statistics.mean(form["train"]) / statistics.mean(pair["bare"])
            form["ratio_cpu"] = statistics.mean(form["train_cpu"]) / statistics.mean(pair["bare_cpu"])
            if which != "list":  # the list's own order: compared with a bare loop over it below
                form.update(_compare(weights["bare"], weights[which]))
            log(f"  repeat {r} ({' then '.join(order)}): bare {_fmt_list(pair['bare'])} s/epoch "
                f"(CPU {_fmt_list(pair['bare_cpu'])}), train() on {which} {_fmt_list(form['train'])} s/epoch "
                f"(CPU {_fmt_list(form['train_cpu'])}), ratio {form['ratio']:.3f} (CPU time {form['ratio_cpu']:.3f})"
                + (f", same weights {form['same_weights']}" if "same_weights" in form else ""))
        pair.update(pair["inputs"][forms[0]])  # the first form's numbers, where results before --inputs had them
        pairs.append(pair)
    if lists:  # the list's weights against a bare loop over the same list (the last repeat's train() weights)
        _, _, bare_list = bare_loop(work, args.epochs, batches=lists[max(lists)])
        same = _compare(bare_list, weights["list"])
        for pair in pairs:
            if "list" in pair["inputs"]:
                pair["inputs"]["list"].update(same)
        log(f"  list: same weights as a bare loop over the same list: {same['same_weights']}")
    for pair in pairs:
        pair.update({k: pair["inputs"][forms[0]][k] for k in ("same_weights", "max_abs_weight_difference")})
    weights["train"] = weights[forms[0]]
    net = fresh(work)
    net.load_state_dict(weights["train"])
    passes = alone(work, net)
    bare = statistics.median(statistics.mean(p["bare"]) for p in pairs)
    trained = statistics.median(statistics.mean(p["train"]) for p in pairs)
    parts: dict[str, float] = {}
    for p in pairs:
        for k, v in p["train_info"]["parts"].items():
            parts[k] = parts.get(k, 0.0) + v / (len(pairs) * args.epochs)
    k = default_eval_every()
    # What an evaluation epoch adds to a steady epoch (the full pass over the training data and the test pass), per
    # epoch of a run: every epoch before issue 22, every k-th with --eval-every k.
    every = sorted({1, 5, 10, *([k] if k else [])})
    scheduled = {str(e): (trained + (passes["train_pass"] + passes["test_pass"]) / e) / bare for e in every}
    bare_cpu = statistics.median(statistics.mean(p["bare_cpu"]) for p in pairs)
    trained_cpu = statistics.median(statistics.mean(p["train_cpu"]) for p in pairs)
    scheduled_cpu = {str(e): (trained_cpu + (passes["train_pass_cpu"] + passes["test_pass_cpu"]) / e) / bare_cpu
                     for e in every}
    inputs = {}
    for which in forms:
        mine = [p["inputs"][which] for p in pairs]
        wall = statistics.median(statistics.mean(m["train"]) for m in mine)
        cpu = statistics.median(statistics.mean(m["train_cpu"]) for m in mine)
        inputs[which] = {"seconds_per_epoch": wall, "cpu_seconds_per_epoch": cpu, "ratio_of_medians": wall / bare,
                         "ratio_cpu_of_medians": cpu / bare_cpu,
                         "ratio_median": statistics.median(m["ratio"] for m in mine),
                         "ratio_cpu_median": statistics.median(m["ratio_cpu"] for m in mine),
                         "same_weights": all(m["same_weights"] for m in mine)}
    result = {
        "workload": workload, "model": work["model"], "dataset": work["dataset"], "n_train": work["n_train"],
        "n_test": work["n_test"], "config": {key: v for key, v in work["config"].to_dict().items()
                                             if key in ("optimizer", "lr", "batch_size", "eval_batch_size",
                                                        "lr_schedule", "target_accuracy", "mixed_precision",
                                                        "compile", "eval_every")},
        "device": str(work["device"]), "epochs": args.epochs, "repeats": pairs,
        "seconds_per_epoch": {"bare": bare, "train": trained},
        "ratio_median": statistics.median(p["ratio"] for p in pairs),
        "ratio_cpu_median": statistics.median(p["ratio_cpu"] for p in pairs),
        "cpu_seconds_per_epoch": {"bare": bare_cpu, "train": trained_cpu},
        "ratio_of_medians": trained / bare,
        "same_weights": all(p["same_weights"] for p in pairs),
        "train_parts_per_epoch": parts,
        "alone": passes,
        "ratio_with_evaluation_every": scheduled,
        "ratio_cpu_with_evaluation_every": scheduled_cpu,
        "eval_every_default": k,
        "seconds_data": work["seconds_data"],
        "inputs": inputs,
    }
    if workload == "resnet18-cifar10":
        e = args.memorize_epochs
        result["memorize_estimate"] = {"epochs": e, "hours": trained * e / 3600, "hours_at_500": trained * 500 / 3600}
    return result


def show(result: dict[str, Any]) -> None:
    s = result["seconds_per_epoch"]
    log(f"{result['workload']} on {result['device']}: bare {s['bare']:.2f} s/epoch, train() {s['train']:.2f} s/epoch "
        f"(median of {len(result['repeats'])}): ratio {result['ratio_median']:.3f} (median of the pairs' ratios; "
        f"of their CPU times {result['ratio_cpu_median']:.3f}), same weights: {result['same_weights']}")
    parts = result["train_parts_per_epoch"]
    log("  train() per epoch: " + ", ".join(f"{k} {v:.3f} s" for k, v in sorted(parts.items(), key=lambda x: -x[1])))
    a = result["alone"]
    log(f"  alone: a full pass over the training data {a['train_pass']:.2f} s, the test pass {a['test_pass']:.2f} s; "
        "with both every k epochs the ratio would be "
        + ", ".join(f"k={k}: {v:.3f}" for k, v in result["ratio_with_evaluation_every"].items())
        + " (CPU time: " + ", ".join(f"k={k}: {v:.3f}" for k, v in result["ratio_cpu_with_evaluation_every"].items())
        + ")")
    if len(result["inputs"]) > 1:
        log(f"  by input (median of {len(result['repeats'])} repeats; ratio to the bare loop's median, wall / CPU): "
            + ", ".join(f"{k} {v['seconds_per_epoch']:.2f} s/epoch, {v['ratio_of_medians']:.3f} / "
                        f"{v['ratio_cpu_of_medians']:.3f} (same weights {v['same_weights']})"
                        for k, v in result["inputs"].items()))
    if "memorize_estimate" in result:
        m = result["memorize_estimate"]
        log(f"  {result['model']} on {Path(result['dataset']).name} (paper preset): {s['train']:.1f} s per epoch with "
            f"train(); memorizing in {m['epochs']} epochs takes about {m['hours']:.2f} h ({m['hours_at_500']:.2f} h "
            "at the 500-epoch cap)")


def _compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Whether two networks' weights are the same bits, and their largest difference."""
    return {"same_weights": all(torch.equal(a[k], b[k]) for k in a),
            "max_abs_weight_difference": max(float((a[k].double() - b[k].double()).abs().max())
                                              for k in a if a[k].numel())}


def _fmt_list(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def log(text: str) -> None:
    print(text, flush=True)


def machine(args: argparse.Namespace) -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=None,
                   help="default: mlp-mnist cnn-cifar10 on the CPU, resnet18-cifar10 on cuda")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per run (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="pairs of runs, alternating which goes first (default 3)")
    p.add_argument("--inputs", nargs="+", choices=INPUTS, default=["tensors"],
                   help="the forms train() is handed the training data in, each timed beside the bare loop "
                        "(default: tensors)")
    p.add_argument("--n-train", type=int, default=None, help="training images (default: the workload's)")
    p.add_argument("--n-test", type=int, default=None, help="test images (default: all)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (train()'s --compile)")
    p.add_argument("--memorize-epochs", type=int, default=231,
                   help="epochs the estimate of the time to memorize assumes (default 231: CNN-CIFAR10 n=5,000's "
                        "recorded run, a stand-in until a ResNet-18 run is recorded)")
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--data", default=None, metavar="FOLDER",
                   help="another data folder under --data-root for the workload's network (gpu_check's dry run: "
                        "mnist, sparing it the decoding of CIFAR-10's 60,000 JPEG images)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    for name in ("epochs", "repeats", "n_train", "n_test", "threads", "batch_size", "memorize_epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.workloads is None:
        args.workloads = ["resnet18-cifar10"] if args.device.startswith("cuda") else ["mlp-mnist", "cnn-cifar10"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("masc_probe").setLevel(logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_train-") as scratch:
        for workload in args.workloads:
            result = run_workload(workload, args, Path(scratch))
            show(result)
            results.append(result)
    payload = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(args),
               "results": results}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    # On the CPU the bare loop must take exactly train()'s steps; CUDA kernels (atomics in convolution backward) need
    # not give the same bits twice, so there the difference is reported, not judged.
    return 0 if all(r["same_weights"] for r in results) or args.device.startswith("cuda") else 1


if __name__ == "__main__":
    raise SystemExit(main())
