"""Benchmark ProbeRunner on a CIFAR-size ResNet-18: fit + evaluate against its floor (the bare forward pass and the
MASC work no exact implementation can skip), with peak memory and images/s.

Workload (issue 3): timm ``resnet18`` (random init, 10 classes) on 32×32 inputs; probe points after the stem's
max-pool, the two layer1 block outputs (the second is the layer1 stage output), layer2's first block, the four stage
outputs and the pooled features; random images with balanced random true labels and 80% of them re-drawn at random
(the "corrupted" set), so both label sets are fitted; probes masc + ncm; the linear probe is timed separately.

Everything below is measured in ONE run, the floor's parts each timed alone with the routines the probe calls, on
random inputs of the sizes this run's fitted probes have:

* forward: the bare model over the same batches (image generation included, as it is in the runner's passes);
* decompositions: MASC's eigendecomposition (tridiagonal form + its eigenvalues) of each class's matrix, size
  m = d (scatter form) or n_c (Gram form);
* basis: the eigenvectors scoring needs, mapped back to the matrix's basis — the top k_c, or the d − k_c of the
  complement where MASC scores from it (k_c > d/2, scatter form) — plus, for Gram-form classes, the product X_cᵀU
  that turns Gram eigenvectors into the basis;
* prediction: the products that project every scored row (the test rows, and the training rows scored for training
  accuracy) on each layer's stacked columns (timed on ``--floor-rows`` rows and scaled);

then ``fit`` + ``evaluate``, the pass over their sum (and, beside it, over their sum plus every class's
second-moment product timed alone: X_cX_cᵀ in the Gram form, X_cᵀX_c in the scatter form, work an exact solve
needs in one of the two forms but that the floor leaves out) (the rest is what the runner adds: statistics, the row
cache, grouping, bookkeeping), images/s, and peak RSS (``--max-memory`` sets the budget). That pass probes the trained
network alone (``controls=()``). The same pass with controls follows, side by side (``--controls``, default
``init+input``: the same architecture re-initialized, probed at the same layers in the same passes, plus the raw
input as one more layer), timed whole and by part. ``--device cuda`` runs the model
and the probes on the GPU; ``--cpu-reference N`` adds, in the same run, the CPU's images/s on N training images.

    python benchmarks/bench_probe.py                          # the full workload: 50,000 train, 10,000 test
    python benchmarks/bench_probe.py --n-train 10000 --n-test 2000 --classes 2 --threads 1 --json out.json
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
        if n < 1:
            raise SystemExit(f"bench_probe: expected at least one image, got n={n}")
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


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def timed_in_run() -> dict[str, float]:
    """Wrap MASC's one decomposition routine to add up, during the run, the time of the decompositions and of the
    eigenvectors (basis or complement) they are asked for."""
    from masc_probe.probes import _eigen, baselines, masc

    acc = {"decompositions": 0.0, "basis": 0.0, "count": 0}
    original = _eigen.decompose

    class _Timed:
        def __init__(self, inner: _eigen.Eigen) -> None:
            self._inner = inner

        def __getattr__(self, name: str):  # values, rank
            return getattr(self._inner, name)

        def _timed(self, name: str, k: int) -> torch.Tensor:
            t = time.perf_counter()
            try:
                return getattr(self._inner, name)(k)
            finally:
                acc["basis"] += time.perf_counter() - t

        def vectors(self, k: int) -> torch.Tensor:
            return self._timed("vectors", k)

        def complement(self, k: int) -> torch.Tensor:
            return self._timed("complement", k)

    def wrapper(matrix: torch.Tensor, *args, **kwargs) -> _Timed:
        t = time.perf_counter()
        try:
            return _Timed(original(matrix, *args, **kwargs))
        finally:
            acc["decompositions"] += time.perf_counter() - t
            acc["count"] += 1

    masc.decompose = wrapper
    baselines.decompose = wrapper
    return acc


def masc_shapes(runner, class_counts: dict[str, np.ndarray]) -> list[dict]:
    """Per fitted MASC (layer, label set): d, per class the matrix size m, k_c, scoring columns and form; with a
    profile, each class's profile columns kmax (the top k of its largest kept size) and their sum."""
    out = []
    for (layer, probe, labels), est in runner.estimators_.items():
        if probe != "masc":
            continue
        d = int(est.n_features_in_)
        W, _, flip = est._solution.stacked
        solvers = list(est._solution.solvers)
        ks = [int(k) for k in est.n_components_]
        profile = getattr(est._solution, "profile", None)
        kmax = [int(k) for k in profile.kmax] if profile is not None else [None] * len(ks)
        counts = class_counts[labels]
        classes = []
        for c, (k, f, form) in enumerate(zip(ks, flip.tolist(), solvers, strict=True)):
            m = int(counts[c]) if form == "gram" else d
            classes.append({"m": m, "k": k, "columns": d - k if f else k, "complement": bool(f), "form": form,
                            "n_c": int(counts[c]), "kmax": kmax[c]})
        out.append({"layer": layer, "labels": labels, "d": d, "columns": int(W.shape[1]), "classes": classes,
                    "profile_columns": None if profile is None else int(profile.kmax.sum()),
                    "profile_sizes": None if profile is None else list(profile.sizes),
                    "profile_dropped": None if profile is None else list(profile.dropped)})
    return out


