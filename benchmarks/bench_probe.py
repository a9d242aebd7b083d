"""Benchmark ProbeRunner on a CIFAR-size ResNet-18: fit + evaluate against a bare forward pass and the
eigendecompositions exact MASC cannot avoid, with peak memory.

Workload (issue 3): timm ``resnet18`` (random init, 10 classes) on 32×32 inputs; probe points after the stem's
max-pool, the two layer1 block outputs (the second is the layer1 stage output), layer2's first block, the four stage
outputs and the pooled features; random images with balanced random true labels and 80% of them re-drawn at random
(the "corrupted" set), so both label sets are fitted; probes masc + ncm; the linear probe is timed separately.

Everything below is measured in ONE run: the bare forward over the same batches (image generation included, as it
is in the runner's passes), ``fit`` + ``evaluate`` with the default memory budget, the decompositions alone (MASC's
own routine on random PSD matrices of the sizes min(n_c, d) the run needs, k eigenvectors each), peak RSS.

    python benchmarks/bench_probe.py                          # the full workload: 50,000 train, 10,000 test
    python benchmarks/bench_probe.py --n-train 5000 --n-test 1000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

LAYERS = ["maxpool", "layer1.0", "layer1", "layer2.0", "layer2", "layer3", "layer4", "global_pool"]


class RandomImages:
    """Batches generated on the fly from a seed (nothing held in memory): (x, y_corrupted, y_true)."""

    def __init__(self, n: int, batch_size: int, n_classes: int, seed: int, corrupt: float) -> None:
        rng = np.random.default_rng(seed)
        self.y_true = rng.permutation(np.arange(n) % n_classes)
        flip = rng.random(n) < corrupt
        self.y = np.where(flip, rng.integers(0, n_classes, n), self.y_true)
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for i, start in enumerate(range(0, self.n, self.batch_size)):
            stop = min(start + self.batch_size, self.n)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            x = torch.randn(stop - start, 3, 32, 32, generator=gen)
            yield x, torch.from_numpy(self.y[start:stop]), torch.from_numpy(self.y_true[start:stop])


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def bare_forward(model: torch.nn.Module, *loaders: RandomImages, device: torch.device) -> float:
    t = time.perf_counter()
    with torch.no_grad():
        for loader in loaders:
            for x, _, _ in loader:
                model(x.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def timed_decompose() -> dict[str, float]:
    """Wrap MASC's one decomposition routine to add up its time (and the k eigenvectors it is asked for)."""
    from masc_probe.probes import _eigen, baselines, masc

    acc = {"seconds": 0.0, "count": 0}
    original = _eigen.decompose

    class _Timed:
        def __init__(self, inner: _eigen.Eigen) -> None:
            self._inner = inner

        def __getattr__(self, name: str):  # values, rank
            return getattr(self._inner, name)

        def vectors(self, k: int) -> torch.Tensor:
            t = time.perf_counter()
            try:
                return self._inner.vectors(k)
            finally:
                acc["seconds"] += time.perf_counter() - t

    def wrapper(matrix: torch.Tensor, *args, **kwargs) -> _Timed:
        t = time.perf_counter()
        try:
            return _Timed(original(matrix, *args, **kwargs))
        finally:
            acc["seconds"] += time.perf_counter() - t
            acc["count"] += 1

    masc.decompose = wrapper
    baselines.decompose = wrapper
    return acc


