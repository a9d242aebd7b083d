"""benchmarks/reproduce_paper.py and benchmarks/gpu_check.sh: the GPU check's CPU dry run end to end, the run-folder
names the training queue uses, the random-init control against train()'s own epoch 0, the merged table and the
RESULTS.md section built from it."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    path = ROOT / "benchmarks" / "reproduce_paper.py"
    spec = importlib.util.spec_from_file_location("_reproduce_paper", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rp = _script()


pytestmark = pytest.mark.usefixtures("keep_logger_levels")


def _accuracies(node: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Every number stored under a path that names an accuracy (means and stds of accuracies too), with its path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _accuracies(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _accuracies(value, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool) and "accuracy" in path \
            and not path.endswith("/n"):
        yield path, float(node)


# ------------------------------------------------------------------------------------- the GPU check's dry run
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory, shared_mnist: Path, processes: ModuleType) -> Path:
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "PYTHON": sys.executable, "DATA_ROOT": str(shared_mnist.parent), "OMP_NUM_THREADS": "1"}
    # Minutes of slack over the script's own deadline and step budgets: the check is of what it writes, not of its
    # speed (on a loaded machine the dry run's 115 s deadline was missed).
    env["DEADLINE_S"] = "800"
    env["STEP_BUDGET_S"] = "600"
    proc = processes.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_dry_run_steps_all_pass(dry_run: Path) -> None:
    summary = json.loads((dry_run / "gpu_check.json").read_text())
    assert summary["ok"] is True and summary["dry_run"] is True and summary["device"] == "cpu"
    assert [s["name"] for s in summary["steps"]] == ["train", "probe", "masc-check", "resnet18-probe", "train-bench"]
    assert all(s["rc"] == 0 and not s["timed_out"] for s in summary["steps"])


def test_dry_run_times_training_against_a_bare_loop(dry_run: Path) -> None:
    """Step train-bench (bench_train.py's GPU section, on the CPU, MNIST for CIFAR-10): both loops took the same
    steps, train()'s parts fit in its epoch, and the estimate of the time to memorize is the seconds per epoch times the epochs it assumes."""
    (result,) = json.loads((dry_run / "bench_train.json").read_text())["results"]
    assert (result["workload"], result["n_train"], result["device"]) == ("resnet18-cifar10", 64, "cpu")
    assert result["same_weights"] is True and result["config"]["optimizer"] == "sgd"
    seconds = result["seconds_per_epoch"]
    assert seconds["bare"] > 0 and seconds["train"] > 0
    (pair,) = result["repeats"]
    parts = pair["train_info"]["parts"]  # one epoch, not an evaluation epoch: the stop rule's own pass
    assert parts["steps"] > 0 and parts["stop_pass"] > 0 and "train_pass" not in parts
    assert parts["rest"] >= -1e-9  # disjoint parts of the epoch: none counted twice
    estimate = result["memorize_estimate"]
    assert estimate["hours"] == pytest.approx(seconds["train"] * estimate["epochs"] / 3600)


def test_dry_run_table_is_well_formed_and_sane(dry_run: Path) -> None:
    table = json.loads((dry_run / "paper_table.json").read_text())
    (key,) = table["cells"]
    assert key == "mlp-mnist/p0.8/n300/clean/fast"
    cell = table["cells"][key]
    assert (cell["row"], cell["p"], cell["n_train"], cell["n_test"], cell["protocol"]) == ("mlp-mnist", 0.8, 300,
                                                                                          200, "clean")
    # The paper's numbers of this cell's row at this cell's rate (the 4th of the table's p = 0.2, 0.4, 0.6, 0.8).
    at = [0.2, 0.4, 0.6, 0.8].index(cell["p"])
    assert cell["paper"] == {name: rp.PAPER["mlp-mnist"][name][at] for name in ("model", "corrupted", "true")}
    assert cell["optimizer"]["optimizer"] == "adam" and cell["optimizer"]["lr_schedule"] == "plateau"
    (run,) = cell["runs"].values()
    assert run["epochs"] == 2 and run["memorized"] is False and run["stopped"] == "max_epochs"
    # p = 0.8 over 10 classes changes a label with probability 0.72; 300 labels: within about 3 standard errors.
    assert 0.64 < run["realized_rate"] < 0.80
    found = list(_accuracies(table))
    assert len(found) > 100
    # Every accuracy a run stores is a count of images out of its 200 test (or 300 training) images, rounded to 4
    # decimals by the script: a wrong denominator, a mean of batch means or a stray number fails here.
    counts = [(p, v) for p, v in found if "/runs/" in p and not p.endswith("target_accuracy")]
    assert len(counts) > 50
    bad = [(p, v) for p, v in counts if not any(abs(v * n - round(v * n)) <= n * 5e-5 + 1e-9 for n in (200, 300))]
    assert not bad, bad[:5]
    # Every probe and label set has a best layer, or a recorded reason why the probe could not be fitted.
    failed = {(f["probe"], f["labels"]) for f in run["failed"]}
    for probe in ("masc", "ncm", "lda", "qda", "knn", "linear"):
        for labels in ("corrupted", "true"):
            best = run["probes"][f"{probe}/{labels}"]
            assert best["with_input"] is not None or (probe, labels) in failed
    for probe in ("masc", "ncm", "lda", "knn", "linear"):
        assert run["probes"][f"{probe}/true"]["with_input"] is not None
    summary = cell["summary"]
    assert summary["seeds"] == [0] and summary["model_test_accuracy"]["std"] is None
    assert summary["probes"]["masc/corrupted"]["with_input"]["accuracy"]["mean"] == \
        run["probes"]["masc/corrupted"]["with_input"]["accuracy"]


def test_dry_run_controls_come_from_their_own_networks(dry_run: Path) -> None:
    table = json.loads((dry_run / "paper_table.json").read_text())
    (cell,) = table["cells"].values()
    (run,) = cell["runs"].values()
    run_dir = Path(run["run_dir"])
    trained = json.loads((run_dir / "report.json").read_text())
    init = json.loads((run_dir / "report-init.json").read_text())
    # The raw-input control is the trained report's input layer; the random-init report probes hidden layers only.
    raw = {f"{r['probe']}/{r['labels']}": r["test_accuracy"] for r in trained["results"] if r["layer"] == "input"}
    assert raw and run["controls"]["raw_input"] == raw
    assert {r["layer"] for r in init["results"]} == {"fc1", "fc2", "fc3", "fc4"}
    assert {r["layer"] for r in trained["results"]} == {"input", "fc1", "fc2", "fc3", "fc4"}
    hidden_trained = {(r["layer"], r["probe"], r["labels"]): r["test_accuracy"] for r in trained["results"]
                      if r["layer"] != "input"}
    hidden_init = {(r["layer"], r["probe"], r["labels"]): r["test_accuracy"] for r in init["results"]}
    assert hidden_trained.keys() == hidden_init.keys()
    assert hidden_trained != hidden_init  # two epochs of training changed what the layers hold
    control = run["controls"]["random_init"]
    assert control["accuracy_by_layer"]["masc/true"] == {r["layer"]: r["test_accuracy"] for r in init["results"]
                                                         if r["probe"] == "masc" and r["labels"] == "true"}
    assert control["model_test_accuracy"] == pytest.approx(init["model_test_accuracy"], abs=5e-5)


def test_dry_run_masc_check_and_resnet_pass(dry_run: Path) -> None:
    (check,) = json.loads((dry_run / "masc_check.json").read_text())["masc_check"]
    assert set(check["layers"]) == {"fc1", "fc2", "fc3", "fc4"} and check["n_train"] == 300
    for layer in check["layers"].values():
        assert layer["agreement"] >= 0.99
        assert len(layer["n_components_device"]) == len(layer["n_components_cpu"]) == 10
        # Two predictors that agree on a share a of the test images differ in accuracy by at most 1 - a.
        assert abs(layer["accuracy_device"] - layer["accuracy_cpu"]) <= 1 - layer["agreement"] + 1e-12
        assert layer["accuracy_device"] * check["n_test"] == pytest.approx(round(layer["accuracy_device"]
                                                                                 * check["n_test"]), abs=1e-6)
    bench = json.loads((dry_run / "bench_probe.json").read_text())
    assert bench["workload"]["n_train"] == 200 and len(bench["workload"]["layers"]) == 8
    assert bench["seconds"]["fit_evaluate"] > 0


# ----------------------------------------------------------------------------------- runs, names, initial weights
def test_n_sweep_runs_are_the_training_queues_folders(shared_mnist: Path) -> None:
    # benchmarks/paper_queue.sh trains these folders; the probe stage must find them under the same names.
    args = rp.parse_args(["--set", "n-sweep", "--data-root", str(shared_mnist.parent), "--work-dir", "runs/paper",
                          "--train-only"])
    assert args.stage == "train" and args.preset == "fast"
    names = sorted(rp.run_dir(args, job).name for job in rp.plan(args))
    queue = [f"mlp-mnist-fast-n{n}-p0.8-s{s}" for n in (1500, 6000) for s in (0, 1, 2)]
    full = [f"mlp-mnist-fast-nall-p0.8-s{s}" for s in (0, 1, 2)]
    assert names == sorted([*queue, "mlp-mnist-fast-n15000-p0.8-s0", *full])
    # The queue's own spelling (--dataset and --subset) lands in the same folder and cell row.
    args = rp.parse_args(["--dataset", str(shared_mnist), "--rates", "0.8", "--subset", "1500", "--seeds", "2",
                          "--preset", "fast"])
    (job,) = rp.plan(args)
    assert (rp.run_dir(args, job).name, job.row, job.family) == ("mlp-mnist-fast-n1500-p0.8-s2", "mlp-mnist", "mnist")


def test_bf16_runs_get_their_own_folder_config_and_cell(shared_mnist: Path) -> None:
    # bf16 autocast changes the numbers: its runs never land in an fp32 folder (which train() would resume) or cell.
    base = ["--dataset", str(shared_mnist), "--rates", "0.8", "--seeds", "1", "--preset", "fast"]
    fp32, bf16 = rp.parse_args(base), rp.parse_args([*base, "--mixed-precision", "bf16"])
    (job,) = rp.plan(bf16)
    assert rp.run_dir(fp32, job).name == "mlp-mnist-fast-nall-p0.8-s1"
    assert rp.run_dir(bf16, job).name == "mlp-mnist-fast-nall-p0.8-s1-bf16"
    assert rp.train_config(fp32, job, 10, None).mixed_precision == "no"
    assert rp.train_config(bf16, job, 10, None).mixed_precision == "bf16"
    assert (rp.precision_suffix(fp32), rp.precision_suffix(bf16)) == ("", "-bf16")


def test_full_set_covers_every_row_rate_and_seed() -> None:
    args = rp.parse_args(["--full", "--device", "cpu"])
    assert args.run_set == "full"
    (named,) = rp.SETS["full"]
    assert named["rows"] == list(rp.ROWS) and named["rates"] == [0.2, 0.4, 0.6, 0.8]
    assert named["subsets"] == {None: [0, 1, 2]}
    assert set(rp.PAPER) == set(rp.ROWS) and all(len(v) == 4 for row in rp.PAPER.values() for v in row.values())


def test_threads_flag_sets_torch_and_blas_threads() -> None:
    """--threads N reaches torch and numpy's BLAS (selection.py and dynamics.py call the same helper); no flag
    leaves both as they were."""
    from threadpoolctl import threadpool_info, threadpool_limits

    before = torch.get_num_threads()
    with threadpool_limits(limits=None):  # restores the BLAS setting on exit
        rp.apply_threads(rp.parse_args(["--threads", "1"]))
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
        torch.set_num_threads(2)
        rp.apply_threads(rp.parse_args([]))
        assert torch.get_num_threads() == 2
    torch.set_num_threads(before)


def test_bad_values_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in ((["--qda-reg-param", "2"], "--qda-reg-param must lie in [0, 1]"),
                          (["--full", "--set", "n-sweep"], "--full is --set full"),
                          (["--row", "vgg-mnist"], "invalid choice")):
        with pytest.raises(SystemExit) as exc:
            rp.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def _batches(n: int = 64, seed: int = 0) -> Any:
    from masc_probe.data import TensorBatches

    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=gen)
    return TensorBatches(torch.randn(n, 1, 28, 28, generator=gen), y, y.clone())


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_random_init_control_is_the_runs_epoch_zero(tmp_path: Path, model: str) -> None:
    """train() on a spec keeps epoch 0 here; the control rebuilds it without training, and the script's training
    (handed that module) takes exactly the steps the queue's training (handed the spec) took."""
    from safetensors.torch import load_file

    from masc_probe.training import preset_config, train

    def config(folder: str) -> Any:
        return preset_config(model, "mnist", preset="fast", seed=3, num_classes=10, output_dir=str(tmp_path / folder),
                             max_epochs=1, checkpoint_dense_until=0, checkpoint_every=0, progress=False, cpu=True,
                             batch_size=16)

    train(model, _batches(), config=config("spec"))
    epoch0 = load_file(tmp_path / "spec" / "checkpoints" / "epoch-0000" / "model.safetensors")
    control = rp.initial_model(model, 3, 10, [1, 28, 28]).state_dict()
    assert epoch0.keys() == control.keys()
    assert all(torch.equal(epoch0[k], control[k]) for k in epoch0)
    other = rp.initial_model(model, 4, 10, [1, 28, 28]).state_dict()
    assert not all(torch.equal(epoch0[k], other[k]) for k in epoch0)
    # What the script probes as the control is the package's init control: the run's recorded epoch 0, verified.
    from masc_probe import load_model
    from masc_probe.runner._controls import init_control

    init = init_control(tmp_path / "spec", load_model(tmp_path / "spec"), seed=3)
    assert init.source == "run epoch 0" and init.seed == 3
    assert all(torch.equal(epoch0[k], init.model.state_dict()[k]) for k in epoch0)

    train(rp.initial_model(model, 3, 10, [1, 28, 28]), _batches(), config=config("module"))
    final_spec = load_file(tmp_path / "spec" / "model.safetensors")
    final_module = load_file(tmp_path / "module" / "model.safetensors")
    assert all(torch.equal(final_spec[k], final_module[k]) for k in final_spec)