def floor_alone(shapes: list[dict], n_scored: int, floor_rows: int, device: torch.device,
                n_test: int | None = None) -> dict:
    """Time the floor's MASC parts alone on random inputs of the run's sizes (one class per distinct (m, k, form)
    timed, the others counted; prediction on floor_rows rows, scaled to n_scored). Shapes with a profile (kmax)
    add its products under "profile" (see profile_floor); *n_test* of the n_scored rows are test rows."""
    from masc_probe.probes._eigen import decompose
    from masc_probe.probes._linalg import gram, matmul, scatter

    gen = torch.Generator().manual_seed(0)
    seen: dict[tuple, tuple[float, ...]] = {}
    moments: dict[tuple, float] = {}
    second = 0.0
    dec = basis = pred = basis_direct = pred_direct = 0.0
    per_layer: dict[str, dict[str, float]] = {}
    prof = {"basis": 0.0, "prediction": 0.0, "replaces": 0.0}
    for fitted in shapes:
        d = fitted["d"]
        row = per_layer.setdefault(fitted["layer"], {"decompositions": 0.0, "basis": 0.0, "prediction": 0.0})
        for cls in fitted["classes"]:
            key = (cls["m"], cls["k"], cls["complement"], cls["form"], d, cls.get("kmax"))
            if key not in seen:
                a = torch.randn(cls["m"], cls["m"] + 8, generator=gen).to(device)
                mat = a @ a.T
                rows = torch.randn(cls["m"], d, generator=gen).to(device) if cls["form"] == "gram" else None
                del a
                t0 = _sync(device)
                eigen = decompose(mat, overwrite=True)
                t1 = _sync(device)
                vectors = eigen.complement(cls["k"]) if cls["complement"] else eigen.vectors(max(cls["k"], 1))
                if rows is not None:  # Gram form: the basis X_cᵀ U / sqrt(λ) from the Gram eigenvectors
                    matmul(rows.T, vectors.to(device))
                t2 = _sync(device)
                if cls["complement"]:  # what the top-k_c basis would have cost instead (for the comparison)
                    del vectors
                    vectors = eigen.vectors(cls["k"])
                seen[key] = (t1 - t0, t2 - t1, _sync(device) - t2 if cls["complement"] else t2 - t1)
                if cls.get("kmax"):  # the profile's columns beyond those already mapped back
                    seen[key] += (_profile_basis(eigen, cls, rows, device) + (seen[key][2] if cls["complement"]
                                                                              else 0.0),)
                del mat, eigen, vectors, rows
            mkey = (cls["n_c"], d, cls["form"])
            if mkey not in moments:  # the class's second moment: X_cX_cᵀ (Gram form) or X_cᵀX_c (scatter form)
                rows = torch.randn(cls["n_c"], d, generator=gen).to(device)
                t0 = _sync(device)
                (gram if cls["form"] == "gram" else scatter)(rows)
                moments[mkey] = _sync(device) - t0
                del rows
            second += moments[mkey]
            t_dec, t_basis, t_direct = seen[key][:3]
            dec += t_dec
            basis += t_basis
            basis_direct += t_direct
            row["decompositions"] += t_dec
            row["basis"] += t_basis
            prof["basis"] += seen[key][3] if len(seen[key]) > 3 else 0.0
        if fitted["columns"]:
            rows = torch.randn(min(floor_rows, n_scored), d, generator=gen).to(device)
            W = torch.randn(d, fitted["columns"], generator=gen).to(device)
            t = _sync(device)
            matmul(rows, W).square_()
            t_pred = (_sync(device) - t) * n_scored / len(rows)
            pred += t_pred
            row["prediction"] += t_pred
            direct = sum(c["k"] for c in fitted["classes"])
            if direct != fitted["columns"]:  # scored from complements: the same products on Σ k_c basis columns
                W = torch.randn(d, direct, generator=gen).to(device)
                t = _sync(device)
                matmul(rows, W).square_()
                pred_direct += (_sync(device) - t) * n_scored / len(rows)
            else:
                pred_direct += t_pred
            if fitted.get("profile_columns") and n_test:  # test rows: the profile's columns instead
                prof["replaces"] += t_pred * n_test / n_scored
                W = torch.randn(d, fitted["profile_columns"], generator=gen).to(device)
                t = _sync(device)
                matmul(rows, W).square_()
                prof["prediction"] += (_sync(device) - t) * n_test / len(rows)
            del rows, W
    out = {"decompositions": dec, "basis": basis, "prediction": pred, "per_layer": per_layer,
           "without_complements": {"basis": basis_direct, "prediction": pred_direct}, "second_moments": second}
    if any(fitted.get("profile_columns") for fitted in shapes) and n_test:
        out["profile"] = prof
    return out


