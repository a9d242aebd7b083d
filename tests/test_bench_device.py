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
                 "--max-memory", str(2 * 1024**3), "--json", str(out)])
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
