"""MASC over training: every kept checkpoint of a reproduce_paper.py run (``--checkpoints dense``) probed with MASC on
both label sets, beside the run's own epoch-0 network (init) and the raw input, at the paper's 0.99 size and at the
size each network selects without clean labels (benchmarks/selection.py's probing, reused).

The init and input controls do not change with the epoch: they are fitted once, in the same ProbeRunner as the
final checkpoint; every other checkpoint is fitted alone (hidden layers only). Per checkpoint the results hold the
model's test accuracy, its accuracy on the training images against the labels it was trained on (and the true
ones), and per layer and label set MASC at 0.99 and at the network's selected size (the noisy rule's choice, made
on the choosing half of the test images; accuracy on all test images, from the report's profile), plus each
network's selection summary (noisy / clean / 0.99 rule / oracle, on the evaluation half). The epoch of
memorization is the run's stop epoch when it stopped on its target. The figure (MASC by layer against epoch,
trained vs init vs raw input, at 0.99 and at the selected size) is drawn from the results file alone. Layers are
read in eval mode (selection.probe_run's runner): the paper's MLP has no BatchNorm or dropout, so the authors'
train-mode reading gives the same values; for their ResNet-18 it would not.

Cost, measured on one CPU thread (2 cores shared, load about 5), 6,000 training and 10,000 test images: 23 s per
checkpoint, 46 s for the one probed with the controls.

    python benchmarks/dynamics.py --row mlp-mnist --rates 0.8 --subset 15000 --seeds 0 --protocol authors \\
        --checkpoints dense --work-dir runs/paper --threads 1          # probe; results + figure
    python benchmarks/dynamics.py --plot benchmarks/results/dynamics/<run>/dynamics.json   # the figure again

Own options: ``--out-dir`` (default benchmarks/results/dynamics; each run gets ``<out-dir>/<run>/`` with
dynamics.json, dynamics.png and the run's metrics.jsonl and config.json, never its weights), ``--budget-s`` (stop
starting checkpoints once the next would end past it: the final and the first checkpoint go first, then the others
spread coarse to fine, so a cut leaves an even grid; the skipped epochs are listed), ``--plot FILE``. Every other
flag is reproduce_paper.py's and names one run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "benchmarks" / "results" / "dynamics"
NETWORKS = ("trained", "init", "input")
LABEL_SETS = ("corrupted", "true")
PAPER_SIZE = 0.99
RULE = "noisy"  # the selected size: chosen against labels re-drawn by the run's recipe (no clean labels)
sys.path.insert(0, str(REPO / "benchmarks"))


def probe_order(epochs: list[int]) -> list[int]:
    """The order checkpoints are probed in: the last, the first, then each next one farthest (in epochs) from
    every one already taken (ties: the earlier epoch), so that a time limit leaves an even grid.

    >>> probe_order([0, 2, 4, 6, 8, 10, 20])
    [20, 0, 10, 4, 2, 6, 8]
    """
    left = sorted(set(epochs))
    if not left:
        return []
    order = [left.pop()] + ([left.pop(0)] if left else [])
    while left:
        best = max(left, key=lambda e: (min(abs(e - o) for o in order), -e))
        order.append(best)
        left.remove(best)
    return order


def _network_of(row: dict[str, Any]) -> str:
    return row["control"] or ("input" if row["layer"] == "input" else "trained")


def layer_curves(report: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Per network: ``curves`` (label set → layer → {"0.99", "selected"}: MASC on all test images) and
    ``selected_size`` (label set → the size the network chose under RULE).

    Args:
        report: The RULE's ProbeReport (its ``profile``: accuracy at every size, every network and layer).
        summary: ``selection.summarize`` of the same reports (each network's choice per label set).
    """
    out: dict[str, Any] = {}
    for labels in LABEL_SETS:
        series = summary["series"].get(labels, {})
        for network in NETWORKS:
            chosen = (series.get(network) or {}).get(RULE)
            if chosen is None:
                continue
            mine = out.setdefault(network, {"curves": {}, "selected_size": {}})
            mine["selected_size"][labels] = chosen["size"]
            layers = mine["curves"].setdefault(labels, {})
            for row in report.profile:
                if row["labels"] != labels or _network_of(row) != network:
                    continue
                entry = layers.setdefault(row["layer"], {})
                if row["size"] == PAPER_SIZE:
                    entry["0.99"] = row["accuracy"]
                if row["size"] == chosen["size"]:
                    entry["selected"] = row["accuracy"]
    return out