def _profile_basis(eigen, cls: dict, rows: torch.Tensor | None, device: torch.device) -> float:
    """Seconds to map back the profile's top kmax eigenvectors beyond the k already mapped back (all kmax where
    the fitted columns are the complement: the caller adds the top k's time), with the Gram form's product."""
    from masc_probe.probes._linalg import matmul

    have = 0 if cls["complement"] else cls["k"]
    t = _sync(device)
    if cls["kmax"] > cls["k"] or cls["complement"]:
        new = eigen.vectors(cls["kmax"])[:, min(have, cls["kmax"]):]
        if rows is not None and new.shape[1]:
            matmul(rows.T, new.to(device))
    return _sync(device) - t


def profile_floor(floor: dict, t_bare: float) -> float:
    """The floor with the profile: forward, decompositions, the basis with the profile's extra columns (its top
    kmax_c per class beyond the fitted top k_c, all kmax_c where the fitted columns are the complement; Gram
    form: their X_cᵀU), and prediction with every test row projected on the profile's columns instead of the
    fitted ones (the fitted size is read from the same projection; training-accuracy rows keep the fitted ones)."""
    prof = floor["profile"]
    return (t_bare + floor["decompositions"] + floor["basis"] + prof["basis"] + floor["prediction"]
            - prof["replaces"] + prof["prediction"])


def probe_pass(model: torch.nn.Module, train: RandomImages, test: RandomImages, args, device: torch.device,
               controls: tuple[str, ...] = (), profile: bool | None = None):
    """fit + evaluate of masc + ncm (MASC's profile on or off: ``args.profile`` unless given); returns (runner,
    report, seconds fit, seconds fit + evaluate)."""
    from masc_probe.runner import ProbeRunner

    runner = ProbeRunner(model, LAYERS, probes=("masc", "ncm"), labels=args.labels, device=device,
                         max_memory=args.max_memory, progress=not args.quiet, controls=controls,
                         profile=args.profile if profile is None else profile)
    t = time.perf_counter()
    runner.fit(train)
    t_fit = _sync(device) - t
    report = runner.evaluate(test)
    return runner, report, t_fit, _sync(device) - t


def _parts(timings: dict[str, float]) -> dict[str, float]:
    return {"forward": timings.get("forward", 0.0) + timings.get("evaluate_forward", 0.0),
            "statistics": timings.get("statistics", 0.0) + timings.get("cache_write", 0.0)
            + timings.get("deferred_statistics", 0.0),
            "solve": timings.get("solve", 0.0) + timings.get("deferred_solve", 0.0),
            "prediction": timings.get("predict", 0.0) + timings.get("train_accuracy", 0.0)}


