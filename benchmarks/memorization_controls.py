"""What MASC reads without any training: the no-training controls of the 60,000-image MLP-MNIST headline.

Issue "Does memorization keep, add or remove what MASC reads?", item 1. Every experiment reads the layers of one
network (at its initial weights, or a memorizer that ``reproduce_paper.py`` trained) over all 60,000 MNIST training
images and the 10,000 test images, fits MASC, nearest class mean and QDA per layer and label set, and scores the
clean test set. One MASC fit (one eigendecomposition per class) serves every threshold of ``THRESHOLDS``. QDA (a
d × d covariance per class: about 6 minutes per 2,048-wide layer on one thread here) only where the issue asks for
it: the seed-0 init network and the CNN.

Experiments (``--only`` picks some by name prefix; each one's JSON is cached in ``--work-dir`` and skipped on a rerun,
so the script resumes where it stopped):

- ``init-s{0..4}``: the paper's MLP at its initial weights for 5 seeds (built as ``train()`` builds a run's network:
  ``set_seed(seed)`` then ``load_model``), labels corrupted at p = 0.8 with the same seed (exactly a clean-protocol
  run's labels and initial weights).
- ``init-s0-p{0,0.2,0.4,0.6}``: the seed-0 init network under other corruption rates.
- ``width-{0.25,0.5,2}-s0``: random MLPs at ¼, ½ and 2× the paper's widths (128, 512, 2048, 2048); 1× is init-s0.
- ``linear-s0``: the seed-0 init network with its ReLUs removed: random linear projections of the same widths.
- ``trained-s{seed}``: the memorizer of ``runs/paper/mlp-mnist-fast-nall-p0.8-s{seed}`` (when it has finished), so the
  threshold sweep compares it with its own init (``init-s{seed}``); ``trained-p{p}-s{seed}`` the same for the other
  rates' runs (p = 0: the network trained on clean labels, the upper reference).
- ``rawn-{1500,6000,15000,60000}``: the raw input alone at the n-sweep's sizes (stratified subsets, seed 0, as
  ``reproduce_paper.py --subset``), with k_c per class and MASC at fixed counts: does a growing k_c explain why
  raw-input MASC falls as n grows?
- ``cnn-fmnist-init-s0``: the paper's CNN at its initial weights on all 60,000 Fashion-MNIST images, p = 0.8.

    OMP_NUM_THREADS=1 python benchmarks/memorization_controls.py --work-dir runs/memorization
    python benchmarks/memorization_controls.py --work-dir runs/memorization --collect   # -> results/memorization.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import reproduce_paper as rp  # noqa: E402  (the benchmark's data loading and run folders, reused)

THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)
FIXED_COUNTS = (5, 10, 20, 50, 100, 200)
LABEL_SETS = ("corrupted", "true")
RESULTS = HERE / "results" / "memorization.json"
PROGRESS = HERE / "results" / "runs_progress.json"
log = logging.getLogger("memorization_controls")


# ------------------------------------------------------------------------------------------------------ networks
def mlp(seed: int, *, width: float = 1.0, relu: bool = True) -> Any:
    """The paper's MLP as a run starts it (``set_seed(seed)``, then the constructor), at *width* × its widths."""
    from accelerate.utils import set_seed
    from torch import nn

    from masc_probe.models._paper import PaperMLP

    widths = tuple(max(1, round(w * width)) for w in PaperMLP.WIDTHS)
    cls = PaperMLP if width == 1.0 else type("ScaledMLP", (PaperMLP,), {"WIDTHS": widths})
    set_seed(seed)
    net = cls(num_classes=10, in_chans=1, input_size=(28, 28))
    if not relu:
        for i in range(len(widths)):
            getattr(net, f"fc{i + 1}").act = nn.Identity()
    return net.eval()


def cnn(seed: int) -> Any:
    return rp.initial_model("cnn", seed, 10, [1, 28, 28]).eval()


def run_folder(seed: int, rate: float) -> Path:
    """The folder `paper_queue.sh` trains MLP-MNIST on all 60,000 images in (fast preset, clean protocol)."""
    return Path("runs/paper") / f"mlp-mnist-fast-nall-p{rate:g}-s{seed}"


def trained(seed: int, rate: float = 0.8) -> Callable[[], Any] | None:
    from masc_probe import load_model

    path = run_folder(seed, rate)
    return (lambda: load_model(path).eval()) if rp.finished(path) else None