def model_accuracy(net: Any, batches: Any) -> dict[str, float]:
    """The network's own accuracy (eval mode) on *batches* against their given and their true labels."""
    import torch

    net.eval()
    hits = {"label": 0, "true_label": 0}
    n = 0
    with torch.no_grad():
        for batch in batches:
            pred = net(batch["image"]).argmax(1)
            for key in hits:
                hits[key] += int((pred == batch[key].to(pred.device)).sum())
            n += len(pred)
    return {"given": hits["label"] / n, "true": hits["true_label"] / n}


def probe_checkpoint(sel: Any, run: dict[str, Any], path: Path, run_dir: Path, *, epoch: int, seed: int,
                     layers: list[str], controls: bool, device: str) -> dict[str, Any]:
    """One checkpoint through selection.probe_run: its per-layer curves, selection summary and own accuracies."""
    from masc_probe import load_model

    net = load_model(path).to(device)
    t0 = time.perf_counter()
    hidden = [x for x in layers if x != "input"]  # the raw input is a control: fitted once, with the controls
    got = sel.probe_run(run_dir, net, run["train"], run["test"], seed=seed, num_classes=run["num_classes"],
                        corruption=run["corruption"], layers=layers if controls else hidden,
                        extra={"epoch": epoch}, controls=controls)
    report = got["reports"][RULE]
    summary = sel.summarize(got["reports"])
    train_acc = model_accuracy(net, run["train"])
    entry = {"epoch": epoch, "model_test_accuracy": report.model_test_accuracy,
             "train_accuracy_given": train_acc["given"], "train_accuracy_true": train_acc["true"],
             "curves": layer_curves(report, summary),
             "selection": {labels: s for labels, s in summary["series"].items()},
             "n_choose": summary["n_choose"], "n_eval": summary["n_eval"],
             "seconds": round(time.perf_counter() - t0, 1)}
    if controls:
        entry["controls"] = report.controls
    return entry