def with_controls(model: torch.nn.Module, train: RandomImages, test: RandomImages, args, device: torch.device,
                  first: dict) -> dict:
    """The probe pass with each set of controls of ``--controls``, between two passes without (*first*, the main
    pass, and one more after them): each ratio is over the mean of the two, so that a drift of the machine's load
    during the run shows as their difference instead of hiding in the ratio."""
    out: dict[str, dict] = {"none": first}
    for variant in [*args.controls, "none (again)"]:
        names = () if variant == "none (again)" else tuple(part for part in variant.split("+") if part)
        runner, _, t_fit, t_fit_eval = probe_pass(model, train, test, args, device, controls=names)
        out[variant] = {"fit": t_fit, "fit_evaluate": t_fit_eval, "parts": _parts(runner.timings_),
                        "layers": runner.layers, "fitted_probes": len(runner.estimators_),
                        "peak_rss_gb": peak_rss_gb()}
        runner.close()
    base = {k: (out["none"]["parts"][k] + out["none (again)"]["parts"][k]) / 2 for k in out["none"]["parts"]}
    base_total = (out["none"]["fit_evaluate"] + out["none (again)"]["fit_evaluate"]) / 2
    for variant in args.controls:
        row = out[variant]
        row["over_without"] = row["fit_evaluate"] / base_total
        row["parts_over_without"] = {k: v / base[k] if base[k] else None for k, v in row["parts"].items()}
    return out


def floor_row(floor: dict, t_bare: float) -> dict:
    """One round's floors beside its bare forward: without the profile, with it (profile_floor), its parts, and
    every class's second-moment product (reported beside the floors, never in them)."""
    return {"bare_forward": t_bare,
            "floor_off": t_bare + floor["decompositions"] + floor["basis"] + floor["prediction"],
            "floor_on": profile_floor(floor, t_bare), "floor_parts": floor, "second_moments": floor["second_moments"]}


def profile_rounds(model: torch.nn.Module, train: RandomImages, test: RandomImages, args, device: torch.device,
                   shapes: list[dict], n_scored: int, first: dict) -> dict:
    """MASC's profile on and off, side by side, ``--profile-rounds`` times: round 1 is the main pass (profile on,
    its bare forward and floor) and one pass with the profile off; every later round times the bare forward and
    the floor's parts again, then both passes, the order alternating (on/off, off/on, ...) so that a drift of the
    machine's load does not fall on one side. Each round's ratios are over that round's own floor; the summary
    holds their medians."""
    rounds = [first]
    for r in range(args.profile_rounds):
        if r:
            t_bare = bare_forward(model, train, test, device=device)
            rounds.append(floor_row(floor_alone(shapes, n_scored, args.floor_rows, device, n_test=args.n_test),
                                    t_bare))
        row = rounds[r]
        for on in ((False,) if r == 0 else (True, False) if r % 2 == 0 else (False, True)):
            runner, _, t_fit, t_fit_eval = probe_pass(model, train, test, args, device, profile=on)
            side = "on" if on else "off"
            row[f"pass_{side}"], row[f"parts_{side}"] = t_fit_eval, _parts(runner.timings_)
            row[f"fit_{side}"], row[f"spilled_{side}"] = t_fit, len(getattr(runner.estimators_, "spilled", []))
            runner.close()
        row["order"] = ["on", "off"] if r % 2 == 0 else ["off", "on"]
        row["ratios"] = {"on_over_floor_on": row["pass_on"] / row["floor_on"],
                         "off_over_floor_off": row["pass_off"] / row["floor_off"],
                         "on_over_off": row["pass_on"] / row["pass_off"],
                         "on_over_floor_on_plus_second_moments": row["pass_on"] / (row["floor_on"]
                                                                                   + row["second_moments"])}
    keys = ("on_over_floor_on", "off_over_floor_off", "on_over_off", "on_over_floor_on_plus_second_moments")
    median = {k: float(np.median([row["ratios"][k] for row in rounds])) for k in keys}
    for k in ("pass_on", "pass_off", "floor_on", "floor_off", "bare_forward"):
        median[k] = float(np.median([row[k] for row in rounds]))
    return {"rounds": rounds, "median": median, "loadavg_after": os.getloadavg()}


