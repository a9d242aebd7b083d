"""ProbeRunner as a new user meets it: bad batches as one-line errors, the data's own record in the report, and the
runner as a context manager that removes its temporary folders.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from _runner_helpers import N_CLASSES, data, mlp, tuples
from torch.utils.data import DataLoader

from masc_probe.data import describe_data, load_data
from masc_probe.errors import InputError
from masc_probe.models import load_model
from masc_probe.runner import ProbeRunner


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("where", ["label", "true_label"])
def test_float_labels_with_fractions_are_refused_in_one_line(where: str) -> None:
    x, yc, y = data(60)
    bad = (yc if where == "label" else y).double() + 0.5  # 0.5, 1.5, 2.5: truncation would make them 0, 1, 2
    batches = [(x, bad, y)] if where == "label" else [(x, yc, bad)]
    with pytest.raises(InputError) as err:
        ProbeRunner(mlp(), probes=("ncm",)).fit(batches)
    text = str(err.value)
    assert "integer" in text and re.search(r"[0-2]\.5\b", text) and "float64" in text and "\n" not in text, text


def test_float_labels_that_are_whole_numbers_fit_as_the_integers_do() -> None:
    x, yc, y = data(60)
    as_int = ProbeRunner(mlp(), probes=("ncm",), train_accuracy=False).fit(tuples(x, yc, y, 20))
    as_float = ProbeRunner(mlp(), probes=("ncm",), train_accuracy=False).fit(tuples(x, yc.float(), y.double(), 20))
    assert as_float.data_fingerprint_ == as_int.data_fingerprint_  # the same labels, in the same order
    got, want = as_float.predict(x), as_int.predict(x)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


# ------------------------------------------------------------------------------------------------- batch shapes
def test_batches_the_model_cannot_take_name_their_shape_and_the_models_input() -> None:
    x, yc, y = data(24, shape=(1, 5, 5))  # 25 features; the MLP's first Linear takes 16
    with pytest.raises(InputError) as err:
        ProbeRunner(mlp(), probes=("ncm",)).fit(tuples(x, yc, y, 8))
    text = str(err.value)
    assert "(8, 1, 5, 5)" in text and "16" in text and "Linear" in text and "\n" not in text, text


def test_a_paper_model_names_the_image_size_it_was_built_for() -> None:
    model = load_model("mlp", num_classes=N_CLASSES, in_chans=1, input_size=8)
    x, yc, y = data(12, shape=(1, 4, 4))
    with pytest.raises(InputError) as err:
        ProbeRunner(model, probes=("ncm",)).fit(tuples(x, yc, y, 6))
    text = str(err.value)
    assert "(6, 1, 4, 4)" in text and "(1, 8, 8)" in text and "\n" not in text, text


def test_evaluate_and_predict_name_a_wrong_batch_too() -> None:
    x, yc, y = data(30)
    runner = ProbeRunner(mlp(), probes=("ncm",), train_accuracy=False).fit(tuples(x, yc, y, 10))
    wrong = torch.zeros(5, 3, 4, 4)
    for call in (lambda: runner.evaluate([(wrong, y[:5])]), lambda: runner.predict(wrong)):
        with pytest.raises(InputError, match=r"\(5, 3, 4, 4\)"):
            call()


# ------------------------------------------------------------------------------------------------- the data's record
@pytest.fixture(scope="module")
def digits_runs() -> dict[str, object]:
    train = load_data("digits", corrupt=0.6, mode="symmetric", seed=4)
    test = load_data("digits", split="test")
    model = load_model("mlp", num_classes=10, in_chans=1, input_size=8)
    return {"train": train, "test": test, "model": model}


def test_evaluate_reports_the_corruption_and_dataset_the_training_data_carries(digits_runs, tmp_path: Path) -> None:
    train, test = digits_runs["train"], digits_runs["test"]
    record = describe_data(train)["corruption"]
    runner = ProbeRunner(digits_runs["model"], probes=("ncm",), train_accuracy=False)
    runner.fit(DataLoader(train, batch_size=512))
    report = runner.evaluate(DataLoader(test, batch_size=512))
    assert report.corruption == {"mode": "symmetric", "rate": 0.6, "seed": 4, "realized_rate": record["realized_rate"]}
    assert 0.3 < record["realized_rate"] < 0.7 and report.dataset == "digits"
    # What the caller passes still wins; a saved runner remembers the record.
    assert runner.evaluate(DataLoader(test, batch_size=512), corruption={"rate": 0.1}).corruption == {"rate": 0.1}
    loaded = ProbeRunner.load(runner.save(tmp_path / "saved"), digits_runs["model"])
    assert loaded.evaluate(DataLoader(test, batch_size=512)).corruption == report.corruption


def test_clean_or_unrecorded_training_data_reports_no_corruption(digits_runs) -> None:
    clean = load_data("digits")
    runner = ProbeRunner(digits_runs["model"], probes=("ncm",), train_accuracy=False)
    report = runner.fit(DataLoader(clean, batch_size=512)).evaluate(DataLoader(digits_runs["test"], batch_size=512))
    assert report.corruption is None and report.dataset == "digits"
    x, yc, y = data(30)
    plain = ProbeRunner(mlp(), probes=("ncm",), train_accuracy=False).fit(tuples(x, yc, y, 10))
    report = plain.evaluate(tuples(x, y, y, 10))
    assert report.corruption is None and report.dataset is None


# ------------------------------------------------------------------------------------------------- context manager
def test_runner_as_a_context_manager_removes_its_temporary_folders(tmp_path: Path) -> None:
    x, yc, y = data(90)
    # A tiny budget: fitted probes spill to a folder under cache_dir (see runner/_store.py).
    with ProbeRunner(mlp(), probes=("masc", "ncm"), max_memory=8_000, cache_dir=tmp_path) as runner:
        assert runner.fit(tuples(x, yc, y, 30)) is runner
        assert any(tmp_path.iterdir())  # the spill folder exists while the runner is open
        report = runner.evaluate(tuples(x, y, y, 30))
    assert list(tmp_path.iterdir()) == []
    assert report.results  # what it returned stays usable
    with pytest.raises(InputError, match="not fitted"):
        runner.predict(x)


def test_the_context_manager_cleans_up_after_an_error(tmp_path: Path) -> None:
    x, yc, y = data(90)
    with pytest.raises(RuntimeError, match="stop here"):
        with ProbeRunner(mlp(), probes=("masc",), max_memory=8_000, cache_dir=tmp_path) as runner:
            runner.fit(tuples(x, yc, y, 30))
            raise RuntimeError("stop here")
    assert list(tmp_path.iterdir()) == []
