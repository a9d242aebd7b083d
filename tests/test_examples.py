"""Smoke runs of examples/*.py (and, slow-tier, benchmarks/reproduce_paper.py) with tiny settings, in this process.

Each script is loaded from its file and its ``main(argv)`` called, so torch and friends are imported once. The MNIST
example reads a tiny synthetic idx folder written here, the push example pushes to tests/_hub_server.py's Hub.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from _hub_server import FakeHub, patched_hub

from masc_probe import corrupt_labels

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_examples_token"
PUSHED = {"README.md", "config.json", "model.safetensors", "metrics.jsonl", "masc/report.json", "masc/report.md",
          "masc/accuracy_by_layer.png", "masc/report.html"}


def _script(relative: str) -> ModuleType:
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("keep_logger_levels")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MNIST-shaped idx folder: class c lights rows 2c..2c+3 of a 28×28 image, plus noise."""
    folder = tmp_path_factory.mktemp("mnist-idx")
    rng = np.random.default_rng(0)
    for stem, n in (("train", 120), ("t10k", 60)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 2: 2 * c + 6, 4:24] = 255
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="module")
def mnist_run(idx_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The MNIST example run once, for one epoch: its run folder and what it printed."""
    import contextlib
    import io

    run = tmp_path_factory.mktemp("runs") / "mnist"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = _script("examples/mnist_memorization.py").main(
            [str(idx_folder), "--subset", "0", "--max-epochs", "1", "--batch-size", "32", "--output-dir", str(run)])
    assert code == 0
    return run, out.getvalue()


def test_timm_example_prints_the_layer_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = _script("examples/timm_api.py").main(["--model", "timm/test_resnet", "--size", "16", "--probes", "masc"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| layer | masc (corrupted) | masc (true) |" in out
    assert "best layer for MASC on true labels:" in out


def test_mnist_example_corrupts_trains_and_probes(mnist_run: tuple[Path, str], idx_folder: Path) -> None:
    run, out = mnist_run
    # The corrupted labels are those corrupt_labels draws for the true labels of the idx file written above.
    true = np.arange(120) % 10
    expected_rate = np.mean(corrupt_labels(true, 0.8, num_classes=10, seed=0) != true)
    assert f"{expected_rate:.1%} of the 120 training labels differ" in out
    assert "identical to corrupt_labels(true, 0.8, seed=0): True" in out
    report = json.loads((run / "report.json").read_text())
    assert report["corruption"]["realized_rate"] == pytest.approx(expected_rate)
    assert report["n_test"] == 60 and report["n_train"] == 120
    got = {(r["layer"], r["probe"], r["labels"]) for r in report["results"]}
    assert got == {(layer, probe, labels) for layer in ("input", "fc1", "fc2", "fc3", "fc4")
                   for probe in ("masc", "ncm") for labels in ("corrupted", "true")}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1]
    assert (run / "model.safetensors").is_file() and (run / "accuracy_by_layer.png").is_file()


def test_mnist_example_subset_is_stratified(idx_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _script("examples/mnist_memorization.py").main(
        [str(idx_folder), "--subset", "50", "--test-subset", "30", "--max-epochs", "1", "--batch-size", "32",
         "--output-dir", str(run)])
    report = json.loads((run / "report.json").read_text())
    assert report["n_train"] == 50 and report["n_test"] == 30


def test_push_example_dry_run_writes_the_push_files(mnist_run: tuple[Path, str], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = mnist_run
    out = tmp_path / "dry"
    code = _script("examples/push_and_pull.py").main(["--dry-run", "--run-dir", str(run), "--dry-run-dir", str(out)])
    assert code == 0
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == PUSHED
    assert (out / "masc" / "report.json").read_bytes() == (run / "report.json").read_bytes()
    assert (out / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert "same outputs as the local checkpoint: True" in capsys.readouterr().out


def test_push_example_pushes_and_pulls_over_http(mnist_run: tuple[Path, str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = mnist_run
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub(token=TOKEN) as hub, patched_hub(hub.url, str(tmp_path / "hf-cache")):
        code = _script("examples/push_and_pull.py").main(["--repo-id", "me/mnist-example", "--run-dir", str(run)])
        files = hub.files("me/mnist-example")
    assert code == 0
    assert PUSHED <= set(files)
    assert files["model.safetensors"] == (run / "model.safetensors").read_bytes()
    assert files["masc/report.json"] == (run / "report.json").read_bytes()
    assert "same outputs as the local checkpoint: True" in capsys.readouterr().out


def test_push_example_without_a_hub_fails_in_one_line(mnist_run: tuple[Path, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = mnist_run
    with patched_hub("http://127.0.0.1:9", str(tmp_path / "hf-cache")):  # port 9: nothing listens
        code = _script("examples/push_and_pull.py").main(["--repo-id", "me/mnist-example", "--run-dir", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("error: cannot reach the Hub at http://127.0.0.1:9") and "\n" not in err


def test_push_example_needs_a_repo_id_unless_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _script("examples/push_and_pull.py").main([])
    assert exc.value.code == 2 and "--repo-id is required" in capsys.readouterr().err


def test_reproduce_paper_smoke_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          bench_script: Callable[[str], ModuleType]) -> None:
    script = bench_script("reproduce_paper")
    argv = ["--dataset", "mnist-5k", "--subset", "100", "--test-subset", "100", "--rates", "0.8", "--max-epochs",
            "1", "--preset", "fast", "--batch-size", "32", "--work-dir", str(tmp_path), "--quiet"]
    assert script.main(argv) == 0
    first = json.loads((tmp_path / "results.json").read_text())
    (run,) = first["runs"]
    assert (run["n_train"], run["n_test"], run["epochs"], run["stopped"]) == (100, 100, 1, "max_epochs")
    true_by_layer = [v for k, v in run["by_layer"].items() if k.endswith("/true")]
    assert run["masc_true"] == max(true_by_layer) and len(true_by_layer) == 5
    hidden = [v for k, v in run["by_layer"].items() if k.endswith("/corrupted") and not k.startswith("input/")]
    assert run["masc_corrupted_hidden"] == max(hidden) and len(hidden) == 4
    (row,) = first["table"]
    # The paper's MLP-MNIST numbers at this row's rate (the 4th of p = 0.2, 0.4, 0.6, 0.8), printed beside ours.
    paper = {key: script.PAPER["mlp-mnist"][name][3] for key, name in (
        ("model_test_accuracy", "model"), ("masc_corrupted", "corrupted"), ("masc_true", "true"))}
    assert row["paper"] == paper
    table = capsys.readouterr().out
    assert "| 0.8 |" in table and f"({paper['masc_true']:.3f})" in table
    # A rerun trains nothing more and reuses the saved report: the same numbers.
    assert script.main(argv) == 0
    second = json.loads((tmp_path / "results.json").read_text())
    keep = ("epochs", "model_test_accuracy", "masc_corrupted", "masc_true", "by_layer")
    assert [{k: r[k] for k in keep} for r in second["runs"]] == [{k: run[k] for k in keep}]


def test_reproduce_paper_refuses_bad_values(capsys: pytest.CaptureFixture[str],
                                            bench_script: Callable[[str], ModuleType]) -> None:
    script = bench_script("reproduce_paper")
    for argv in (["--subset", "0"], ["--rates", "1.5"]):
        with pytest.raises(SystemExit) as exc:
            script.main(argv)
        assert exc.value.code == 2
    assert "--subset must be >= 1" in capsys.readouterr().err
