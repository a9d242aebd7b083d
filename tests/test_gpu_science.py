"""benchmarks/gpu_science.sh and benchmarks/dynamics.py: the GPU script's CPU dry run end to end (the authors' recipe
on 1,500 MNIST images, dense checkpoints, every one probed with the init and raw-input controls), its numbers held to
independent references (the trainer's own eval pass, the run's epoch 0 rebuilt from its seed and SHA-256, MASC from
its definition in float64), the time budget's cut, the probing order, and the figure's lines against hand-built
results."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = "mlp-mnist-paper-n1500-p0.8-s0-authors"  # reproduce_paper.run_dir's name for the dry run's flags
LAYERS = ["fc1", "fc2", "fc3", "fc4"]
# The profile's sizes (docs/architecture.md, "Report format"): the sizes a network can select.
PROFILE_SIZES = {0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1, 2, 5, 10, 20, 50, 100}

pytestmark = pytest.mark.usefixtures("keep_logger_levels")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory, shared_mnist: Path, processes: ModuleType) -> Path:
    out = tmp_path_factory.mktemp("gpu-science")
    env = {**os.environ, "PYTHON": sys.executable, "DATA_ROOT": str(shared_mnist.parent), "OMP_NUM_THREADS": "1",
           "DRY_RUN": "1", "DEADLINE_S": "800", "STEP_BUDGET_S": "600"}  # what it writes, not its speed
    proc = processes.run(["bash", str(ROOT / "benchmarks" / "gpu_science.sh"), str(out)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"gpu_science: results in {out}" in proc.stdout
    return out


@pytest.fixture(scope="module")
def results(dry_run: Path) -> dict[str, Any]:
    return json.loads((dry_run / RUN / "dynamics.json").read_text())


def test_dry_run_steps_pass_and_keep_weights_out_of_the_results(dry_run: Path) -> None:
    summary = json.loads((dry_run / "gpu_science.json").read_text())
    assert summary["ok"] is True and summary["dry_run"] is True and summary["device"] == "cpu"
    assert [s["name"] for s in summary["steps"]] == ["train", "dynamics"]
    assert all(s["rc"] == 0 and not s["timed_out"] for s in summary["steps"])
    assert sorted(p.name for p in (dry_run / RUN).iterdir()) == ["config.json", "dynamics.json", "dynamics.png",
                                                                 "metrics.jsonl"]


def test_every_dense_checkpoint_is_probed_for_the_three_networks_at_both_sizes(results: dict[str, Any]) -> None:
    # 6 epochs under the dense policy (0, 2, ..., 20, then every 5th; the final always): 0, 2, 4, 6.
    assert [e["epoch"] for e in results["epochs"]] == [0, 2, 4, 6] == results["checkpoints_kept"]
    assert "skipped_epochs" not in results
    assert (results["n_train"], results["n_test"], results["protocol"]) == (1500, 500, "authors")
    assert results["training"]["optimizer"] == "sgd" and results["training"]["batch_size"] == 128
    assert results["layers"] == LAYERS and results["sizes"] == ["0.99", "selected"]
    curves = [e["curves"] for e in results["epochs"]] + [results["controls"]["init"]["curves"]]
    for c in curves:
        assert sorted(c) == ["corrupted", "true"]
        for labels in c:
            assert sorted(c[labels]) == LAYERS
            assert all(0 <= c[labels][x][s] <= 1 for x in LAYERS for s in ("0.99", "selected"))
    raw = results["controls"]["input"]["curves"]
    assert all(sorted(raw[labels]) == ["input"] and sorted(raw[labels]["input"]) == ["0.99", "selected"]
               for labels in ("corrupted", "true"))
    for sizes in [e["selected_size"] for e in results["epochs"]] + [results["controls"][n]["selected_size"]
                                                                    for n in ("init", "input")]:
        assert sorted(sizes) == ["corrupted", "true"] and set(sizes.values()) <= PROFILE_SIZES
    assert results["controls"]["records"]["init"]["source"] == "run epoch 0"
    assert results["controls"]["fitted_with_epoch"] == 6


def test_epoch_zero_is_the_init_control(results: dict[str, Any]) -> None:
    """Checkpoint epoch-0000 (saved by the trainer) and the init control (rebuilt from the seed and SHA-256 in
    config.json) are the same weights by two paths: every number of theirs agrees."""
    first, init = results["epochs"][0], results["controls"]["init"]
    assert first["curves"] == init["curves"] and first["selected_size"] == init["selected_size"]
    assert first["model_test_accuracy"] == results["controls"]["records"]["init"]["model_test_accuracy"]


def test_training_accuracy_matches_the_trainers_own_pass(dry_run: Path, results: dict[str, Any]) -> None:
    last = json.loads((dry_run / RUN / "metrics.jsonl").read_text().splitlines()[-1])
    final = results["epochs"][-1]
    assert last["epoch"] == final["epoch"] == 6
    assert final["train_accuracy_given"] == pytest.approx(last["train_accuracy_corrupted"], abs=1e-12)
    assert final["train_accuracy_true"] == pytest.approx(last["train_accuracy_true"], abs=1e-12)
    # 6 epochs of SGD at 1e-3 do not memorize: no epoch of memorization, the stop is the epoch cap.
    assert results["stopped"] == "max_epochs" and results["memorized_epoch"] is None
    assert results["first_checkpoint_at_target"] is None
    assert max(e["train_accuracy_given"] for e in results["epochs"]) < results["target_accuracy"]


def _masc_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   t: float = 0.99, k_classes: int = 10) -> float:
    """MASC from its definition, float64: per class the top eigenvectors of X_cᵀX_c with k_c = #{r_i <= t} + 1;
    predict the class of the largest cos = ||B_c x|| / ||x||."""
    cos = np.zeros((len(x_test), k_classes))
    norms = np.linalg.norm(x_test, axis=1)
    for c in range(k_classes):
        xc = x_train[y_train == c]
        lam, vec = np.linalg.eigh(xc.T @ xc)
        lam, vec = lam[::-1], vec[:, ::-1]
        k = int(np.sum(np.cumsum(lam) / lam.sum() <= t)) + 1
        cos[:, c] = np.divide(np.linalg.norm(x_test @ vec[:, :k], axis=1), norms, out=np.zeros_like(norms),
                              where=norms > 0)
    return float(np.mean(cos.argmax(1) == y_test))


def test_final_fc1_at_099_matches_masc_from_its_definition(dry_run: Path, results: dict[str, Any], shared_mnist: Path,
                                                          bench_script: Callable[[str], ModuleType]) -> None:
    """The final network's fc1 (ReLU of the first linear layer, from the safetensors weights in float64) through
    MASC written from its definition: the results' 0.99 numbers for both label sets, within 1 of 500 images (the
    float32 features may flip one; the epoch-0 network is 2 images off at corrupted fc1)."""
    from safetensors.numpy import load_file

    from masc_probe.data import TensorBatches

    rp = bench_script("reproduce_paper")
    train = TensorBatches.from_data(rp.load_split(str(shared_mnist), split="train", n=1500, subset_seed=0, rate=0.8,
                                                  seed=42, mode="authors"))
    test = TensorBatches.from_data(rp.load_split(str(shared_mnist), split="test", n=500, subset_seed=0))
    w = load_file(str(dry_run / "runs" / RUN / "model.safetensors"))

    def fc1(x: Any) -> np.ndarray:
        flat = x.numpy().reshape(len(x), -1).astype(np.float64)
        return np.maximum(flat @ w["fc1.linear.weight"].T.astype(np.float64) + w["fc1.linear.bias"], 0.0)

    h_train, h_test = fc1(train.x), fc1(test.x)
    final = results["epochs"][-1]["curves"]
    for labels, y in (("corrupted", train.y), ("true", train.y_true)):
        ours = _masc_accuracy(h_train, y.numpy(), h_test, test.y_true.numpy())
        assert final[labels]["fc1"]["0.99"] == pytest.approx(ours, abs=1 / 500), labels


def test_png_is_the_figure(dry_run: Path) -> None:
    png = (dry_run / RUN / "dynamics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (12 * 110, 10 * 110)  # figsize (12, 10) at 110 dpi


def test_budget_stops_after_the_final_checkpoint(dry_run: Path, tmp_path: Path, shared_mnist: Path,
                                                 bench_script: Callable[[str], ModuleType]) -> None:
    """A budget already spent probes the final checkpoint (with the controls) and lists the rest as skipped."""
    dyn = bench_script("dynamics")
    flags = ["--row", "mlp-mnist", "--rates", "0.8", "--seeds", "0", "--protocol", "authors", "--checkpoints",
             "dense", "--device", "cpu", "--threads", "1", "--data-root", str(shared_mnist.parent), "--work-dir",
             str(dry_run / "runs"), "--quiet", "--subset", "1500", "--test-subset", "500", "--max-epochs", "6"]
    assert dyn.main([*flags, "--out-dir", str(tmp_path), "--budget-s", "0"]) == 0
    got = json.loads((tmp_path / RUN / "dynamics.json").read_text())
    assert [e["epoch"] for e in got["epochs"]] == [6] and got["skipped_epochs"] == [0, 2, 4]
    assert sorted(got["controls"]) == ["differences", "fitted_with_epoch", "init", "input", "records"]
    assert (tmp_path / RUN / "dynamics.png").is_file()


def test_probe_order_spreads_checkpoints(bench_script: Callable[[str], ModuleType]) -> None:
    order = bench_script("dynamics").probe_order
    # by hand: last, first, then the farthest from those taken (ties to the earlier epoch)
    assert order([0, 2, 4, 6]) == [6, 0, 2, 4]
    assert order([0, 2, 4, 6, 8, 10, 20]) == [20, 0, 10, 4, 2, 6, 8]
    assert order([0, 5, 10, 15, 20, 25, 30, 35, 40])[:5] == [40, 0, 20, 10, 30]
    assert order([7]) == [7] and order([]) == []


def _hand_built() -> dict[str, Any]:
    def curve(base: float) -> dict[str, Any]:
        return {labels: {"fc1": {"0.99": base, "selected": base + 0.1}, "fc2": {"0.99": base + 0.2,
                                                                            "selected": base + 0.3}}
                for labels in ("corrupted", "true")}

    rows = [{"epoch": e, "model_test_accuracy": 0.1 * (i + 1), "train_accuracy_given": 0.2 * (i + 1),
             "train_accuracy_true": 0.15, "curves": curve(0.01 * e), "selected_size": {"corrupted": 2, "true": 0.9}}
            for i, e in enumerate((0, 2, 10))]
    return {"run": "hand-built", "rule": "noisy", "sizes": ["0.99", "selected"], "layers": ["fc1", "fc2"],
            "epochs": rows, "memorized_epoch": 10, "stopped": "target", "last_epoch": 10,
            "controls": {"init": {"curves": curve(0.4), "selected_size": {"corrupted": 5, "true": 0.99}},
                         "input": {"curves": {lab: {"input": {"0.99": 0.7, "selected": 0.75}}
                                              for lab in ("corrupted", "true")},
                                   "selected_size": {"corrupted": 0.5, "true": 20}}}}


def test_figure_draws_each_network_and_size_from_the_results(bench_script: Callable[[str], ModuleType]) -> None:
    import matplotlib.pyplot as plt

    fig = bench_script("dynamics").draw(_hand_built())
    top, *panels = fig.axes
    assert [line.get_label() for line in top.lines][:3] == ["model's own test accuracy",
                                                           "training accuracy, given labels",
                                                           "training accuracy, true labels"]
    assert list(top.lines[1].get_ydata()) == pytest.approx([0.2, 0.4, 0.6])
    expected = {("corrupted", "0.99"): 0.0, ("corrupted", "selected"): 0.1, ("true", "0.99"): 0.0,
                ("true", "selected"): 0.1}
    for ax, (labels, size) in zip(panels, expected, strict=True):
        assert labels in ax.get_title() and ("0.99" in ax.get_title()) == (size == "0.99")
        lines = {line.get_label(): line for line in ax.lines}
        assert list(lines["fc1, trained"].get_xdata()) == [0, 2, 10]
        assert list(lines["fc1, trained"].get_ydata()) == pytest.approx([expected[(labels, size)] + 0.01 * e
                                                                         for e in (0, 2, 10)])
        assert list(lines["fc2, init (epoch 0)"].get_ydata()) == pytest.approx([0.6 + expected[(labels, size)]] * 2)
        assert list(lines["raw input"].get_ydata()) == pytest.approx([0.7 if size == "0.99" else 0.75] * 2)
        assert list(lines["memorized (epoch 10)"].get_xdata()) == [10, 10]
        if size == "selected":
            assert any("init: k=5" in t.get_text() or "init: 0.99" in t.get_text() for t in ax.texts)
    assert "memorized at epoch 10" in fig._suptitle.get_text()
    plt.close(fig)