# ------------------------------------------------------------------------------------------- the merged table
def _run(seed: int, masc: float, *, model: float = 0.3, n_test: int = 100) -> dict[str, Any]:
    best = {"with_input": {"layer": "input", "accuracy": masc}, "without_input": {"layer": "fc2", "accuracy": masc - 0.1}}
    return {
        "seed": seed, "epochs": 10 + seed, "memorized": seed != 2, "train_accuracy_corrupted": 0.999,
        "model_test_accuracy": model, "realized_rate": 0.72, "n_test": n_test, "n_train": 1500,
        "target_accuracy": 0.999, "device": "cpu", "torch_threads": 1,
        "training": {"preset": "fast", "optimizer": "adam", "lr": 3e-4, "batch_size": 128, "lr_schedule": "plateau",
                     "lr_last": 3e-5, "max_epochs": 500},
        "probes": {"masc/corrupted": best, "masc/true": best},
        "controls": {"raw_input": {"masc/corrupted": masc, "masc/true": masc},
                     "random_init": {"model_test_accuracy": 0.1,
                                     "probes": {"masc/corrupted": best, "masc/true": best}}},
    }


def _cell(run: dict[str, Any], *, row: str = "mlp-mnist", n: int = 1500) -> dict[str, Any]:
    job = rp.Job(row=row, paper_row=row if row in rp.ROWS else None, model=rp.ROWS.get(row, ("mlp",))[0],
                 dataset="x", data_name=rp.ROWS.get(row, ("", "x"))[1], family="mnist", rate=0.8, subset=None, seed=0)
    args = rp.parse_args(["--probes", "masc"])
    return rp.make_cell(job, args, {**run, "n_train": n})


