"""Time MASC fit+predict against a straightforward version of the authors' method, in one process.

The reference is written here from DESIGN.md: per class, ``np.cov`` of the class rows stacked with their negation
(mean exactly zero, so this is the uncentered scatter up to a constant), a full float64 ``np.linalg.eigh``, k_c by the
cumulative-ratio rule, and angles by projection onto the basis. Ours is ``MinimumAngleSubspaceClassifier``.
Our floor is what no implementation of our solver can skip: each class's Gram or scatter product plus one
eigendecomposition (with the top k_c eigenvectors it needs), timed alone with the same functions the fit calls.
"floor+basis" adds, for Gram-form classes, the product X_cᵀU that turns the Gram eigenvectors into S_c's (the basis).
What ours adds beyond that is grouping rows by class, input checks and scoring the test rows (n_test·d·Σk_c).
Noise level 0.1 puts k_c near 500 of 2,000 per class at t = 0.99 (square), so basis and scoring are not small.

Data: structured and non-negative like post-ReLU activations. Each class c has a mean direction m_c ~ U(0, 1)^d and a
rank-32 subspace; x = relu(m_c + z B_c + noise * e) with z, e standard normal.

``--device cuda`` fits and predicts on the GPU (data moved there before timing, the clock stopped after the device
is synchronized) and times the same fit+predict on the CPU beside it in the same run; rows/s is
(n_train + n_test) / seconds of fit+predict. ``--scale`` shrinks both shapes' sample counts (short checks).

Usage:
    python benchmarks/bench_masc.py                       # both shapes, 1 thread and all threads
    python benchmarks/bench_masc.py --shape wide --threads 1 --repeats 3 --wide-ref-repeats 3
    python benchmarks/bench_masc.py --device cuda --threads all --repeats 3 --ref-repeats 0 --json masc.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from masc_probe.probes import MinimumAngleSubspaceClassifier
from masc_probe.probes._eigen import decompose
from masc_probe.probes._linalg import gram, matmul, scatter
from masc_probe.probes._threads import THREADS_ENV

SHAPES = {"square": (20_000, 2_048, 10, 2_000), "wide": (1_000, 4_096, 10, 1_000)}  # n_train, d, classes, n_test


def make_data(n: int, d: int, n_classes: int, *, rank: int = 32, noise: float = 0.1, seed: int = 0):
    """Class-subspace data, non-negative; returns float32 X (n, d) and int64 y (n,), classes in equal shares."""
    g = torch.Generator().manual_seed(seed)
    per = n // n_classes
    X = torch.empty(per * n_classes, d)
    for c in range(n_classes):
        mean = torch.rand(d, generator=g)
        basis = torch.randn(rank, d, generator=g) / rank**0.5
        z = torch.randn(per, rank, generator=g)
        X[c * per : (c + 1) * per] = torch.relu(mean + z @ basis + noise * torch.randn(per, d, generator=g))
    y = np.repeat(np.arange(n_classes), per)
    perm = torch.randperm(len(y), generator=g).numpy()
    return X.numpy()[perm], y[perm]


def reference_fit_predict(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, t: float) -> tuple[np.ndarray, list[int]]:
    """The authors' method as DESIGN.md describes it, in float64."""
    classes = np.unique(y)
    cosines, ks = [], []
    x_norm = np.linalg.norm(X_test.astype(np.float64), axis=1)
    for c in classes:
        rows = X[y == c].astype(np.float64)
        cov = np.cov(np.vstack([rows, -rows]), rowvar=False)
        w, v = np.linalg.eigh(cov)
        w, v = w[::-1], v[:, ::-1]
        ratio = np.cumsum(w) / w.sum()
        k = int(np.count_nonzero(ratio <= t)) + 1
        ks.append(k)
        projected = X_test.astype(np.float64) @ v[:, :k]
        cosines.append(np.linalg.norm(projected, axis=1) / x_norm)
    return classes[np.argmax(np.stack(cosines, axis=1), axis=1)], ks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours_fit_predict(X, y, X_test, t: float, device: torch.device):
    """Fit and predict with our MASC; X, X_test are numpy on the CPU, tensors already on *device* elsewhere."""
    masc = MinimumAngleSubspaceClassifier(t, device=None if device.type == "cpu" else device).fit(X, y)
    pred = masc.predict(X_test)
    _sync(device)
    return pred, masc


