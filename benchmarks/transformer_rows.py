"""The transformer rows: does latent generalization survive memorization in a ViT, at which block, with which reducer?

Two vision transformers, each trained on a corrupted subset of CIFAR-10 and of MNIST (random mode, p = 0.8, seed 0)
until it memorizes the corrupted labels (or hits the epoch cap), then probed at the raw input and after every block
with each token reducer (``flatten`` — the paper's rule —, ``cls``, ``mean``), fitted once on the corrupted and once
on the true labels and scored on a clean test subset. Controls as the paper rows: the same probes on the network's
exact random initialization, and on the raw input.

* ``vit-tiny``: timm ``vit_tiny_patch16_224`` (width 192, 3 heads) reconfigured to patch 4 at the data's size
  (32×32 → 64 tokens + CLS; 28×28 → 49 + CLS), with ``--timm-depth`` blocks (default 4; the recorded rows used 2
  on 500 images: twelve blocks, or four on 1,000 images, do not memorize on one shared CPU thread in the time
  this session had).
* ``hf-vit``: a ``transformers`` ``ViTForImageClassification`` from a local ``ViTConfig`` (width 128, 4 heads,
  MLP 256, ``--hf-depth`` layers), trained through the same ``masc_probe.training.train``.

Training: the fast preset (Adam 3e-4, halved at loss plateaus) at batch 32, no augmentation, normalize 0.5/0.5. Run
folders: ``runs/transformers/<row>-n<N>-p0.8-s0`` (git-ignored); rerunning resumes from the last finished epoch,
and a higher ``--max-epochs`` continues a run that stopped at the cap. Reports are cached in the run folder.

    OMP_NUM_THREADS=1 python benchmarks/transformer_rows.py --stage train --rows hf-vit-mnist --max-epochs 60
    OMP_NUM_THREADS=1 python benchmarks/transformer_rows.py --stage probe      # every row whose training ended
    python benchmarks/transformer_rows.py --markdown                           # rebuild the RESULTS.md section

Data: ../shared/data/{cifar10,mnist} (see its README; CIFAR-10 there is JPEG-re-encoded).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import platform
import re
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MASC_PROBE_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS_JSON = REPO / "benchmarks" / "results" / "transformers.json"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Transformer rows (issue 11)"

ROWS = {"vit-tiny-cifar10": ("vit-tiny", "cifar10"), "vit-tiny-mnist": ("vit-tiny", "mnist"),
        "hf-vit-cifar10": ("hf-vit", "cifar10"), "hf-vit-mnist": ("hf-vit", "mnist")}
REDUCERS = ("flatten", "cls", "mean")
PROBES = ("masc", "ncm", "linear", "knn")
LABEL_SETS = ("corrupted", "true")
RATE, SEED = 0.8, 0

log = logging.getLogger("transformer_rows")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--stage", choices=("train", "probe", "all"), default="all")
    p.add_argument("--subset", type=int, default=1000, help="training images (stratified; default 1000)")
    p.add_argument("--test-subset", type=int, default=1000, help="test images (stratified; default 1000)")
    p.add_argument("--max-epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--timm-depth", type=int, default=4)
    p.add_argument("--hf-depth", type=int, default=4)
    p.add_argument("--work-dir", default=str(REPO / "runs" / "transformers"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(RESULTS_JSON), help="the results JSON (default %(default)s)")
    p.add_argument("--markdown", action="store_true", help="only rebuild the RESULTS.md section from the JSON")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


# -------------------------------------------------------------------------------------------------------- data
def load_split(dataset: str, split: str, n: int, *, rate: float) -> Any:
    """One split of ../shared/data/<dataset>, corrupted over its whole length (seed 0), then a stratified subset."""
    from sklearn.model_selection import train_test_split

    from masc_probe import load_data

    data = load_data(str(DATA_ROOT / dataset), split=split, corrupt=rate, seed=SEED)
    true = data.with_format("numpy")["true_label"][:]
    if n >= len(true):
        return data
    idx, _ = train_test_split(np.arange(len(true)), train_size=n, stratify=true, random_state=SEED)
    return data.select(np.sort(idx))


# ------------------------------------------------------------------------------------------------------ models
def build(arch: str, shape: list[int], num_classes: int, args: argparse.Namespace) -> Any:
    """The run's initial network: set_seed(SEED), then the architecture (the random-init control is this)."""
    from accelerate.utils import set_seed

    set_seed(SEED)
    channels, size = shape[0], shape[-1]
    if arch == "vit-tiny":
        import timm

        return timm.create_model("vit_tiny_patch16_224", patch_size=4, img_size=size, in_chans=channels,
                                 num_classes=num_classes, depth=args.timm_depth)
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=size, patch_size=4, num_channels=channels, hidden_size=128,
                       num_hidden_layers=args.hf_depth, num_attention_heads=4, intermediate_size=256,
                       num_labels=num_classes)
    return ViTForImageClassification(config)


