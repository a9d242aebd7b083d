"""MASC's profile and the runner's selection on a device against the CPU, from the same features (gpu_check.sh).

1. MASC with its profile (every size of ``PROFILE_SIZES``) fitted on the CPU and on ``--device`` from the same
   rows, at two widths: d = 512 with fewer rows per class than features (the Gram form) and d = 96 with more (the
   scatter form). Compared: k_c at every size (where they differ, how far the CPU's cumulative eigenvalue ratios
   are from the threshold), and ``predict_profile`` at every size: a prediction that differs counts only where the
   CPU's cosines of the two classes at that size are within ``--tie`` of each other (a near-tie either side may
   round to), or where k_c itself differs within the ratio tolerance.
2. ``ProbeRunner`` fitted and evaluated on the CPU and on ``--device``, on a model whose layers compute the same
   features on every device (a ReLU and a slice: no rounding), the raw input as a control: the report's profile
   rows (accuracy and k_c at every size, per network, layer and label set) and its selection (each network's
   chosen layer and size on the choosing part, and the comparisons on the evaluation part) must be equal; a profile
   accuracy may differ by at most ``--row-tolerance`` test rows.

Writes every comparison to ``--json`` with ``ok``; exits 1 when not ok. On ``--device cpu`` both sides are the CPU
(the script's dry run: equal by construction; it checks that the script runs).

    python benchmarks/profile_device_check.py --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CLASSES = 10


def features(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows near one 8-dimensional subspace per class under heavy noise (signed, so a ReLU changes them; accuracy
    moves with the subspace size), balanced labels."""
    rng = np.random.default_rng(1000 + d)  # the subspaces depend on the width only: train and test share them
    bases = rng.normal(size=(CLASSES, 8, d))
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % CLASSES)
    x = np.einsum("nk,nkd->nd", rng.normal(size=(n, 8)), bases[y]) + 4.0 * rng.normal(size=(n, d))
    return x.astype(np.float32), y