def floor(X: np.ndarray, y: np.ndarray, masc: MinimumAngleSubspaceClassifier,
          device: torch.device) -> tuple[float, float]:
    """Per class, summed: (the product our solver formed + one decomposition with its k_c eigenvectors,
    the same + the product X_cᵀU that turns Gram eigenvectors into S_c's, the Gram form's basis)."""
    total = basis = 0.0
    for c, k, form in zip(masc.classes_, masc.n_components_, masc._solution.solvers, strict=True):
        rows = torch.from_numpy(np.ascontiguousarray(X[y == c])).to(device)  # the grouping copy is not counted
        _sync(device)
        start = time.perf_counter()
        matrix = scatter(rows) if form == "scatter" else gram(rows)
        eigen = decompose(matrix, overwrite=True)
        vectors = eigen.vectors(int(k))
        _sync(device)
        total += time.perf_counter() - start
        if form == "gram":
            start = time.perf_counter()
            scale = torch.from_numpy(eigen.values[: int(k)]).rsqrt().float().to(device)
            matmul(rows.T, vectors.to(device)) * scale
            _sync(device)
            basis += time.perf_counter() - start
    return total, total + basis


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(shape: str, threads: int, repeats: int, ref_repeats: int, t: float, device: torch.device,
        scale: float = 1.0) -> dict[str, object]:
    n, d, n_classes, n_test = SHAPES[shape]
    n, n_test = max(n_classes * 2, int(n * scale)), max(1, int(n_test * scale))
    X_all, y_all = make_data(n + n_test, d, n_classes)
    X, y, X_test = X_all[:n], y_all[:n], X_all[n:]
    torch.set_num_threads(threads)
    if device.type == "cpu":
        X_in, X_test_in = X, X_test
    else:  # on the device before the clock starts, as a runner's rows are
        X_in, X_test_in = torch.from_numpy(X).to(device), torch.from_numpy(X_test).to(device)
        ours_fit_predict(X_in[: 4 * n_classes], y[: 4 * n_classes], X_test_in[:4], t, device)  # CUDA warm-up
    with threadpool_limits(limits=threads):
        ours, floors, floors_basis, refs, cpu = [], [], [], [], []
        ref_pred, ref_ks = None, None
        for i in range(max(repeats, ref_repeats)):
            load = os.getloadavg()[0]
            if i < repeats:
                seconds, (pred, masc) = timed(lambda: ours_fit_predict(X_in, y, X_test_in, t, device))
                ours.append(seconds)
                pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else pred
                alone, with_basis = floor(X, y, masc, device)
                floors.append(alone)
                floors_basis.append(with_basis)
                if device.type != "cpu":  # the CPU beside it, same data, same threads
                    seconds, (cpu_pred, _) = timed(lambda: ours_fit_predict(X, y, X_test, t, torch.device("cpu")))
                    cpu.append(seconds)
            if i < ref_repeats:
                seconds, (ref_pred, ref_ks) = timed(lambda: reference_fit_predict(X, y, X_test, t))
                refs.append(seconds)
            print(
                f"  {shape} {device} threads={threads} rep {i}: ours {ours[-1]:.2f}s floor {floors[-1]:.2f}s "
                f"(+basis {floors_basis[-1]:.2f}s)"
                + (f" reference {refs[-1]:.2f}s" if i < ref_repeats else "")
                + f" (load {load:.2f} -> {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    same = float(np.mean(pred == ref_pred)) if ref_pred is not None else float("nan")
    ref_ks = ref_ks if ref_pred is not None else [0]
    median = statistics.median(ours)
    return {
        "shape": shape, "n": n, "d": d, "classes": n_classes, "n_test": n_test, "threads": threads,
        "device": str(device), "rows_per_second": (n + n_test) / median,
        "cpu": statistics.median(cpu) if cpu else None,
        "cpu_rows_per_second": (n + n_test) / statistics.median(cpu) if cpu else None,
        "cpu_identical": float(np.mean(cpu_pred == pred)) if cpu else None,
        "ours": median, "floor": statistics.median(floors),
        "floor_basis": statistics.median(floors_basis), "reference": statistics.median(refs) if refs else float("nan"),
        "identical": same, "k_ours": masc.n_components_.tolist(), "k_ref": ref_ks, "solver": masc.solver_,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--threads", default="1,all", help="comma-separated thread counts; 'all' = every core")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours (median reported)")
    parser.add_argument("--ref-repeats", type=int, default=3, help="runs of the reference, square shape")
    parser.add_argument(
        "--wide-ref-repeats", type=int, default=1, help="runs of the reference, wide shape (about 2 minutes each)"
    )
    parser.add_argument("--t", type=float, default=0.99, help="n_components (variance fraction)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the CPU is timed beside a GPU)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each shape's samples (short checks)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_masc: --device cuda needs a CUDA device; torch sees none")

    cores = os.cpu_count() or 1
    thread_counts = [cores if s == "all" else int(s) for s in args.threads.split(",")]
    shapes = list(SHAPES) if args.shape == "all" else [args.shape]
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores; torch {torch.__version__}, "
          f"numpy {np.__version__}; {THREADS_ENV}={os.environ.get(THREADS_ENV, '1 (default)')}; "
          f"load {os.getloadavg()}")
    rows = []
    for shape in shapes:
        for threads in thread_counts:
            ref_repeats = args.wide_ref_repeats if shape == "wide" else args.ref_repeats
            rows.append(run(shape, threads, args.repeats, ref_repeats, args.t, device, args.scale))
    header = ["shape", "device", "threads", "ours (s)", "rows/s", "CPU (s)", "CPU rows/s", "floor (s)", "ours/floor",
              "floor+basis (s)", "ours/(floor+basis)", "reference (s)", "speed-up", "identical", "k_c ours (ref)"]
    print("\n| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for r in rows:
        ks = f"{min(r['k_ours'])}-{max(r['k_ours'])} ({min(r['k_ref'])}-{max(r['k_ref'])})"
        print(
            f"| {r['shape']} {r['n']}x{r['d']}, {r['classes']} classes, {r['n_test']} test ({r['solver']}) "
            f"| {r['device']} | {r['threads']} | {r['ours']:.2f} | {r['rows_per_second']:,.0f} "
            f"| {'-' if r['cpu'] is None else format(r['cpu'], '.2f')} "
            f"| {'-' if r['cpu'] is None else format(r['cpu_rows_per_second'], ',.0f')} "
            f"| {r['floor']:.2f} | {r['ours'] / r['floor']:.2f} "
            f"| {r['floor_basis']:.2f} | {r['ours'] / r['floor_basis']:.2f} "
            f"| {r['reference']:.2f} | {r['reference'] / r['ours']:.1f}x | {100 * r['identical']:.2f}% | {ks} |"
        )
    print(f"load at the end: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"command": "python benchmarks/bench_masc.py " + " ".join(os.sys.argv[1:]),
                       "machine": {"platform": platform.platform(), "cpus": cores, "torch": torch.__version__,
                                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
                       "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