def memorization(config: dict[str, Any], epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's stop (epoch, reason, target) and the first probed checkpoint whose own accuracy on the given
    labels reaches the target."""
    meta = config["masc_probe"]
    target = meta["training"]["target_accuracy"]
    stopped = meta["training"].get("stopped")
    reached = [e["epoch"] for e in epochs if e["train_accuracy_given"] >= target]
    return {"memorized_epoch": meta["epoch"] if stopped == "target" else None, "stopped": stopped,
            "last_epoch": meta["epoch"], "target_accuracy": target,
            "first_checkpoint_at_target": min(reached) if reached else None}


def _split(entries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-epoch rows of the trained network (by epoch) and the controls' curves and selections (fitted once)."""
    rows, controls = [], {}
    for e in sorted(entries, key=lambda e: e["epoch"]):
        trained = e["curves"].get("trained", {})
        rows.append({**{k: v for k, v in e.items() if k not in ("curves", "selection", "controls")},
                     "curves": trained.get("curves", {}), "selected_size": trained.get("selected_size", {}),
                     "selection": {lab: s.get("trained") for lab, s in e["selection"].items()}})
        if "controls" in e:
            controls = {"fitted_with_epoch": e["epoch"], "records": e["controls"],
                        **{net: {**e["curves"].get(net, {}),
                                 "selection": {lab: s.get(net) for lab, s in e["selection"].items()}}
                           for net in ("init", "input")},
                        "differences": {lab: s.get("differences") for lab, s in e["selection"].items()}}
    return rows, controls


def run(argv: list[str], out_dir: Path, budget_s: float | None, command: str) -> Path:
    """Probe the checkpoints of the one run *argv* names (reproduce_paper.py's flags); the results file's path."""
    import reproduce_paper as rp
    import selection as sel
    import torch

    from masc_probe import load_model
    from masc_probe.training._run_folder import run_checkpoints

    args = rp.parse_args(argv)
    rp.apply_threads(args)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    jobs = rp.plan(args)
    if len(jobs) != 1:
        raise SystemExit(f"dynamics.py: expected flags naming one run (one row, rate, subset, seed), got {len(jobs)}")
    job = jobs[0]
    run_dir = rp.run_dir(args, job)
    checkpoints = dict(run_checkpoints(run_dir))
    if not rp.finished(run_dir) or not checkpoints:
        raise SystemExit(f"dynamics.py: expected a finished run folder with checkpoints/epoch-NNNN, got {run_dir}")
    config = json.loads((run_dir / "config.json").read_text())
    dest = out_dir / run_dir.name
    dest.mkdir(parents=True, exist_ok=True)
    from masc_probe._atomic import write_bytes

    for name in ("metrics.jsonl", "config.json"):  # the run's record beside its dynamics (never its weights)
        write_bytes(dest / name, (run_dir / name).read_bytes())
    t0 = time.perf_counter()
    data = sel.run_inputs(rp, args, job)
    layers = rp.probe_layers(load_model(run_dir))
    head = {"run": run_dir.name, "command": command, "row": job.row, "rate": job.rate, "seed": job.seed,
            "n_train": data["n_train"], "n_test": data["n_test"], "protocol": args.protocol, "preset": args.preset,
            "training": {k: config["masc_probe"]["training"].get(k) for k in
                         ("optimizer", "lr", "momentum", "batch_size", "lr_schedule", "max_epochs", "protocol",
                          "mixed_precision")},
            "extraction": "eval mode (ProbeRunner's clean protocol)", "rule": RULE, "sizes": ["0.99", "selected"],
            "layers": [x for x in layers if x != "input"], "device": str(args.device), "machine": rp.machine(),
            "checkpoints_kept": sorted(checkpoints)}
    entries: list[dict[str, Any]] = []
    order, timings = probe_order(list(checkpoints)), []
    path = dest / "dynamics.json"
    for i, epoch in enumerate(order):
        elapsed = time.perf_counter() - t0
        guess = max(timings) if timings else entries[0]["seconds"] if entries else 0.0
        if budget_s is not None and i > 0 and elapsed + guess > budget_s:
            head["skipped_epochs"] = sorted(order[i:])
            head["skipped_reason"] = f"--budget-s {budget_s:g}: the next checkpoint would end past it"
            break
        entry = probe_checkpoint(sel, data, checkpoints[epoch], run_dir, epoch=epoch, seed=job.seed, layers=layers,
                                 controls=i == 0, device=args.device)
        if i > 0:
            timings.append(entry["seconds"])
        entries.append(entry)
        write(path, head, entries, config, time.perf_counter() - t0)
        print(f"epoch {epoch}: model {entry['model_test_accuracy']:.3f}, train (given labels) "
              f"{entry['train_accuracy_given']:.4f}, {entry['seconds']:.1f} s", flush=True)
    write(path, head, entries, config, time.perf_counter() - t0)  # with the skipped epochs, if any
    plot(path)
    return path


def write(path: Path, head: dict[str, Any], entries: list[dict[str, Any]], config: dict[str, Any],
          seconds: float) -> None:
    """The results file, rewritten whole (atomically) after every checkpoint."""
    from masc_probe._atomic import write_text

    rows, controls = _split(entries)
    payload = {"schema_version": 1, **head, **memorization(config, rows), "epochs": rows, "controls": controls,
               "seconds": round(seconds, 1)}
    write_text(path, json.dumps(payload, indent=1) + "\n")


def _size_text(size: Any) -> str:
    return "—" if size is None else f"{size:g}" if isinstance(size, float) else f"k={size}"


def draw(results: dict[str, Any]) -> Any:
    """The figure of a results file. Top: the model itself (test accuracy; training accuracy on its given and its
    true labels). Below, rows = label sets, columns = 0.99 and the selected size: per layer the trained network's
    MASC against epoch (solid) and its init control (dashed, same colour), the raw input (black dotted); the epoch
    of memorization (red) in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, controls = results["epochs"], results["controls"]
    epochs = [e["epoch"] for e in rows]
    fig = plt.figure(figsize=(12, 10))
    grid = fig.add_gridspec(3, 2, height_ratios=[0.6, 1, 1])
    top = fig.add_subplot(grid[0, :])
    for key, style, name in (("model_test_accuracy", "s-", "model's own test accuracy"),
                             ("train_accuracy_given", "o-", "training accuracy, given labels"),
                             ("train_accuracy_true", "^-", "training accuracy, true labels")):
        top.plot(epochs, [e[key] for e in rows], style, ms=3, color="grey" if "test" in key else None, label=name)
    top.set_title("the model itself", fontsize=9)
    top.legend(fontsize=7, loc="best")
    axes = [[fig.add_subplot(grid[r + 1, c], sharex=top) for c in range(2)] for r in range(2)]
    for r, labels in enumerate(LABEL_SETS):
        for c, size in enumerate(results["sizes"]):
            ax = axes[r][c]
            for i, layer in enumerate(results["layers"]):
                ys = [e["curves"].get(labels, {}).get(layer, {}).get(size, float("nan")) for e in rows]
                ax.plot(epochs, ys, "o-", color=f"C{i}", ms=3, label=f"{layer}, trained")
                init = controls.get("init", {}).get("curves", {}).get(labels, {}).get(layer, {}).get(size)
                if init is not None:
                    ax.axhline(init, color=f"C{i}", ls="--", lw=1, label=f"{layer}, init (epoch 0)")
            raw = controls.get("input", {}).get("curves", {}).get(labels, {}).get("input", {}).get(size)
            if raw is not None:
                ax.axhline(raw, color="black", ls=":", lw=1.5, label="raw input")
            where = "at 0.99"
            if size == "selected":
                where = f"at each network's selected size ({results['rule']} rule)"
                sizes = {net: controls.get(net, {}).get("selected_size", {}).get(labels) for net in ("init", "input")}
                ax.text(0.01, 0.02, f"init: {_size_text(sizes['init'])}, raw input: {_size_text(sizes['input'])}",
                        transform=ax.transAxes, fontsize=7)
            ax.set_title(f"MASC, {labels}-label subspaces, {where}", fontsize=9)
            ax.set_ylabel("test accuracy")
    for ax in [top, *axes[0], *axes[1]]:
        ax.grid(alpha=0.3)
        if results.get("memorized_epoch") is not None:
            ax.axvline(results["memorized_epoch"], color="red", ls="-.", lw=1,
                       label=f"memorized (epoch {results['memorized_epoch']})")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    stop = results.get("memorized_epoch")
    fig.suptitle(f"{results['run']}: " + (f"memorized at epoch {stop}" if stop is not None else
                                          f"not memorized (stopped: {results.get('stopped')}, epoch "
                                          f"{results.get('last_epoch')})"), fontsize=10)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=5, fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return fig


def plot(path: Path) -> Path:
    """Draw *path*'s figure beside it (``dynamics.png`` for ``dynamics.json``), from the results file alone."""
    import matplotlib.pyplot as plt

    from masc_probe._atomic import write_with

    fig = draw(json.loads(Path(path).read_text()))
    out = Path(path).with_suffix(".png")
    write_with(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # the rest are reproduce_paper.py's
    parser.add_argument("--plot", default=None)
    parser.add_argument("--out-dir", default=str(OUT_DIR))
    parser.add_argument("--budget-s", type=float, default=None)
    ns, rest = parser.parse_known_args(argv)
    if ns.plot:
        print(f"dynamics: figure {plot(Path(ns.plot))}")
        return 0
    path = run(rest, Path(ns.out_dir), ns.budget_s, "python benchmarks/dynamics.py " + shlex.join(argv))
    print(f"dynamics: results {path}, figure {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
