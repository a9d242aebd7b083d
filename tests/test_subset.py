"""--max-train-samples / --max-eval-samples: a stratified subset by a recorded seed, in the report and config.json,
and the same samples on a rerun or a probe of the run folder (masc_probe.data._subset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from masc_probe.data import describe_data, load_data
from masc_probe.data._subset import shares, stratified_indices, subset_data
from masc_probe.errors import InputError


@pytest.mark.parametrize(("counts", "n", "expected"), [
    ([5, 3, 2], 5, [3, 1, 1]),  # exact 2.5, 1.5, 1.0: the one left over goes to the lower of the tied classes
    ([10, 10, 1], 7, [4, 3, 0]),  # 3.33, 3.33, 0.33
    ([6, 6], 12, [6, 6]),
    ([7, 2, 1], 3, [2, 1, 0]),  # 2.1, 0.6, 0.3: floors 2, 0, 0 and the remainder to the largest (0.6)
])
def test_each_class_keeps_its_share_by_largest_remainders(counts: list[int], n: int, expected: list[int]) -> None:
    assert shares(counts, n) == expected


def test_the_subset_is_stratified_seeded_and_in_data_order() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)[np.random.default_rng(7).permutation(100)]
    rows = stratified_indices(labels, 10, seed=3)
    assert list(np.bincount(labels[rows], minlength=3)) == [5, 3, 2] and list(rows) == sorted(set(rows))
    assert list(rows) == list(stratified_indices(labels, 10, seed=3))
    assert list(rows) != list(stratified_indices(labels, 10, seed=4))
    assert list(stratified_indices(labels, 100, seed=3)) == list(range(100))


def test_a_subset_of_a_loaded_split_keeps_its_rows_labels_and_says_so() -> None:
    full = load_data("digits", corrupt=0.8, seed=0)
    sub = subset_data(full, 100, seed=0)
    record, whole = describe_data(sub), describe_data(full)
    assert record["subset"] == {"max_samples": 100, "from_rows": 1438, "seed": 0, "stratified_by": "true_label"}
    assert record["num_rows"] == len(sub) == 100 and whole["num_rows"] == 1438 and "subset" not in whole
    table, all_rows = sub.with_format("numpy"), full.with_format("numpy")
    index = np.asarray(table["index"][:])
    true, given = np.asarray(table["true_label"][:]), np.asarray(table["label"][:])
    assert list(np.bincount(true)) == [10] * 10  # digits has 143-144 per class: 10 each
    assert np.array_equal(given, np.asarray(all_rows["label"][:])[index])  # the corruption the whole split gave
    assert record["corruption"]["n_changed"] == int((true != given).sum()) and record["corruption"]["n"] == 100
    assert record["fingerprint"] != whole["fingerprint"]
    assert subset_data(full, 5000, seed=0) is full and subset_data(full, None, seed=0) is full
    with pytest.raises(InputError, match="expected a positive number of samples"):
        subset_data(full, 0, seed=0)


def test_a_run_on_a_subset_records_it_resumes_only_with_it_and_is_probed_on_it(tmp_path: Path) -> None:
    from masc_probe.pipeline import probe_source, train_model

    folder = tmp_path / "run"
    kwargs = {"dataset": "digits", "max_epochs": 1, "output_dir": folder, "progress": False}
    train_model(**kwargs, max_train_samples=300, max_eval_samples=100)
    saved = json.loads((folder / "config.json").read_text())["masc_probe"]
    assert saved["subset"] == {"max_train_samples": 300, "max_eval_samples": 100, "seed": 0}
    with pytest.raises(InputError, match="other settings .*subset="):
        train_model(**kwargs, max_train_samples=400, max_eval_samples=100)
    result = probe_source(folder, layers=["fc1"], probes=["ncm"], controls="none", progress=False,
                          output_dir=tmp_path / "probed")
    assert result.report.n_train == 300 and result.report.n_test == 100
    assert result.report.to_dict()["subset"] == saved["subset"]
