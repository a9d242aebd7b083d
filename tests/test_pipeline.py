"""The library pipeline end to end on a tiny real run, checked against float64 references and the run's own files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file

from _pipeline_helpers import (
    RUN_KWARGS,
    activations,
    masc_reference,
    model_accuracy,
    ncm_reference,
    split_arrays,
)
from masc_probe.errors import InputError, MascProbeError, UnknownNameError
from masc_probe.models import load_model
from masc_probe.pipeline import default_run_dir, layer_table, probe_source, run_experiment
from masc_probe.report import ProbeReport


@pytest.fixture
def run(digits_run: Any) -> Any:
    """The session's shared run (conftest.py): read it, or copy it before writing into it."""
    return digits_run


@pytest.fixture(scope="module")
def data() -> dict[str, dict[str, np.ndarray]]:
    return {"train": split_arrays("train", corrupt=0.8, seed=0), "test": split_arrays("test")}


def _result(report: ProbeReport, layer: str, probe: str, labels: str, epoch: int | None = None) -> dict[str, Any]:
    [row] = [r for r in report.results  # the trained network's (a control model's carry "control")
             if (r["layer"], r["probe"], r["labels"], r.get("epoch"), r.get("control")) == (layer, probe, labels, epoch,
                                                                                           None)]
    return row


# ----------------------------------------------------------------------------------------------------- run
def test_run_writes_the_run_folder_and_report_files(run: Any) -> None:
    folder = run.output_dir
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "report.json", "report.md",
                 "accuracy_by_layer.png", "report.html", "README.md"):
        assert (folder / name).is_file(), name
    assert set(run.files) == {"report.json", "report.md", "accuracy_by_layer.png", "report.html", "README.md",
                              "profile.png"}  # MASC's accuracy by subspace size, drawn when the report has a profile
    saved_probes = json.loads((folder / "probes" / "runner.json").read_text())  # save_probes=True: one per row
    assert len(saved_probes["estimators"]) == len([r for r in run.report.results if r.get("control") is None])
    assert json.loads((folder / "report.json").read_text()) == run.report.to_dict()
    assert (folder / "report.md").read_text() == run.report.to_markdown()
    assert (folder / "accuracy_by_layer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(folder.glob(".tmp*")), "temporary files left behind"
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert run.training.epochs == 2 and run.training.stopped == "max_epochs"
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "masc-probe" in card and "model-index" in card


def test_model_accuracy_is_that_of_the_saved_checkpoint(run: Any, data: dict) -> None:
    model = load_model(run.output_dir)
    expected = model_accuracy(model, data["test"]["image"], data["test"]["true_label"])
    assert run.report.model_test_accuracy == pytest.approx(expected, abs=1e-12)
    assert run.report.n_test == len(data["test"]["label"]) == 359


@pytest.mark.parametrize("layer", ["input", "fc2"])
@pytest.mark.parametrize("labels", ["corrupted", "true"])
def test_probe_numbers_match_float64_references(run: Any, data: dict, layer: str, labels: str) -> None:
    model = load_model(run.output_dir)
    train = activations(model, layer, data["train"]["image"])
    test = activations(model, layer, data["test"]["image"])
    y = data["train"]["label" if labels == "corrupted" else "true_label"]
    truth = data["test"]["true_label"]
    n = len(truth)

    predicted, counts = masc_reference(train, y, test)
    masc = _result(run.report, layer, "masc", labels)
    assert masc["n_components"] == counts
    assert abs(masc["test_accuracy"] - (predicted == truth).mean()) <= 1 / n  # at most one float32 tie differs

    ncm = _result(run.report, layer, "ncm", labels)
    assert abs(ncm["test_accuracy"] - (ncm_reference(train, y, test) == truth).mean()) <= 1 / n


def test_corruption_and_provenance_describe_the_data(run: Any, data: dict) -> None:
    realized = float((data["train"]["label"] != data["train"]["true_label"]).mean())
    assert run.report.corruption == {"mode": "random", "rate": 0.8, "seed": 0,
                                     "realized_rate": pytest.approx(realized, abs=1e-12)}
    assert 0.65 < realized < 0.8  # p(K-1)/K = 0.72 for random mode
    prov = run.report.provenance
    assert {"masc_probe", "torch", "timm", "data_fingerprint", "solver"} <= set(prov)
    # One meaning (docs/architecture.md): the digest of the training labels the probes were fitted on, as any
    # ProbeRunner reports it; the dataset's own digest (source, split, corruption, preprocessing) is data.*.fingerprint.
    from torch.utils.data import DataLoader

    from masc_probe.data import load_data
    from masc_probe.runner import ProbeRunner

    direct = ProbeRunner(load_model(run.output_dir), layers=["input"], probes=("ncm",), train_accuracy=False,
                         progress=False).fit(DataLoader(load_data("digits", corrupt=0.8, seed=0), batch_size=512))
    assert prov["data_fingerprint"] == direct.data_fingerprint_
    assert run.report.extra["data"]["train"]["fingerprint"] not in (None, prov["data_fingerprint"])
    assert run.report.model == "mlp" and run.report.dataset == "digits"
    saved = json.loads((run.output_dir / "config.json").read_text())["masc_probe"]
    assert saved["dataset"] == "digits"
    assert {k: saved["corruption"][k] for k in ("mode", "rate", "seed")} == {"mode": "random", "rate": 0.8, "seed": 0}
    assert saved["training"]["optimizer"] == "adam"  # auto preset on built-in data = fast


def test_rerun_resumes_and_ends_with_the_uninterrupted_weights(run: Any, digits_cli_run: tuple, tmp_path: Path) -> None:
    # A run stopped after epoch 1: a copy of the CLI's run of the session, one epoch of the same training.
    assert digits_cli_run[1] == 0, digits_cli_run[3]
    folder = tmp_path / "resumed"
    shutil.copytree(digits_cli_run[0], folder)
    first = (folder / "metrics.jsonl").read_text().splitlines()
    assert len(first) == 1
    after_one = load_file(folder / "model.safetensors")
    light = {**RUN_KWARGS, "layers": ["input"], "probes": ("ncm",), "output_dir": folder}
    run_experiment(**light)  # the library's command with the fixture's 2 epochs: continues at epoch 2
    rows = (folder / "metrics.jsonl").read_text().splitlines()
    assert rows[0] == first[0] and len(rows) == 2
    theirs_rows = (run.output_dir / "metrics.jsonl").read_text().splitlines()
    assert rows[1] == theirs_rows[1]
    # Epoch 1 was the last epoch of the 1-epoch run, so its row was completed with the full passes (a closed run's
    # last row always is); in the uninterrupted run it is an ordinary row between two eval_every passes. What training
    # itself wrote (loss, running accuracy, rate) is the same; so are the full accuracies wherever both have them.
    a, b = json.loads(rows[0]), json.loads(theirs_rows[0])
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if b[k] is not None)
    assert {k for k in a if b[k] is None} <= {"train_accuracy_corrupted", "train_accuracy_true", "test_accuracy"}
    mine, theirs = load_file(folder / "model.safetensors"), load_file(run.output_dir / "model.safetensors")
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)
    assert not all((after_one[k] == theirs[k]).all() for k in mine)  # the second epoch did change the weights