def corrupt(y: np.ndarray, rate: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flip = rng.random(len(y)) < rate
    return np.where(flip, rng.integers(0, CLASSES, len(y)), y)


def ratio_gaps(masc: Any, size: float | int) -> list[float]:
    """Per class, how close the CPU's cumulative eigenvalue ratios come to a fraction *size* (0 for a count)."""
    if isinstance(size, int):
        return [0.0] * CLASSES
    gaps = []
    for sub in masc._solved().subspaces:
        ratios = np.cumsum(sub.eigen.values) / sub.trace
        gaps.append(float(np.min(np.abs(ratios - size))))
    return gaps


def compare_masc(cpu_fit: Any, cpu: Any, dev: Any, Xt: np.ndarray, *, tie: float, ratio_tol: float) -> dict:
    """k_c and predict_profile of two frozen MASCs with profiles (CPU, device) on the same test rows."""
    from masc_probe.probes.masc import PROFILE_SIZES

    k_cpu, k_dev = cpu.profile_components_(), dev.profile_components_()
    p_cpu, p_dev = np.asarray(cpu.predict_profile(Xt)), np.asarray(dev.predict_profile(Xt))
    sizes = list(PROFILE_SIZES)
    k_diff, bad, near = [], 0, 0
    for s, size in enumerate(sizes):
        gaps = ratio_gaps(cpu_fit, size)
        differs = [c for c in range(CLASSES) if k_cpu[s, c] != k_dev[s, c]]
        for c in differs:
            k_diff.append({"size": size, "class": c, "k_cpu": int(k_cpu[s, c]), "k_device": int(k_dev[s, c]),
                           "ratio_gap": gaps[c], "tolerated": gaps[c] < ratio_tol})
        rows = np.flatnonzero(p_cpu[s] != p_dev[s])
        if not len(rows):
            continue
        if differs and all(gaps[c] < ratio_tol for c in differs):
            near += len(rows)  # another k_c on the device, at a threshold the eigenvalues straddle
            continue
        cos = np.asarray(cpu_fit.cosines(Xt[rows], n_components=size))
        margin = np.abs(cos[np.arange(len(rows)), p_cpu[s, rows]] - cos[np.arange(len(rows)), p_dev[s, rows]])
        near += int(np.sum(margin < tie))
        bad += int(np.sum(margin >= tie))
    ok = bad == 0 and all(d["tolerated"] for d in k_diff)
    return {"sizes": sizes, "profile_sizes_equal": cpu.profile_sizes_ == dev.profile_sizes_,
            "k_differences": k_diff, "rows_differing_at_ties": near, "rows_differing_otherwise": bad,
            "agreement": float(np.mean(p_cpu == p_dev)), "ok": bool(ok and cpu.profile_sizes_ == dev.profile_sizes_)}


def masc_part(device: torch.device, args) -> dict:
    from masc_probe.probes import MinimumAngleSubspaceClassifier as MASC
    from masc_probe.probes.masc import PROFILE_SIZES

    out = {}
    for d, n_train in ((512, 3000), (96, 3000)):  # 300 rows per class: Gram form at 512, scatter at 96
        X, y = features(n_train, d, seed=1)
        Xt, _ = features(args.n_test, d, seed=2)
        X, Xt = np.maximum(X, 0.0), np.maximum(Xt, 0.0)  # non-negative, as activations after a ReLU
        times = {}
        fitted = {}
        for side, where in (("cpu", torch.device("cpu")), ("device", device)):
            t = time.perf_counter()
            est = MASC(0.99, device=where).fit(X, y)
            fitted[side] = (est, est.frozen(profile=PROFILE_SIZES))
            fitted[side][1].predict_profile(Xt)
            if where.type == "cuda":
                torch.cuda.synchronize(where)
            times[side] = time.perf_counter() - t
        row = compare_masc(fitted["cpu"][0], fitted["cpu"][1], fitted["device"][1], Xt, tie=args.tie,
                           ratio_tol=args.ratio_tolerance)
        out[f"d{d}"] = {"n_train": n_train, "solver": fitted["cpu"][0].solver_, "seconds": times, **row}
    return out


class Take(nn.Module):
    """The first *k* features: a layer that computes the same values on every device."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.k]


def runner_report(device: torch.device, args) -> tuple[dict, float]:
    from masc_probe.runner import ProbeRunner

    x, y = features(args.n_train, 512, seed=3)
    xt, yt = features(args.n_test, 512, seed=4)
    yc = corrupt(y, 0.4, seed=5)
    model = nn.Sequential(nn.ReLU(), Take(96))  # layers "0" (512 wide: Gram form) and "1" (96 wide: scatter)
    train = [(torch.from_numpy(x[i:i + 500]), torch.from_numpy(yc[i:i + 500]), torch.from_numpy(y[i:i + 500]))
             for i in range(0, len(x), 500)]
    test = [(torch.from_numpy(xt[i:i + 500]), torch.from_numpy(yt[i:i + 500])) for i in range(0, len(xt), 500)]
    t = time.perf_counter()
    runner = ProbeRunner(model, ["0", "1"], probes=("masc",), device=device, progress=False, controls=("input",))
    report = runner.fit(train).evaluate(test, corruption={"mode": "random", "rate": 0.4})
    runner.close()
    return report.to_dict(), time.perf_counter() - t


def compare_reports(cpu: dict, dev: dict, *, n_test: int, row_tolerance: int) -> dict:
    """The profile rows and the selection block of two reports of the same data."""
    def key(row: dict) -> tuple:
        return row["layer"], row["labels"], row["control"], str(row["size"])

    a, b = {key(r): r for r in cpu.get("profile", [])}, {key(r): r for r in dev.get("profile", [])}
    rows = []
    for k in sorted(set(a) | set(b)):
        ra, rb = a.get(k), b.get(k)
        diff = None if ra is None or rb is None else int(round(abs(ra["accuracy"] - rb["accuracy"]) * n_test))
        if diff is None or diff or ra["k"] != rb["k"]:
            rows.append({"row": list(k), "rows_apart": diff, "k_equal": None if diff is None else ra["k"] == rb["k"]})
    sel_a, sel_b = cpu.get("selection"), dev.get("selection")
    same_choices = sel_a is not None and sel_b is not None and sel_a.get("choices") == sel_b.get("choices")
    same_selection = sel_a == sel_b
    ok = (bool(a) and same_choices and all(r["rows_apart"] is not None and r["rows_apart"] <= row_tolerance
                                           and r["k_equal"] for r in rows))
    return {"profile_rows": len(a), "profile_rows_differing": rows, "choices_equal": same_choices,
            "selection_equal": same_selection, "choices_cpu": None if sel_a is None else sel_a.get("choices"),
            "choices_device": None if sel_b is None else sel_b.get("choices"), "ok": bool(ok)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (the dry run: the CPU on both sides)")
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--tie", type=float, default=1e-4, help="cosines closer than this are a tie either side may take")
    p.add_argument("--ratio-tolerance", type=float, default=1e-5,
                   help="a k_c may differ where a cumulative eigenvalue ratio is this close to the threshold")
    p.add_argument("--row-tolerance", type=int, default=2, help="test rows a profile accuracy may differ by")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("profile_device_check: --device cuda needs a CUDA device; torch sees none")
    if args.threads:
        torch.set_num_threads(args.threads)
    t = time.perf_counter()
    masc = masc_part(device, args)
    cpu_report, t_cpu = runner_report(torch.device("cpu"), args)
    dev_report, t_dev = runner_report(device, args)
    runner = compare_reports(cpu_report, dev_report, n_test=args.n_test, row_tolerance=args.row_tolerance)
    result = {"command": "python benchmarks/profile_device_check.py " + " ".join(sys.argv[1:] if argv is None
                                                                                 else argv),
              "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "loadavg": os.getloadavg(), "masc": masc,
              "runner": {**runner, "seconds": {"cpu": t_cpu, "device": t_dev}},
              "seconds": time.perf_counter() - t,
              "ok": all(v["ok"] for v in masc.values()) and runner["ok"]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