def blocks(arch: str, net: Any) -> list[str]:
    """Every transformer block's output, in order."""
    prefix = "blocks." if arch == "vit-tiny" else "vit.layers."
    found = [n for n, _ in net.named_modules() if re.fullmatch(re.escape(prefix) + r"\d+", n)]
    return sorted(found, key=lambda n: int(n.rsplit(".", 1)[1]))


def run_dir(args: argparse.Namespace, row: str) -> Path:
    arch = ROWS[row][0]
    depth = args.timm_depth if arch == "vit-tiny" else args.hf_depth
    return Path(args.work_dir) / f"{row}-d{depth}-n{args.subset}-p{RATE:g}-s{SEED}"


def finished(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "config.json").is_file()


# ---------------------------------------------------------------------------------------------------- stages
def train_row(args: argparse.Namespace, row: str, train_data: Any) -> dict[str, Any]:
    from masc_probe.data import TensorBatches, describe_data
    from masc_probe.models import model_spec
    from masc_probe.training import preset_config, train

    arch, dataset = ROWS[row]
    info = describe_data(train_data)
    shape = [int(s) for s in train_data[0]["image"].shape]
    net = build(arch, shape, info["num_classes"], args)
    config = preset_config(model_spec(net), dataset, preset="fast", batch_size=args.batch_size,
                           max_epochs=args.max_epochs, seed=SEED, num_classes=info["num_classes"],
                           output_dir=str(run_dir(args, row)), progress=not args.quiet, cpu=True,
                           corruption={"mode": "random", "rate": RATE, "seed": SEED},
                           preprocessing=info["preprocessing"], checkpoint_dense_until=-1, checkpoint_every=0)
    t0 = time.perf_counter()
    result = train(net, TensorBatches.from_data(train_data), config=config)
    last = result.history[-1]
    return {"epochs": result.epochs, "stopped": result.stopped, "memorized": result.stopped == "target",
            "target_accuracy": config.target_accuracy, "train_accuracy_corrupted": last["train_accuracy_corrupted"],
            "train_accuracy_true": last["train_accuracy_true"], "seconds_this_call": round(time.perf_counter() - t0),
            "parameters": sum(p.numel() for p in net.parameters()),
            "training": {"optimizer": config.optimizer, "lr": config.lr, "batch_size": config.batch_size,
                         "lr_schedule": config.lr_schedule, "max_epochs": config.max_epochs}}


def probe_net(net: Any, layers: list[str], reducer: str, train: Any, test: Any, *, name: str) -> Any:
    from masc_probe import ProbeRunner

    # controls=(): this script draws its own controls (the random-init network it built, the raw input as a layer),
    # so the runner's default ones would only double the cost of each pass.
    with ProbeRunner(net, layers=layers, probes=PROBES, labels="both", reducer=reducer, progress=False,
                     train_accuracy=False, seed=SEED, controls=()) as runner:
        runner.fit(train)
        return runner.evaluate(test, model_name=name)