def decompositions_alone(sizes: list[tuple[str, int, int, int]], samples: int, device: torch.device) -> dict:
    """Time MASC's decomposition (+ k eigenvectors) on random PSD matrices: `samples` per layer, scaled by count."""
    from masc_probe.probes._eigen import decompose

    total, per_layer = 0.0, {}
    gen = torch.Generator().manual_seed(0)
    for layer, m, k, count in sizes:
        times = []
        for _ in range(samples):
            a = torch.randn(m, m + 8, generator=gen).to(device)
            mat = a @ a.T
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            decompose(mat).vectors(max(k, 1))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        per_layer[layer] = {"m": m, "k": k, "count": count, "seconds_each": float(np.mean(times))}
        total += float(np.mean(times)) * count
    return {"seconds": total, "per_layer": per_layer}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--labels", choices=("both", "true"), default="both", help="label sets fitted")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--max-memory", type=int, default=None, help="ProbeRunner budget in bytes (default: its own)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eigh-samples", type=int, default=1, help="decompositions timed alone per layer")
    p.add_argument("--linear", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the linear probe (a separate run)")
    p.add_argument("--linear-epochs", type=int, default=20)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    import timm

    from masc_probe.runner import ProbeRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=args.classes).eval().to(device)
    train = RandomImages(args.n_train, args.batch_size, args.classes, seed=1, corrupt=0.8)
    test = RandomImages(args.n_test, args.batch_size, args.classes, seed=2, corrupt=0.0)
    bare_forward(model, RandomImages(2 * args.batch_size, args.batch_size, args.classes, 3, 0.0), device=device)
    rss_start = peak_rss_gb()

    t_bare = bare_forward(model, train, test, device=device)
    eig = timed_decompose()
    runner = ProbeRunner(model, LAYERS, probes=("masc", "ncm"), labels=args.labels, device=device,
                         max_memory=args.max_memory, progress=True)
    t = time.perf_counter()
    runner.fit(train)
    t_fit = time.perf_counter() - t
    report = runner.evaluate(test)
    t_fit_eval = time.perf_counter() - t
    rss_probe = peak_rss_gb()
    tm = runner.timings_

    n_sets = len(runner.label_sets_)
    dims = {layer: runner.features(next(iter(test))[0][:2])[layer].shape[1] for layer in LAYERS}
    n_c = args.n_train // args.classes
    ks = {layer: int(np.mean([r["n_components"] for r in report.results
                              if r["layer"] == layer and r["probe"] == "masc"])) for layer in LAYERS}
    sizes = [(layer, min(n_c, dims[layer]), ks[layer], args.classes * n_sets) for layer in LAYERS]
    alone = decompositions_alone(sizes, args.eigh_samples, device)

    forward = tm.get("forward", 0.0) + tm.get("evaluate_forward", 0.0)
    # statistics: the pass's partial_fit calls and row-cache writes, and the deferred layers' partial_fit from the
    # cache (reading it back included); solve_other: everything in the solves but the decompositions.
    statistics = tm.get("statistics", 0.0) + tm.get("cache_write", 0.0) + tm.get("deferred_statistics", 0.0)
    prediction = tm.get("predict", 0.0) + tm.get("train_accuracy", 0.0)
    solve_rest = tm.get("solve", 0.0) + tm.get("deferred_solve", 0.0) - eig["seconds"]
    result = {
        "command": "python benchmarks/bench_probe.py " + " ".join(os.sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "eigh_threads": os.environ.get("MASC_PROBE_EIGH_THREADS", "1 (default)"),
                    "device": str(device), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "workload": {"n_train": args.n_train, "n_test": args.n_test, "classes": args.classes,
                     "label_sets": runner.label_sets_, "layers": dims, "batch_size": args.batch_size,
                     "max_memory": runner.max_memory, "memory_plan": runner.plan_.to_dict(),
                     "solvers": sorted(set(runner.solvers_.values())),
                     "train_accuracy_rows": runner.n_train_scored_},
        "seconds": {"bare_forward": t_bare, "fit": t_fit, "fit_evaluate": t_fit_eval,
                    "decompositions_alone": alone["seconds"],
                    "breakdown": {"forward": forward, "statistics": statistics,
                                  "eigendecompositions": eig["seconds"], "solve_other": solve_rest,
                                  "prediction": prediction,
                                  "other": t_fit_eval - forward - statistics - eig["seconds"] - solve_rest
                                  - prediction},
                    "runner_timings": tm},
        "decompositions": {"in_run": eig["count"], "alone": alone["per_layer"]},
        "ratios": {"fit_evaluate_over_forward_plus_decompositions": t_fit_eval / (t_bare + alone["seconds"]),
                   "fit_evaluate_over_bare_forward": t_fit_eval / t_bare},
        "peak_rss_gb": {"before_fit": rss_start, "after_fit_evaluate": rss_probe},
        "best": report.to_dict()["best"],
    }
    if args.linear:
        lin = ProbeRunner(model, LAYERS, probes=("linear",), labels=args.labels, device=device,
                          max_memory=args.max_memory, progress=True, train_accuracy=False,
                          probe_kwargs={"linear": {"epochs": args.linear_epochs}})
        t = time.perf_counter()
        lin.fit(train).evaluate(test)
        result["seconds"]["linear_fit_evaluate"] = time.perf_counter() - t
        result["seconds"]["linear_training"] = lin.timings_.get("feature_probes", 0.0)
        result["peak_rss_gb"]["after_linear"] = peak_rss_gb()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
