"""benchmarks/bench_probe.py and bench_masc.py on the CPU, as gpu_check.sh calls them with --device: they run, their
JSON holds the floor table, images/s and peak memory, and the parts add up. Timings themselves are not asserted; the
floor's arithmetic is, on a clock that counts its readings."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_bench_probe_floor_table(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    proc = _run(["benchmarks/bench_probe.py", "--device", "cpu", "--threads", "1", "--n-train", "120",
                 "--n-test", "40", "--batch-size", "40", "--classes", "2", "--no-linear", "--quiet",
                 "--max-memory", str(2 * 1024**3), "--profile-rounds", "2", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    floor = result["seconds"]["floor"]
    parts = ("forward", "decompositions", "basis", "prediction")
    assert all(floor[p] >= 0 for p in parts)
    assert floor["forward"] == result["seconds"]["bare_forward"]
    # The per-layer parts, added up on their own, make the totals (the floor's arithmetic itself is pinned by
    # test_the_floor_times_every_class_once_and_scales_prediction_to_the_scored_rows, on a counting clock).
    for part in ("decompositions", "basis", "prediction"):
        assert sum(row[part] for row in floor["per_layer"].values()) == pytest.approx(floor[part])
    assert result["ratios"]["fit_evaluate_over_floor"] == pytest.approx(result["seconds"]["fit_evaluate"]
                                                                        / floor["sum"])
    assert set(floor["per_layer"]) == set(result["workload"]["layers"])
    # The main pass kept MASC's profile: its floor adds the profile's basis and swaps the test rows' product.
    prof = floor["profile"]
    assert floor["sum_with_profile"] == pytest.approx(floor["sum"] + prof["basis"] - prof["replaces"]
                                                      + prof["prediction"])
    assert result["ratios"]["fit_evaluate_over_floor_with_profile"] == pytest.approx(
        result["seconds"]["fit_evaluate"] / floor["sum_with_profile"])
    # Beside the floor, never in it: every class's second-moment product timed alone.
    assert floor["second_moments"] > 0 and floor["sum"] == pytest.approx(
        floor["forward"] + floor["decompositions"] + floor["basis"] + floor["prediction"])
    assert result["ratios"]["fit_evaluate_over_floor_with_profile_plus_second_moments"] == pytest.approx(
        result["seconds"]["fit_evaluate"] / (floor["sum_with_profile"] + floor["second_moments"]))
    # Profile on and off side by side: round 1 is the main pass, the order alternates, medians of the rounds.
    rounds = result["profile"]["rounds"]
    assert [r["order"] for r in rounds] == [["on", "off"], ["off", "on"]]
    assert rounds[0]["pass_on"] == result["seconds"]["fit_evaluate"]
    assert rounds[0]["floor_on"] == floor["sum_with_profile"] and rounds[0]["floor_off"] == floor["sum"]
    for r in rounds:
        assert r["ratios"]["on_over_off"] == pytest.approx(r["pass_on"] / r["pass_off"])
        assert r["ratios"]["on_over_floor_on"] == pytest.approx(r["pass_on"] / r["floor_on"])
        assert r["ratios"]["on_over_floor_on_plus_second_moments"] == pytest.approx(
            r["pass_on"] / (r["floor_on"] + r["second_moments"]))
    median = result["profile"]["median"]
    assert median["on_over_off"] == pytest.approx(sum(r["ratios"]["on_over_off"] for r in rounds) / 2)
    images = result["images_per_second"]
    assert images["bare_forward"] > 0 and images["probe_pass"] > 0
    memory = result["peak_rss_gb"]
    assert result["workload"]["max_memory"] == 2 * 1024**3
    assert memory["target"] == pytest.approx(2 * 1024**3 / 1e9 + memory["model"] + 1.5)
    # One MASC per layer and label set, each class with its k_c and how it is scored.
    assert len(result["masc"]) == len(result["workload"]["layers"]) * len(result["workload"]["label_sets"])
    for fitted in result["masc"]:
        assert fitted["columns"] == sum(fitted["d"] - k if c else k
                                        for k, c in zip(fitted["k"], fitted["complement"], strict=True))
    # The pass with the controls beside the pass without (issue 18): the init copy adds its 8 layers' probes, the
    # raw input one layer; the ratio is over the mean of the two passes without.
    controls = result["controls"]
    assert list(controls) == ["none", "init+input", "none (again)"]
    assert controls["none"]["fit_evaluate"] == result["seconds"]["fit_evaluate"]
    both, alone = controls["init+input"], controls["none"]
    layers = list(result["workload"]["layers"])
    assert both["layers"] == ["input", *layers] and alone["layers"] == layers
    per_layer = 2 * len(result["workload"]["label_sets"])  # masc and ncm, per label set
    assert alone["fitted_probes"] == per_layer * len(layers) == controls["none (again)"]["fitted_probes"]
    assert both["fitted_probes"] == per_layer * (2 * len(layers) + 1)
    mean = (alone["fit_evaluate"] + controls["none (again)"]["fit_evaluate"]) / 2
    assert both["over_without"] == pytest.approx(both["fit_evaluate"] / mean)


def _shapes() -> list[dict]:
    """Three fitted MASCs as masc_shapes reports them: layer a twice (its second fit repeats the first class's
    sizes, timed once and counted twice), one class scored from its complement, and a Gram-form layer b."""
    plain = {"m": 6, "k": 3, "columns": 3, "complement": False, "form": "scatter", "n_c": 9}
    flipped = {"m": 6, "k": 4, "columns": 2, "complement": True, "form": "scatter", "n_c": 9}
    gram = {"m": 4, "k": 2, "columns": 2, "complement": False, "form": "gram", "n_c": 4}
    return [{"layer": "a", "labels": "corrupted", "d": 6, "columns": 5, "classes": [plain, flipped]},
            {"layer": "a", "labels": "true", "d": 6, "columns": 6, "classes": [plain, dict(plain)]},
            {"layer": "b", "labels": "corrupted", "d": 20, "columns": 4, "classes": [gram, dict(gram, m=5, n_c=5)]}]


@pytest.mark.parametrize(("n_scored", "floor_rows", "scale"), [(300, 100, 3.0), (60, 100, 1.0)])
def test_the_floor_times_every_class_once_and_scales_prediction_to_the_scored_rows(
        bench_script, monkeypatch: pytest.MonkeyPatch, n_scored: int, floor_rows: int, scale: float) -> None:
    """On a clock that advances one second per reading, each timed step lasts exactly one second, so the floor's
    parts are counts, written out here: one decomposition and one basis per class of every fitted MASC (six), and one
    prediction product per fitted MASC, timed on min(floor_rows, n_scored) rows and scaled to the n_scored rows."""
    bench = bench_script("bench_probe")
    ticks = itertools.count()
    monkeypatch.setattr(bench, "_sync", lambda device: float(next(ticks)))
    floor = bench.floor_alone(_shapes(), n_scored, floor_rows, torch.device("cpu"))
    assert (floor["decompositions"], floor["basis"], floor["prediction"]) == (6.0, 6.0, 3 * scale)
    assert floor["per_layer"] == {"a": {"decompositions": 4.0, "basis": 4.0, "prediction": 2 * scale},
                                  "b": {"decompositions": 2.0, "basis": 2.0, "prediction": scale}}
    assert floor["without_complements"] == {"basis": 6.0, "prediction": 3 * scale}
    # One second-moment product per class, timed once per distinct (n_c, d, form): three here, counted six times.
    assert floor["second_moments"] == 6.0


def test_the_profile_floor_adds_its_columns_and_swaps_the_test_rows_product(
        bench_script, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same counting clock, with a profile on every fitted MASC: per class one more basis step (two where the
    fitted columns are the complement, whose top k_c were not mapped back: plain x3, flipped x1, Gram x2 = 7), and
    per fitted MASC the test rows' product on the profile's columns (60 of 300 scored rows, timed on 100: 0.6)
    replacing the fitted product's share of them (one tick scaled to 300 rows, 60 of them: 0.6)."""
    bench = bench_script("bench_probe")
    ticks = itertools.count()
    monkeypatch.setattr(bench, "_sync", lambda device: float(next(ticks)))
    shapes = _shapes()
    for fitted, width in zip(shapes, (10, 10, 6), strict=True):
        fitted["profile_columns"] = width
        for cls in fitted["classes"]:
            cls["kmax"] = cls["k"] + 1
    floor = bench.floor_alone(shapes, 300, 100, torch.device("cpu"), n_test=60)
    assert (floor["decompositions"], floor["basis"], floor["prediction"]) == (6.0, 6.0, 9.0)
    assert floor["profile"] == pytest.approx({"basis": 7.0, "prediction": 1.8, "replaces": 1.8})
    assert bench.profile_floor(floor, 10.0) == pytest.approx(10 + 6 + 6 + 7 + 9 - 1.8 + 1.8)
    without = bench.floor_alone(_shapes(), 300, 100, torch.device("cpu"), n_test=60)
    assert "profile" not in without