def probe_row(args: argparse.Namespace, row: str, train_data: Any, test_data: Any) -> dict[str, Any]:
    from masc_probe import ProbeReport, load_model
    from masc_probe.data import TensorBatches, describe_data

    arch, dataset = ROWS[row]
    path = run_dir(args, row)
    trained = load_model(path)
    shape = [int(s) for s in train_data[0]["image"].shape]
    initial = build(arch, shape, describe_data(train_data)["num_classes"], args).eval()
    layers = blocks(arch, trained)
    train, test = TensorBatches.from_data(train_data), TensorBatches.from_data(test_data)
    out: dict[str, Any] = {"layers": ["input", *layers], "reports": {}}
    for network, net in (("trained", trained), ("random-init", initial)):
        for reducer in REDUCERS:
            cache = path / f"report-{network}-{reducer}.json"
            if cache.is_file():
                report = ProbeReport.from_json_file(cache)
            else:
                t0 = time.perf_counter()
                names = (["input"] if network == "trained" and reducer == "flatten" else []) + layers
                report = probe_net(net, names, reducer, train, test, name=f"{row}/{network}")
                report.extra["seconds"] = round(time.perf_counter() - t0, 1)
                report.to_json(cache)
                log.info("%s %s %s: %.0f s", row, network, reducer, report.extra["seconds"])
            out["reports"][f"{network}/{reducer}"] = {
                "model_test_accuracy": report.model_test_accuracy, "reducers": report.to_dict().get("reducers"),
                "accuracy": {f"{r['probe']}/{r['labels']}/{r['layer']}": r["test_accuracy"] for r in report.results}}
    return out


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------------- results
def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"rows": {}}