def cpu_reference(args) -> dict:
    """images/s of the bare forward and of the probe pass on the CPU, on a smaller workload of the same kind."""
    import timm

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=args.classes).eval()
    n_train, n_test = args.cpu_reference, max(1, args.cpu_reference // 5)
    train = RandomImages(n_train, args.batch_size, args.classes, seed=1, corrupt=0.8)
    test = RandomImages(n_test, args.batch_size, args.classes, seed=2, corrupt=0.0)
    t_bare = bare_forward(model, train, test, device=cpu)
    _, _, _, t_pass = probe_pass(model, train, test, args, cpu)
    return {"n_train": n_train, "n_test": n_test, "torch_threads": torch.get_num_threads(),
            "images_per_second": {"bare_forward": (n_train + n_test) / t_bare,
                                  "probe_pass": (n_train + n_test) / t_pass}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--labels", choices=("both", "true"), default="both", help="label sets fitted")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--max-memory", type=int, default=None, help="ProbeRunner budget in bytes (default: its own)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--floor-rows", type=int, default=1024, help="rows the prediction floor is timed on (scaled)")
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                   help="time the floor's parts alone")
    p.add_argument("--cpu-reference", type=int, default=0,
                   help="with --device cuda: also time this many training images on the CPU (images/s beside)")
    p.add_argument("--linear", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the linear probe (a separate run)")
    p.add_argument("--linear-epochs", type=int, default=20)
    p.add_argument("--controls", type=lambda t: [v for v in t.split(",") if v and v != "none"],
                   default=["init+input"], metavar="V,…",
                   help="control sets timed beside the pass without: init+input (default), init, input; none to skip")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                   help="MASC's profile (every subspace size from one fit) in the main pass, as the runner's default")
    p.add_argument("--profile-rounds", type=int, default=0, metavar="N",
                   help="N rounds of the pass with the profile on and off side by side, each against its own floor "
                        "(round 1 reuses the main pass); medians reported")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    device = torch.device(args.device)
    if args.profile_rounds and not (args.profile and args.floor):
        raise SystemExit("bench_probe: --profile-rounds needs the profile and the floor (--profile --floor), got "
                         f"--profile={args.profile} --floor={args.floor}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_probe: --device cuda needs a CUDA device; torch sees none")

    import timm

    from masc_probe.runner import ProbeRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=args.classes).eval().to(device)
    train = RandomImages(args.n_train, args.batch_size, args.classes, seed=1, corrupt=0.8)
    test = RandomImages(args.n_test, args.batch_size, args.classes, seed=2, corrupt=0.0)
    bare_forward(model, RandomImages(2 * args.batch_size, args.batch_size, args.classes, 3, 0.0), device=device)
    rss_start = peak_rss_gb()
    model_gb = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 1e9

    t_bare = bare_forward(model, train, test, device=device)
    in_run = timed_in_run()
    runner, report, t_fit, t_fit_eval = probe_pass(model, train, test, args, device)
    fitted = len(runner.estimators_)
    rss_probe = peak_rss_gb()
    tm = runner.timings_

    dims = {layer: runner.features(next(iter(test))[0][:2])[layer].shape[1] for layer in LAYERS}
    class_counts = {"corrupted": np.bincount(train.y, minlength=args.classes),
                    "true": np.bincount(train.y_true, minlength=args.classes),
                    "label": np.bincount(train.y_true, minlength=args.classes)}
    shapes = masc_shapes(runner, class_counts)
    n_scored = args.n_test + runner.n_train_scored_
    floor = floor_alone(shapes, n_scored, args.floor_rows, device, n_test=args.n_test) if args.floor else None

    forward = tm.get("forward", 0.0) + tm.get("evaluate_forward", 0.0)
    # statistics: the pass's partial_fit calls and row-cache writes, and the deferred layers' partial_fit from the
    # cache (reading it back included); solve_other: everything in the solves but decompositions and eigenvectors.
    statistics = tm.get("statistics", 0.0) + tm.get("cache_write", 0.0) + tm.get("deferred_statistics", 0.0)
    prediction = tm.get("predict", 0.0) + tm.get("train_accuracy", 0.0)
    solve_rest = tm.get("solve", 0.0) + tm.get("deferred_solve", 0.0) - in_run["decompositions"] - in_run["basis"]
    n_images = args.n_train + args.n_test
    seconds = {"bare_forward": t_bare, "fit": t_fit, "fit_evaluate": t_fit_eval,
               "in_run": {"forward": forward, "statistics": statistics,
                          "decompositions": in_run["decompositions"], "basis": in_run["basis"],
                          "solve_other": solve_rest, "prediction": prediction,
                          "other": t_fit_eval - forward - statistics - in_run["decompositions"] - in_run["basis"]
                          - solve_rest - prediction},
               "runner_timings": tm}
    ratios = {"fit_evaluate_over_bare_forward": t_fit_eval / t_bare}
    if floor is not None:
        total = t_bare + floor["decompositions"] + floor["basis"] + floor["prediction"]
        seconds["floor"] = {"forward": t_bare, "decompositions": floor["decompositions"], "basis": floor["basis"],
                            "prediction": floor["prediction"], "sum": total, "rest": t_fit_eval - total,
                            "per_layer": floor["per_layer"],
                            # the same floor had every class been scored from its top-k_c basis
                            "without_complements": floor["without_complements"]}
        ratios["fit_evaluate_over_floor"] = t_fit_eval / total
        ratios["fit_evaluate_over_forward_plus_decompositions"] = t_fit_eval / (t_bare + floor["decompositions"])
        # Reported beside the floor, never inside it: each class's second-moment product (one product of all its
        # rows: X_cX_cᵀ in the Gram form, X_cᵀX_c in the scatter form, which the pass streams in blocks).
        seconds["floor"]["second_moments"] = floor["second_moments"]
        ratios["fit_evaluate_over_floor_plus_second_moments"] = t_fit_eval / (total + floor["second_moments"])
        if "profile" in floor:  # the pass kept MASC's profile: its products too (profile_floor)
            seconds["floor"]["profile"] = floor["profile"]
            seconds["floor"]["sum_with_profile"] = profile_floor(floor, t_bare)
            ratios["fit_evaluate_over_floor_with_profile"] = t_fit_eval / seconds["floor"]["sum_with_profile"]
            ratios["fit_evaluate_over_floor_with_profile_plus_second_moments"] = t_fit_eval / (
                seconds["floor"]["sum_with_profile"] + floor["second_moments"])
    budget_gb = runner.max_memory / 1e9
    result = {
        "command": "python benchmarks/bench_probe.py " + " ".join(os.sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "probe_threads": os.environ.get("MASC_PROBE_THREADS", "1 (default)"),
                    "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else None, "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "workload": {"n_train": args.n_train, "n_test": args.n_test, "classes": args.classes,
                     "label_sets": runner.label_sets_, "layers": dims, "batch_size": args.batch_size,
                     "max_memory": runner.max_memory, "memory_plan": runner.plan_.to_dict(),
                     "solvers": sorted(set(runner.solvers_.values())),
                     "train_accuracy_rows": runner.n_train_scored_, "scored_rows": n_scored},
        "seconds": seconds,
        "ratios": ratios,
        "images_per_second": {"bare_forward": n_images / t_bare, "probe_pass": n_images / t_fit_eval},
        "masc": [{k: v for k, v in s.items() if k != "classes"}
                 | {"k": [c["k"] for c in s["classes"]], "complement": [c["complement"] for c in s["classes"]],
                    "forms": sorted({c["form"] for c in s["classes"]})} for s in shapes],
        "decompositions_in_run": in_run["count"],
        "peak_rss_gb": {"before_fit": rss_start, "after_fit_evaluate": rss_probe, "model": model_gb,
                        "target": budget_gb + model_gb + 1.5,
                        "within_target": rss_probe <= budget_gb + model_gb + 1.5},
        "best": report.to_dict()["best"],
    }
    spilled = len(getattr(runner.estimators_, "spilled", []))
    runner.close()
    if args.profile_rounds:
        first = floor_row(floor, t_bare) | {"pass_on": t_fit_eval, "parts_on": _parts(tm), "fit_on": t_fit,
                                            "spilled_on": spilled}
        result["profile"] = profile_rounds(model, train, test, args, device, shapes, n_scored, first)
    if args.controls:
        first = {"fit": t_fit, "fit_evaluate": t_fit_eval, "parts": _parts(tm), "layers": list(LAYERS),
                 "fitted_probes": fitted}
        result["controls"] = with_controls(model, train, test, args, device, first)
    if args.cpu_reference and device.type != "cpu":
        result["cpu_reference"] = cpu_reference(args)
    if args.linear:
        lin = ProbeRunner(model, LAYERS, probes=("linear",), labels=args.labels, device=device, controls=(),
                          max_memory=args.max_memory, progress=not args.quiet, train_accuracy=False,
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