def test_merge_keeps_other_seeds_replaces_the_same_seed_and_recomputes_the_summary() -> None:
    table: dict[str, Any] = {"cells": {}}
    key = rp.cell_key("mlp-mnist", 0.8, 1500, "clean", "fast")
    assert key == "mlp-mnist/p0.8/n1500/clean/fast"
    rp.merge_cell(table, key, _cell(_run(0, 0.40)), {"0": _run(0, 0.40)})
    first = table["cells"][key]["summary"]["probes"]["masc/corrupted"]["with_input"]["accuracy"]
    assert first == {"mean": 0.40, "std": None, "n": 1}
    rp.merge_cell(table, key, _cell(_run(1, 0.60)), {"1": _run(1, 0.60)})  # another invocation, another seed
    summary = table["cells"][key]["summary"]
    got = summary["probes"]["masc/corrupted"]["with_input"]["accuracy"]
    assert got["n"] == 2 and got["mean"] == pytest.approx(0.5) and got["std"] == pytest.approx(np.sqrt(0.02))
    assert summary["seeds"] == [0, 1] and summary["epochs"] == [10, 11]
    rp.merge_cell(table, key, _cell(_run(0, 0.50)), {"0": _run(0, 0.50)})  # seed 0 probed again
    got = table["cells"][key]["summary"]["probes"]["masc/corrupted"]["with_input"]["accuracy"]
    assert got["mean"] == pytest.approx(0.55) and list(table["cells"][key]["runs"]) == ["0", "1"]
    rp.merge_cell(table, key, _cell(_run(2, 0.70, n_test=50)), {"2": _run(2, 0.70, n_test=50)})
    assert list(table["cells"][key]["runs"]) == ["2"]  # another test set: the earlier runs no longer belong
    assert table["cells"][key]["summary"]["memorized"] == [False]