# --------------------------------------------------------------------------------------------------- experiments
def experiments(data_root: Path) -> dict[str, dict[str, Any]]:
    mnist, fmnist = str(data_root / "mnist"), str(data_root / "fashion_mnist")
    ex: dict[str, dict[str, Any]] = {}
    for s in range(5):
        ex[f"init-s{s}"] = {"net": lambda s=s: mlp(s), "data": mnist, "rate": 0.8, "seed": s,
                            "qda": s == 0}  # QDA: ~25 min a network here; seed 0 only this time
    for p in (0.0, 0.2, 0.4, 0.6):
        ex[f"init-s0-p{p:g}"] = {"net": lambda: mlp(0), "data": mnist, "rate": p, "seed": 0}
    for w in (0.25, 0.5, 2.0):
        ex[f"width-{w:g}-s0"] = {"net": lambda w=w: mlp(0, width=w), "data": mnist, "rate": 0.8, "seed": 0}
    ex["linear-s0"] = {"net": lambda: mlp(0, relu=False), "data": mnist, "rate": 0.8, "seed": 0}
    for n in (1500, 6000, 15000, 60000):
        ex[f"rawn-{n}"] = {"net": lambda: mlp(0), "data": mnist, "rate": 0.8, "seed": 0, "layers": ["input"],
                           "subset": None if n == 60000 else n, "counts": True}
    ex["cnn-fmnist-init-s0"] = {"net": lambda: cnn(0), "data": fmnist, "rate": 0.8, "seed": 0, "qda": True}
    for rate in (0.8, 0.0, 0.2, 0.4, 0.6):
        for s in (0, 1, 2):
            if (build := trained(s, rate)) is not None:
                name = f"trained-s{s}" if rate == 0.8 else f"trained-p{rate:g}-s{s}"
                ex[name] = {"net": build, "data": mnist, "rate": rate, "seed": s, "run": run_folder(s, rate)}
    return ex