@contextlib.contextmanager
def updating(path: Path) -> Iterator[dict[str, Any]]:
    """Read, change and write the results under a lock (a training and a probing process share the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The lock file lives in the temp folder, never beside the committed results.
    with open(Path(tempfile.gettempdir()) / f"masc-probe-{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load_results(path)
        yield results
        save_results(results, path)


def save_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _acc(entry: dict[str, Any], key: str, probe: str, labels: str, layer: str) -> float | None:
    return entry["probed"]["reports"].get(key, {}).get("accuracy", {}).get(f"{probe}/{labels}/{layer}")


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _ordered(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = results["rows"]
    return [(row, rows[row]) for row in ROWS if row in rows]


def best_cell(entry: dict[str, Any], network: str, probe: str, labels: str) -> tuple[float, str, str] | None:
    """(accuracy, layer, reducer) of the best block of *network* for one probe and label set (input excluded)."""
    cells = [(acc, key.split("/", 2)[2], reducer)
             for reducer in REDUCERS
             for key, acc in entry["probed"]["reports"].get(f"{network}/{reducer}", {}).get("accuracy", {}).items()
             if key.startswith(f"{probe}/{labels}/") and not key.endswith("/input")]
    return max(cells, key=lambda c: c[0]) if cells else None


def summary_table(results: dict[str, Any]) -> list[str]:
    """One line per probed row: the model, the best block (and reducer) of MASC on each label set, the controls."""
    lines = ["| row | memorized (epochs, train acc.) | model test acc. | MASC corrupted: best block (reducer) | "
             "MASC true: best block (reducer) | raw input MASC corrupted / true | random init: best MASC "
             "corrupted / true |", "|---|---|---|---|---|---|---|"]
    for row, entry in _ordered(results):
        if "probed" not in entry:
            continue
        m = entry.get("final_metrics", {})
        t = entry.get("trained", {})
        reports = entry["probed"]["reports"]
        cells = {(n, s): best_cell(entry, n, "masc", s) for n in ("trained", "random-init") for s in LABEL_SETS}
        raw = [_acc(entry, "trained/flatten", "masc", s, "input") for s in LABEL_SETS]

        def fmt(c: tuple[float, str, str] | None) -> str:
            return "–" if c is None else f"{c[0]:.3f} `{c[1]}` ({c[2]})"

        memorized = "yes" if t.get("memorized") else "no"
        lines.append(f"| {row} | {memorized} ({m.get('epoch')}, {_f(m.get('train_accuracy_corrupted'))}) | "
                     f"{_f(reports['trained/flatten']['model_test_accuracy'])} | {fmt(cells['trained', 'corrupted'])} | "
                     f"{fmt(cells['trained', 'true'])} | {_f(raw[0])} / {_f(raw[1])} | "
                     f"{_f((cells['random-init', 'corrupted'] or (None,))[0])} / "
                     f"{_f((cells['random-init', 'true'] or (None,))[0])} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = [SECTION, "", "Made by (one thread; each command resumes):", "", "```",
             *results.get("commands", []), "```", "",
             *[line for note in results.get("notes", []) for line in (textwrap.fill(note, 118), "")],
             *summary_table(results), ""]
    for row, entry in _ordered(results):
        t = entry.get("trained", {})
        if "probed" not in entry:
            lines += [f"### {row}: not probed (training: {json.dumps(t)})", ""]
            continue
        model_acc = entry["probed"]["reports"]["trained/flatten"]["model_test_accuracy"]
        init_acc = entry["probed"]["reports"]["random-init/flatten"]["model_test_accuracy"]
        lines += [f"### {row}", "",
                  f"{t.get('parameters', 0):,} parameters; {entry['n_train']} training images (realized corruption "
                  f"{entry['realized_rate']:.3f}), {entry['n_test']} test images. Training: {t.get('epochs')} epochs, "
                  f"stopped by {t.get('stopped')} (train accuracy on the corrupted labels "
                  f"{_f(t.get('train_accuracy_corrupted'))}, target {t.get('target_accuracy')}). Model test accuracy "
                  f"{_f(model_acc)} (random init {_f(init_acc)}).", "",
                  "| layer | reducer | MASC corrupted | MASC true | NCM corrupted | linear corrupted | kNN corrupted "
                  "| MASC corrupted, random init | MASC true, random init |",
                  "|---|---|---|---|---|---|---|---|---|"]
        raw = [_acc(entry, "trained/flatten", p, s, "input") for p, s in
               (("masc", "corrupted"), ("masc", "true"), ("ncm", "corrupted"), ("linear", "corrupted"),
                ("knn", "corrupted"))]
        lines.append("| input (raw) | flatten | " + " | ".join(map(_f, raw)) + " | – | – |")
        for layer in entry["probed"]["layers"][1:]:
            for reducer in REDUCERS:
                key, init = f"trained/{reducer}", f"random-init/{reducer}"
                cells = [_acc(entry, key, "masc", "corrupted", layer), _acc(entry, key, "masc", "true", layer),
                         _acc(entry, key, "ncm", "corrupted", layer), _acc(entry, key, "linear", "corrupted", layer),
                         _acc(entry, key, "knn", "corrupted", layer), _acc(entry, init, "masc", "corrupted", layer),
                         _acc(entry, init, "masc", "true", layer)]
                lines.append(f"| {layer} | {reducer} | " + " | ".join(map(_f, cells)) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(results: dict[str, Any]) -> None:
    text = RESULTS_MD.read_text()
    section = markdown(results)
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    RESULTS_MD.write_text(text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.markdown:
        write_markdown(load_results(Path(args.results)))
        return
    import torch

    torch.set_num_threads(args.threads)
    for row in args.rows:
        dataset = ROWS[row][1]
        train_data = load_split(dataset, "train", args.subset, rate=RATE)
        path = run_dir(args, row)
        if args.stage in ("train", "all"):
            trained = train_row(args, row, train_data)
            with updating(Path(args.results)) as results:
                results["rows"].setdefault(row, {}).update(trained=trained, run_dir=os.path.relpath(path, REPO))
        if args.stage in ("probe", "all"):
            if not finished(path):
                log.warning("%s: training has not ended; not probed", path)
                continue
            test_data = load_split(dataset, "test", args.test_subset, rate=0.0)
            probed = probe_row(args, row, train_data, test_data)
            labels = train_data.with_format("numpy")
            with updating(Path(args.results)) as results:
                entry = results["rows"].setdefault(row, {})
                entry.update(probed=probed, n_train=len(train_data), n_test=len(test_data),
                             realized_rate=float(np.mean(labels["label"][:] != labels["true_label"][:])),
                             final_metrics=json.loads((path / "metrics.jsonl").read_text().splitlines()[-1]),
                             machine=machine())
    command = "OMP_NUM_THREADS=1 python benchmarks/transformer_rows.py " + " ".join(sys.argv[1:])
    with updating(Path(args.results)) as results:
        results["commands"] = list(dict.fromkeys([*results.get("commands", []), command]))


if __name__ == "__main__":
    main()