def test_bench_masc_as_gpu_check_calls_it(tmp_path: Path) -> None:
    out = tmp_path / "masc.json"
    proc = _run(["benchmarks/bench_masc.py", "--device", "cpu", "--threads", "1", "--repeats", "1",
                 "--ref-repeats", "0", "--wide-ref-repeats", "0", "--scale", "0.02", "--shape", "square",
                 "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["device"] == "cpu" and row["cpu"] is None  # the CPU is timed beside a GPU only
    assert row["rows_per_second"] == pytest.approx((row["n"] + row["n_test"]) / row["ours"])
    assert (row["n"], row["d"], row["n_test"]) == (400, 2048, 40)  # --scale 0.02 of the square shape
    assert len(row["k_ours"]) == row["classes"] and row["floor"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
@pytest.mark.parametrize("script", ["bench_probe.py", "bench_masc.py"])
def test_device_cuda_without_cuda_says_so(script: str) -> None:
    proc = _run([f"benchmarks/{script}", "--device", "cuda"], timeout=300)
    assert proc.returncode != 0
    assert "needs a CUDA device" in proc.stderr.strip().splitlines()[-1]


def test_profile_device_check_as_gpu_check_calls_it(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    proc = _run(["benchmarks/profile_device_check.py", "--device", "cpu", "--threads", "1", "--n-test", "600",
                 "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"] is True and result["device"] == "cpu"
    assert (result["masc"]["d512"]["solver"], result["masc"]["d96"]["solver"]) == ("gram", "scatter")
    runner = result["runner"]
    # two layers and the raw input, two label sets, every size of the profile (14)
    assert runner["profile_rows"] == 3 * 2 * 14 and runner["choices_equal"] and runner["selection_equal"]
    assert {c["network"] for c in runner["choices_cpu"]} == {"trained", "input"}


def _report(accuracy: float, size: float | int) -> dict:
    profile = [{"layer": "a", "labels": "true", "control": None, "size": 0.9, "accuracy": accuracy, "k": [3, 4]},
               {"layer": "a", "labels": "true", "control": None, "size": 5, "accuracy": 0.5, "k": [5, 5]}]
    return {"profile": profile, "selection": {"choices": [{"network": "trained", "layer": "a", "size": size}]}}


def test_the_report_comparison_tolerates_rows_only_up_to_its_tolerance(bench_script) -> None:
    """Hand-built reports of 100 test rows: 2 rows apart passes a tolerance of 2, 3 rows apart does not; another
    chosen size fails whatever the profile says."""
    check = bench_script("profile_device_check")
    assert check.compare_reports(_report(0.70, 0.9), _report(0.70, 0.9), n_test=100, row_tolerance=2)["ok"]
    near = check.compare_reports(_report(0.70, 0.9), _report(0.72, 0.9), n_test=100, row_tolerance=2)
    assert near["ok"] and near["profile_rows_differing"] == [{"row": ["a", "true", None, "0.9"], "rows_apart": 2,
                                                             "k_equal": True}]
    assert not check.compare_reports(_report(0.70, 0.9), _report(0.73, 0.9), n_test=100, row_tolerance=2)["ok"]
    other = check.compare_reports(_report(0.70, 0.9), _report(0.70, 5), n_test=100, row_tolerance=2)
    assert not other["ok"] and not other["choices_equal"]


def test_the_masc_comparison_counts_a_flipped_clear_row_and_forgives_a_tie(bench_script) -> None:
    """The device side is the CPU's own frozen MASC with one prediction changed: on the zero row (every cosine 0:
    a tie) it passes; on the row whose top two cosines are farthest apart it fails."""
    import numpy as np

    from masc_probe.probes import MinimumAngleSubspaceClassifier as MASC
    from masc_probe.probes.masc import PROFILE_SIZES

    check = bench_script("profile_device_check")
    X, y = check.features(600, 96, seed=1)
    Xt, _ = check.features(80, 96, seed=2)
    X, Xt = np.maximum(X, 0), np.maximum(Xt, 0)
    Xt[0] = 0.0
    fit = MASC(0.99).fit(X, y)
    frozen = fit.frozen(profile=PROFILE_SIZES)
    at = PROFILE_SIZES.index(0.9)
    cos = np.sort(np.asarray(fit.cosines(Xt, n_components=0.9)), axis=1)
    clear = int(np.argmax(cos[:, -1] - cos[:, -2]))

    class Flipped:
        def __init__(self, row: int) -> None:
            self.row = row
            self.profile_sizes_ = frozen.profile_sizes_

        def profile_components_(self):
            return frozen.profile_components_()

        def predict_profile(self, X):
            pred = np.array(frozen.predict_profile(X))
            pred[at, self.row] = (pred[at, self.row] + 1) % check.CLASSES
            return pred

    same = check.compare_masc(fit, frozen, frozen, Xt, tie=1e-4, ratio_tol=1e-5)
    assert same["ok"] and same["agreement"] == 1.0
    tie = check.compare_masc(fit, frozen, Flipped(0), Xt, tie=1e-4, ratio_tol=1e-5)
    assert tie["ok"] and (tie["rows_differing_at_ties"], tie["rows_differing_otherwise"]) == (1, 0)
    flipped = check.compare_masc(fit, frozen, Flipped(clear), Xt, tie=1e-4, ratio_tol=1e-5)
    assert not flipped["ok"] and flipped["rows_differing_otherwise"] == 1