def test_table_file_merges_across_invocations(tmp_path: Path) -> None:
    path = tmp_path / "results" / "paper_table.json"
    a = rp.cell_key("mlp-mnist", 0.8, 1500, "clean", "fast")
    b = rp.cell_key("cnn-cifar10", 0.8, 50000, "clean", "fast")
    rp.update_table(path, [(a, _cell(_run(0, 0.4)), {"0": _run(0, 0.4)})])
    rp.update_table(path, [(b, _cell(_run(0, 0.3), row="cnn-cifar10", n=50000), {"0": _run(0, 0.3)})])
    rp.update_table(path, [(a, _cell(_run(1, 0.6)), {"1": _run(1, 0.6)})])
    table = json.loads(path.read_text())
    assert list(table["cells"]) == [a, b]  # the paper's row order
    assert list(table["cells"][a]["runs"]) == ["0", "1"] and list(table["cells"][b]["runs"]) == ["0"]
    other = tmp_path / "gpu" / "paper_table.json"
    rp.update_table(other, [(a, _cell(_run(2, 0.5)), {"2": _run(2, 0.5)})])
    assert rp.main(["--import-table", str(other), "--table", str(path)]) == 0
    merged = json.loads(path.read_text())["cells"][a]
    assert list(merged["runs"]) == ["0", "1", "2"]
    assert merged["summary"]["probes"]["masc/true"]["with_input"]["accuracy"]["mean"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------- markdown and the plot
def _published_table(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "results" / "paper_table.json"
    for n, masc in ((1500, 0.442), (60000, 0.686)):
        rp.update_table(path, [(rp.cell_key("mlp-mnist", 0.8, n, "clean", "fast"), _cell(_run(0, masc), n=n),
                                {"0": {**_run(0, masc), "n_train": n}})])
    rp.update_table(path, [(rp.cell_key("cnn-cifar10", 0.8, 50000, "clean", "fast"),
                            _cell(_run(0, 0.3), row="cnn-cifar10", n=50000), {"0": _run(0, 0.3)})])
    return path, json.loads(path.read_text())


def test_section_puts_ours_beside_the_paper_and_explains_the_gaps(tmp_path: Path) -> None:
    _, table = _published_table(tmp_path)
    text = rp.build_section(table, plot_name="results/data_size.png")
    assert text.startswith(rp.MARK_BEGIN) and text.endswith(rp.MARK_END)
    assert "| MLP-MNIST | 0.8 | 1,500 |" in text and "| CNN-CIFAR10 | 0.8 | 50,000 |" in text
    assert "0.442 (0.834) | -0.392 |" in text  # ours, the paper's, and the difference
    assert "0.300 (0.293) | +0.007 |" in text
    assert "paper 0.293" in text  # the authors' baseline table for CNN-CIFAR10, p = 0.8
    assert "trained on 1,500 of the paper's 60,000 images (2.5%)" in text
    assert "the same probe at n = 60,000 gives 0.686" in text
    assert "its best layer is the raw input (0.442); the best hidden layer gives 0.342" in text
    assert "a randomly initialized network gives 0.342" in text
    assert "![accuracy against training-set size](results/data_size.png)" in text
    assert "**Activation extraction mode.**" in text and "**Rank cut-off.**" in text


def test_replace_section_is_idempotent_and_keeps_the_rest() -> None:
    section = f"{rp.MARK_BEGIN}\nnew\n{rp.MARK_END}"
    before = "# Benchmark results\n\n## Other\nkept\n"
    once = rp.replace_section(before, section)
    assert once == before + "\n" + section + "\n"
    again = rp.replace_section(once.replace("new", "old"), section)
    assert again == once and again.count(rp.MARK_BEGIN) == 1
    middle = f"# A\n{rp.MARK_BEGIN}\nold\n{rp.MARK_END}\n## B\n"
    assert rp.replace_section(middle, section) == f"# A\n{section}\n## B\n"


def test_markdown_mode_rebuilds_the_section_and_draws_the_sweep(tmp_path: Path) -> None:
    path, table = _published_table(tmp_path)
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## Earlier section\ntext\n")
    assert rp.main(["--markdown", "--table", str(path), "--results-md", str(md)]) == 0
    text = md.read_text()
    assert text.startswith("# Benchmark results\n\n## Earlier section\ntext\n")
    assert text.count(rp.MARK_BEGIN) == 1 and "(results/data_size.png)" in text
    png = path.parent / "data_size.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [c["n_train"] for c in rp.data_size_cells(table)] == [1500, 60000]
    one = {"cells": {k: v for k, v in table["cells"].items() if "n1500" in k}}
    assert rp.plot_data_size(one, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_authors_protocol_runs_apart_with_its_own_settings(shared_mnist: Path) -> None:
    # The authors' protocol: the paper preset, their training order and stop rule, train-mode extraction, one
    # corruption seed (42) whatever the run's seed; its folders never collide with the clean protocol's.
    args = rp.parse_args(["--dataset", str(shared_mnist), "--rates", "0.8", "--subset", "1500", "--seeds", "0", "1",
                          "--protocol", "authors"])
    assert args.preset == "paper"
    jobs = rp.plan(args)
    assert [rp.run_dir(args, job).name for job in jobs] == [f"mlp-mnist-paper-n1500-p0.8-s{s}-authors" for s in (0, 1)]
    for job in jobs:
        config = rp.train_config(args, job, 10, None)
        assert (config.protocol, config.seed, config.optimizer) == ("authors", job.seed, "sgd")
        assert rp.corruption_seed(args, job) == 42 and config.corruption["seed"] == 42
        # their batch on MNIST (128, from their released code) and their own corrupted labels
        assert (config.batch_size, config.corruption["mode"]) == (128, "authors")
    # The authors' labels, drawn over all 60,000 training labels in file order, before the subset is taken.
    data = rp.load_split(str(shared_mnist), split="train", n=1500, subset_seed=0, rate=0.8, seed=42,
                         mode=rp.corruption_mode(args))
    full = rp._load(str(shared_mnist), "train", 0.0, 0).with_format("numpy")["true_label"][:]
    state = np.random.RandomState(42)
    mask = state.rand(len(full)) <= 0.8
    expected = full.copy()
    expected[mask] = state.choice(10, int(mask.sum()))
    rows = data.with_format("numpy")
    np.testing.assert_array_equal(rows["label"][:], expected[rows["index"][:]])
    clean = rp.parse_args(["--dataset", str(shared_mnist), "--rates", "0.8", "--seeds", "1"])
    (job,) = rp.plan(clean)
    assert rp.corruption_seed(clean, job) == 1 and rp.run_dir(clean, job).name == "mlp-mnist-fast-nall-p0.8-s1"