def features(net: Any, data: Any, layers: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every layer's flattened rows (float32), the given labels and the true labels, in data order."""
    import torch

    from masc_probe.layers import FeatureTap

    feats: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    ys, ys_true = [], []
    with FeatureTap(net, layers) as tap, torch.no_grad():
        for batch in rp.batches(data, "tensors", "cpu"):
            for layer, value in tap(batch["image"]).items():
                feats[layer].append(value.flatten(1).float().numpy())
            ys.append(batch["label"].numpy())
            ys_true.append(batch["true_label"].numpy())
    return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(ys), np.concatenate(ys_true)


def model_test_accuracy(net: Any, data: Any) -> float:
    """The network's own accuracy on the clean test set (its logits' argmax)."""
    import torch

    hits, n = 0, 0
    with torch.no_grad():
        for batch in rp.batches(data, "tensors", "cpu"):
            hits += int((net(batch["image"]).argmax(1) == batch["true_label"]).sum())
            n += len(batch["true_label"])
    return hits / n


def score_layer(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, qda: bool,
                counts: bool) -> dict[str, Any]:  # fmt: skip
    """MASC at every threshold (and fixed counts), NCM and QDA fitted on (x, y), scored on the test rows."""
    from masc_probe.probes import make_probe

    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    masc = make_probe("masc", n_components=0.99).fit(x, y)
    out["masc"] = {f"{t:g}": float(np.mean(masc.classes_[masc.cosines(x_test, n_components=t).argmax(1)] == y_test))
                   for t in THRESHOLDS}
    out["k_c"] = {f"{t:g}": [int(k) for k in masc_counts(masc, t)] for t in THRESHOLDS}
    if counts:
        out["masc_fixed_count"] = {
            str(k): float(np.mean(masc.classes_[masc.cosines(x_test, n_components=k).argmax(1)] == y_test))
            for k in FIXED_COUNTS if k <= x.shape[1]}
    out["seconds_masc"] = round(time.perf_counter() - t0, 1)
    out["ncm"] = float(np.mean(make_probe("ncm").fit(x, y).predict(x_test) == y_test))
    if qda:
        t0 = time.perf_counter()
        # The table's QDA (reg_param 1e-3); scikit-learn >= 1.6 refuses a rank-deficient class covariance there
        # (constant border pixels, dead ReLUs), so those layers take a covariance shrunk by 0.1 (solver eigen;
        # shrinkage "auto" was still refused on MNIST's pixels).
        for solver in ({"reg_param": 1e-3}, {"solver": "eigen", "shrinkage": 0.1}):
            try:
                out["qda"] = float(np.mean(make_probe("qda", **solver).fit(x, y).predict(x_test) == y_test))
                out["qda_solver"] = solver
                break
            except Exception as exc:  # recorded, not fatal
                out["qda"], out["qda_error"] = None, f"{type(exc).__name__}: {exc}"[:300]
        out["seconds_qda"] = round(time.perf_counter() - t0, 1)
    return out


def masc_counts(masc: Any, threshold: float) -> list[int]:
    """k_c per class at another variance fraction, by the fit's own rule (#{i : r_i <= t} + 1, at most the rank).
    Reads the fitted solution's subspaces (private: this is a benchmark, not library code)."""
    return [s.k_for(threshold) for s in masc._solution.subspaces]


def run_experiment(name: str, spec: dict[str, Any], test_cache: dict[str, Any]) -> dict[str, Any]:
    from masc_probe.data import describe_data

    t0 = time.perf_counter()
    net = spec["net"]()
    layers = spec.get("layers") or list(type(net).PROBE_LAYERS)
    train = rp.load_split(spec["data"], split="train", n=spec.get("subset"), subset_seed=0, rate=spec["rate"],
                          seed=spec["seed"])
    info = describe_data(train)
    if spec["data"] not in test_cache:
        test_cache[spec["data"]] = rp.load_split(spec["data"], split="test", n=None, subset_seed=0)
    x, y, y_true = features(net, train, layers)
    x_test, _, y_test = features(net, test_cache[spec["data"]], layers)
    model_accuracy = model_test_accuracy(net, test_cache[spec["data"]])
    log.info("%s: features of %d train / %d test rows in %.0f s", name, len(y), len(y_test), time.perf_counter() - t0)
    label_sets = {"corrupted": y, "true": y_true} if spec["rate"] else {"true": y_true}
    result: dict[str, Any] = {
        "name": name, "dataset": Path(spec["data"]).name, "rate": spec["rate"], "seed": spec["seed"],
        "n_train": int(len(y)), "n_test": int(len(y_test)), "realized_rate": float(np.mean(y != y_true)),
        "corruption": info.get("corruption"), "layers": layers, "model_test_accuracy": model_accuracy,
        **({"epochs": json.loads((spec["run"] / "config.json").read_text())["masc_probe"]["epoch"]}
           if "run" in spec else {}),
        "widths": {layer: int(x[layer].shape[1]) for layer in layers}, "scores": {}}
    for label_set, labels in label_sets.items():
        for layer in layers:
            log.info("%s: %s labels, layer %s (%d wide)", name, label_set, layer, x[layer].shape[1])
            result["scores"][f"{layer}/{label_set}"] = score_layer(
                x[layer], labels, x_test[layer], y_test, qda=spec.get("qda", False), counts=spec.get("counts", False))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


# ------------------------------------------------------------------------------------------------------ markdown
MARK_BEGIN = "<!-- memorization-controls:begin (generated by benchmarks/memorization_controls.py --markdown) -->"
MARK_END = "<!-- memorization-controls:end -->"


def _best(exp: dict[str, Any], probe: str, labels: str, threshold: str = "0.99") -> tuple[float, str] | None:
    """Best hidden layer (not the input) of one probe and label set: (accuracy, layer)."""
    found = []
    for key, sc in exp["scores"].items():
        layer, label_set = key.split("/")
        if layer == "input" or label_set != labels or sc.get(probe) is None:
            continue
        value = sc[probe][threshold] if probe == "masc" else sc[probe]
        found.append((float(value), layer))
    return max(found) if found else None


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _ms(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")


def _table_trained(table: dict[str, Any], p: float, labels: str) -> tuple[float | None, tuple[float, str] | None]:
    """The seed-0 60,000-image run at rate *p* in the paper table: its model's test accuracy and MASC's best hidden
    layer at 0.99 on *labels* (None, None where the table has no such run)."""
    cells = table.get("cells", {})
    key = f"mlp-mnist/p{p:g}/n60000/clean/fast"
    run = (cells.get(key) or cells.get(f"{key}-bf16", {})).get("runs", {}).get("0")
    if not run:
        return None, None
    best = run.get("probes", {}).get(f"masc/{labels}", {}).get("without_input")
    return run.get("model_test_accuracy"), (best["accuracy"], best["layer"]) if best else None


def build_section(results: dict[str, Any], table: dict[str, Any]) -> str:
    """The RESULTS.md section's tables, from results/memorization.json and the paper table (never retyped)."""
    out = [MARK_BEGIN, "### The no-training controls at 60,000 images (memorization_controls.py)", "",
           "Built by `python benchmarks/memorization_controls.py --markdown` from `benchmarks/results/memorization.json` "
           "(each experiment: `OMP_NUM_THREADS=1 python benchmarks/memorization_controls.py --work-dir "
           "runs/memorization --only NAME`; one thread on the shared 2-core machine) and `paper_table.json`. MNIST, "
           "all 60,000 training images, the 10,000 clean test images; MASC at the 0.99 variance rule unless a column "
           "says otherwise; *best hidden* = the best of fc1-fc4 (the raw input is a control, not a candidate).", ""]
    init = [results[k] for k in sorted(results) if k.startswith("init-s") and "-p" not in k]
    if init:
        layers = init[0]["layers"]
        out += ["**The paper's MLP at its initial weights, five seeds** (p = 0.8, each seed's own labels and "
                f"weights, exactly a clean-protocol run's epoch 0; seeds {', '.join(str(e['seed']) for e in init)}): "
                "mean ± sample std over seeds.", "",
                "| layer | MASC corrupted | MASC true | NCM corrupted | NCM true | QDA corrupted (seed 0) |",
                "|---|---:|---:|---:|---:|---:|"]
        for layer in layers:
            def col(probe: str, labels: str, *, exps: list[dict[str, Any]] = init, layer: str = layer) -> list[float]:
                vals = []
                for e in exps:
                    sc = e["scores"].get(f"{layer}/{labels}")
                    if sc and sc.get(probe) is not None:
                        vals.append(float(sc[probe]["0.99"] if probe == "masc" else sc[probe]))
                return vals
            qda = col("qda", "corrupted", exps=[e for e in init if e["seed"] == 0])
            out.append(f"| `{layer}` | {_ms(col('masc', 'corrupted'))} | {_ms(col('masc', 'true'))} | "
                       f"{_ms(col('ncm', 'corrupted'))} | {_ms(col('ncm', 'true'))} | {_ms(qda)} |")
        best = [b[0] for e in init if (b := _best(e, "masc", "corrupted"))]
        out += ["", f"Best hidden layer, MASC on the corrupted labels: {_ms(best)} over {len(best)} seeds "
                f"(per seed: {', '.join(_f(b) for b in best)}).", ""]
    rates = sorted((e["rate"], e) for k, e in results.items() if k.startswith("init-s0"))
    if len(rates) > 1:
        out += ["**The seed-0 init network under other corruption rates** (best hidden layer; the true-label "
                "subspaces do not depend on p; p = 0 reads the clean labels), beside the network trained at that p: "
                "the one this script probed (p = 0: trained on clean labels, the upper reference), else the seed-0 "
                "run of paper_table.json at 60,000 images (the fast preset, best hidden layer at 0.99):", "",
                "| p | realized | init: MASC | layer | init: NCM | trained: model | trained: MASC | layer |",
                "|---:|---:|---:|---|---:|---:|---:|---|"]
        for p, e in rates:
            labels = "true" if p == 0 else "corrupted"
            b, n = _best(e, "masc", labels), _best(e, "ncm", labels)
            t = results.get(f"trained-p{p:g}-s0")
            model, tb = (t["model_test_accuracy"], _best(t, "masc", labels)) if t else _table_trained(table, p, labels)
            out.append(f"| {p:g} | {e['realized_rate']:.3f} | {_f(b[0] if b else None)} | {b[1] if b else '—'} | "
                       f"{_f(n[0] if n else None)} | {_f(model)} | "
                       f"{_f(tb[0] if tb else None)} | {tb[1] if tb else '—'} |")
        out.append("")
    shape = [("1× (init-s0)", results.get("init-s0"))] + [
        (f"{w:g}×", results.get(f"width-{w:g}-s0")) for w in (0.25, 0.5, 2.0)] + [
        ("1×, no ReLU (random linear maps)", results.get("linear-s0"))]
    shape = [(n, e) for n, e in shape if e]
    if len(shape) > 1:
        out += ["**Width and nonlinearity at initialization** (seed 0, p = 0.8; best hidden layer):", "",
                "| network | widths | MASC corrupted | MASC true | NCM corrupted |", "|---|---|---:|---:|---:|"]
        for n, e in shape:
            widths = ", ".join(str(e["widths"][layer]) for layer in e["layers"] if layer != "input")
            b, t, c = _best(e, "masc", "corrupted"), _best(e, "masc", "true"), _best(e, "ncm", "corrupted")
            out.append(f"| {n} | {widths} | {_f(b[0] if b else None)} ({b[1] if b else '—'}) | "
                       f"{_f(t[0] if t else None)} | {_f(c[0] if c else None)} |")
        raw = results.get("init-s0", {}).get("scores", {}).get("input/corrupted")
        if raw:
            out.append(f"| raw input | 784 | {_f(raw['masc']['0.99'])} | "
                       f"{_f(results['init-s0']['scores']['input/true']['masc']['0.99'])} | {_f(raw['ncm'])} |")
        out.append("")
    rawn = sorted((e["n_train"], e) for k, e in results.items() if k.startswith("rawn-"))
    if rawn:
        counts = [str(k) for k in FIXED_COUNTS]
        out += ["**Raw input against n** (true-label MASC; k_c = the 0.99 rule's count per class, mean [min-max]; "
                "then MASC with the same fixed k for every class):", "",
                "| n | MASC 0.99 | k_c | " + " | ".join(f"k = {k}" for k in counts) + " |",
                "|---:|---:|---|" + "---:|" * len(counts)]
        for n, e in rawn:
            sc = e["scores"]["input/true"]
            kc = sc["k_c"]["0.99"]
            fixed = sc.get("masc_fixed_count", {})
            out.append(f"| {n:,} | {sc['masc']['0.99']:.3f} | {np.mean(kc):.0f} [{min(kc)}-{max(kc)}] | "
                       + " | ".join(_f(fixed.get(k)) for k in counts) + " |")
        out.append("")
    cnn = results.get("cnn-fmnist-init-s0")
    if cnn:
        out += ["**CNN-FashionMNIST at its initial weights** (seed 0, all 60,000 images, p = 0.8):", "",
                "| layer | MASC corrupted | MASC true | NCM corrupted | QDA corrupted |", "|---|---:|---:|---:|---:|"]
        for layer in cnn["layers"]:
            c, t = cnn["scores"].get(f"{layer}/corrupted", {}), cnn["scores"].get(f"{layer}/true", {})
            out.append(f"| `{layer}` | {_f(c.get('masc', {}).get('0.99'))} | {_f(t.get('masc', {}).get('0.99'))} | "
                       f"{_f(c.get('ncm'))} | {_f(c.get('qda'))} |")
        out.append("")
    return "\n".join([*out, MARK_END])


def write_markdown(md_path: Path) -> None:
    """The controls are one part of the section benchmarks/memorization.py writes: rebuild that whole section."""
    import memorization

    memorization.write_markdown(md_path)


def run_progress(work: Path) -> dict[str, Any]:
    """Where each training run under *work* stands: its last metrics row, and whether it finished."""
    out: dict[str, Any] = {}
    for metrics in sorted(work.glob("*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if rows:
            last = rows[-1]
            out[metrics.parent.name] = {
                "finished": rp.finished(metrics.parent), "epoch": last["epoch"],
                "train_accuracy_corrupted": last.get("train_accuracy_corrupted"),
                "train_accuracy_true": last.get("train_accuracy_true"), "lr": last.get("lr"),
                "recorded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    return out


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", default="runs/memorization", help="one JSON per experiment (the resume record)")
    p.add_argument("--data-root", default=str(rp.DATA_ROOT), help="folder of mnist/ and fashion_mnist/")
    p.add_argument("--only", nargs="+", default=None, help="experiment name prefixes to run")
    p.add_argument("--collect", action="store_true", help=f"merge the work dir's JSONs into {RESULTS}; run nothing")
    p.add_argument("--list", action="store_true", help="print the experiment names and exit")
    p.add_argument("--markdown", action="store_true", help="rebuild the RESULTS.md section from the results JSON")
    p.add_argument("--progress", action="store_true",
                   help=f"record the last epoch of every run under runs/paper in {PROGRESS.name}; run nothing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(1)
    work = Path(args.work_dir)
    if args.collect:
        merged = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        merged.update({f.stem: json.loads(f.read_text()) for f in sorted(work.glob("*.json"))})
        write_json(RESULTS, dict(sorted(merged.items())))
        print(f"{RESULTS}: {len(merged)} experiments")
        return 0
    if args.progress:
        write_json(PROGRESS, run_progress(Path("runs/paper")))
        print(f"{PROGRESS}")
        return 0
    if args.markdown:
        write_markdown(rp.RESULTS_MD)
        print(f"rebuilt the section of {rp.RESULTS_MD}")
        return 0
    todo = experiments(Path(args.data_root))
    if args.list:
        print("\n".join(todo))
        return 0
    test_cache: dict[str, Any] = {}
    for name, spec in todo.items():
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        if (work / f"{name}.json").is_file():
            log.info("%s: done before, skipped", name)
            continue
        write_json(work / f"{name}.json", run_experiment(name, spec, test_cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