@pytest.mark.parametrize("bad", [
    {"layers": ["fc9"]}, {"probes": ("masc", "nope")}, {"batch_size": 5000}, {"model": "timm/resnet1888"},
    {"model": "mlpp"}, {"dataset": "digitz"}, {"n_components": 0}, {"labels": "noisy"}, {"corrupt": 1.5},
    {"push_to_hub": "bad//repo"}, {"preset": "slow"}, {"corrupt_mode": "sideways"},
])
def test_bad_input_fails_before_writing_anything(tmp_path: Path, bad: dict) -> None:
    folder = tmp_path / "never"
    with pytest.raises(MascProbeError) as info:
        run_experiment(**{**RUN_KWARGS, **bad, "output_dir": folder})
    assert "\n" not in str(info.value)
    assert not folder.exists()


def test_report_files_are_all_or_nothing(run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from masc_probe.pipeline._outputs import write_outputs

    def broken(self: ProbeReport, path: Any, **_: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ProbeReport, "plot_layers", broken)
    with pytest.raises(OSError):
        write_outputs(run.report, tmp_path, card=False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------- probe
def test_probe_run_folder_uses_its_own_data_and_writes_into_it(run: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run.output_dir, copy, ignore=shutil.ignore_patterns("resume", "checkpoints"))
    result = probe_source(copy, layers=["input"], probes=("ncm",), progress=False)
    assert result.output_dir == copy
    assert ProbeReport.from_json_file(copy / "report.json") == result.report
    assert result.report.corruption == run.report.corruption
    assert _result(result.report, "input", "ncm", "true")["test_accuracy"] == \
        _result(run.report, "input", "ncm", "true")["test_accuracy"]

    monkeypatch.chdir(tmp_path)  # other data: the report goes to runs/, not over the run's own
    other = probe_source(copy, seed=1, layers=["input"], probes=("ncm",), progress=False)
    assert other.output_dir == Path("runs/probe-copy-digits-p0.8-random-s1")
    assert other.report.corruption["seed"] == 1
    assert (tmp_path / other.output_dir / "report.json").is_file()


def test_probe_all_checkpoints_has_an_epoch_axis(run: Any, data: dict, tmp_path: Path) -> None:
    kept = sorted(int(p.name.split("-")[1]) for p in (run.output_dir / "checkpoints").iterdir())
    result = probe_source(run.output_dir, all_checkpoints=True, layers=["input", "fc2"], probes=("ncm",),
                          output_dir=tmp_path, progress=False)
    assert result.report.epochs == kept == [0, 2]
    for epoch in kept:
        model = load_model(run.output_dir / "checkpoints" / f"epoch-{epoch:04d}")
        expected = model_accuracy(model, data["test"]["image"], data["test"]["true_label"])
        assert result.report.extra["model_test_accuracy_by_epoch"][str(epoch)] == pytest.approx(expected, abs=1e-12)
    assert (tmp_path / "accuracy_over_epochs.png").is_file() and (tmp_path / "report.json").is_file()
    # the input layer does not depend on the weights: the same at every epoch
    assert len({_result(result.report, "input", "ncm", "true", e)["test_accuracy"] for e in kept}) == 1


def test_probe_model_spec_needs_a_dataset_and_fits_the_clean_labels(data: dict, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset"):
        probe_source("mlp")
    result = probe_source("mlp", dataset="digits", layers=["input"], probes=("ncm",), output_dir=tmp_path,
                          progress=False)
    assert result.report.series == [("ncm", "true")] and result.report.corruption is None
    clean = split_arrays("train")
    expected = ncm_reference(clean["image"].reshape(len(clean["image"]), -1), clean["true_label"],
                             data["test"]["image"].reshape(359, -1))
    acc = _result(result.report, "input", "ncm", "true")["test_accuracy"]
    assert abs(acc - (expected == data["test"]["true_label"]).mean()) <= 1 / 359
    assert "README.md" not in result.files  # no model in that folder: no card


def test_probe_missing_folder_and_unknown_spec(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        probe_source(tmp_path / "absent")
    with pytest.raises(UnknownNameError, match="did you mean: mlp"):
        probe_source("mlpp", dataset="digits")
    with pytest.raises(InputError, match="checkpoints"):
        probe_source("mlp", dataset="digits", all_checkpoints=True)


# ----------------------------------------------------------------------------------------------------- misc
# The paper's MLP, written out from its definition (masc_probe.models._paper.PaperMLP): an input marker, a flatten,
# four dense blocks (linear, ReLU) and the head, in forward order; the paper probes the input and each block's output.
MLP_LAYERS = ["input", "flatten", *[f"fc{i}{part}" for i in range(1, 5) for part in (".linear", ".act", "")], "head"]
MLP_PROBED = {"input", "fc1", "fc2", "fc3", "fc4"}


def test_layer_table_marks_the_default_layers(run: Any) -> None:
    expected = [(n, n in MLP_PROBED) for n in MLP_LAYERS]
    assert len(expected) == 15 and sum(marked for _, marked in expected) == 5
    assert layer_table("mlp", input_size=8) == expected
    assert layer_table(str(run.output_dir)) == expected  # a run folder brings its own shape


def test_default_run_dir_is_a_safe_folder_name() -> None:
    assert default_run_dir("mlp", "digits", 0.8, "random", 0) == Path("runs/mlp-digits-p0.8-random-s0")
    assert default_run_dir("timm/resnet18", "../shared/data/mnist/", 0.25, "symmetric", 3) == \
        Path("runs/timm-resnet18-mnist-p0.25-symmetric-s3")
    assert default_run_dir("cnn", "user/some data", 0, "random", 0) == Path("runs/cnn-some-data-p0-random-s0")
