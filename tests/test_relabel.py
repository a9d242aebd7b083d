"""Tests of masc_probe.pipeline.relabel: on a real memorized run (300 digits, p=0.8), and on data
whose classes lie in separate subspaces, where the suggestions must repair every corrupted label."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedKFold
from torch import nn

from _training_helpers import MemorizedRun
from masc_probe.errors import InputError
from masc_probe.models import load_model
from masc_probe.pipeline.relabel import probe_checkpoints, relabel


def test_relabel_shares_match_the_known_corruption(tmp_path: Path, memorizer: MemorizedRun) -> None:
    run = memorizer
    result = relabel(run.run_dir, run.train, run.test, seed=0, output_dir=tmp_path, progress=False)
    rows = list(csv.DictReader((tmp_path / "relabel.csv").open()))
    assert list(rows[0]) == ["index", "given_label", "suggested_label", "margin"]
    index = np.array([int(r["index"]) for r in rows])
    given = np.array([int(r["given_label"]) for r in rows])
    suggested = np.array([int(r["suggested_label"]) for r in rows])
    assert (index == np.arange(len(run.train))).all()
    assert (given == run.train.label.numpy()).all()
    assert all(float(r["margin"]) >= 0 for r in rows) and set(suggested) <= set(range(10))
    # The shares: the csv's suggestions and the result's numbers tell the same story.
    true = run.train.true_label.numpy()
    corrupted = given != true
    assert result.repaired == pytest.approx((suggested[corrupted] == true[corrupted]).mean(), abs=1e-12)
    # And it is a repair: random suggestions get ~1/10 of the 217 corrupted labels right (sd 0.02), suggestions
    # fitted in-sample hand the given label back (0 repaired). This run repairs 0.300 (0.217 on relabel's former
    # permutation folds: the fold draw alone moves it).
    assert result.repaired > 0.15
    assert result.broken == pytest.approx((suggested[~corrupted] != true[~corrupted]).mean(), abs=1e-12)
    assert result.n_changed == int((suggested != given).sum())
    assert (result.labels, result.oracle, result.cross_fit) == ("corrupted", False, 2)
    # Accuracies on the 80% part (the seeded split, recomputed here) of the memorized and the fine-tuned model.
    order = np.random.default_rng(0).permutation(len(run.test))
    held = order[len(order) // 5 :]
    x, y = run.test.x[held], run.test.true_label[held]
    for model, reported in ((load_model(run.run_dir), result.accuracy_before),
                            (load_model(tmp_path), result.accuracy_after)):
        with torch.no_grad():
            assert float((model(x).argmax(1) == y).double().mean()) == pytest.approx(reported, abs=1e-12)
    # Early stopping: at most 30 epochs, and a stop before that only after 3 epochs without improvement.
    history = result.history
    assert 1 <= len(history) <= 30 and 0 <= result.best_epoch <= len(history)
    if len(history) < 30:
        assert len(history) - result.best_epoch == 3
    saved = json.loads((tmp_path / "relabel.json").read_text())
    assert saved["repaired"] == result.repaired and saved["layer"] == result.layer
    assert json.loads((tmp_path / "config.json").read_text())["masc_probe"]["relabel"]["layer"] == result.layer


def test_probe_checkpoints_gives_an_epoch_axis(tmp_path: Path, memorizer: MemorizedRun) -> None:
    run = memorizer
    last = run.result.epochs
    loader = torch.utils.data.DataLoader
    train, test = loader(run.train, batch_size=150), loader(run.test, batch_size=150)
    report = probe_checkpoints(run.run_dir, train, test, epochs=[0, last], layers=["input", "fc4"],
                               probes=("masc",), progress=False)  # fmt: skip
    assert report.epochs == [0, last]
    assert {(r["epoch"], r["layer"], r["labels"]) for r in report.results} == {
        (e, layer, labels) for e in (0, last) for layer in ("input", "fc4") for labels in ("corrupted", "true")}
    by_epoch = report.extra["model_test_accuracy_by_epoch"]
    for epoch in (0, last):
        model = load_model(run.run_dir / "checkpoints" / f"epoch-{epoch:04d}")
        with torch.no_grad():
            acc = float((model(run.test.x).argmax(1) == run.test.label).double().mean())
        assert by_epoch[str(epoch)] == pytest.approx(acc, abs=1e-12)
    # The input layer does not change with training: MASC there scores the same at every epoch.
    at_input = [r["test_accuracy"] for r in report.results if r["layer"] == "input" and r["labels"] == "true"]
    assert at_input[0] == at_input[1]
    report.plot_dynamics(tmp_path / "dynamics.png")
    assert (tmp_path / "dynamics.png").stat().st_size > 0
    with pytest.raises(InputError, match="checkpoints"):
        probe_checkpoints(tmp_path, train, test)


# ------------------------------------------------------------------------------------------- separate subspaces
K, DIMS, N_TRAIN_SEP, RATE_SEP = 10, 3, 1000, 0.2


def _separate(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c lives in coordinates [3c, 3c+3) of R^30, nothing elsewhere: its subspace is exactly those 3 axes."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = torch.zeros(n, K * DIMS)
    block = torch.randn(n, DIMS, generator=gen)
    for i in range(n):
        x[i, DIMS * y[i] : DIMS * (y[i] + 1)] = block[i]
    return x, y


@pytest.fixture(scope="module")
def separate() -> dict[str, object]:
    x, y = _separate(N_TRAIN_SEP, seed=1)
    gen = torch.Generator().manual_seed(2)
    flip = torch.rand(N_TRAIN_SEP, generator=gen) < RATE_SEP
    given = torch.where(flip, (y + torch.randint(1, K, (N_TRAIN_SEP,), generator=gen)) % K, y)  # another class
    xt, yt = _separate(200, seed=3)
    return {"train": torch.utils.data.TensorDataset(x, given, y), "test": torch.utils.data.TensorDataset(xt, yt),
            "x": x, "given": given, "true": y}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(K * DIMS, K))


def test_relabel_repairs_every_label_where_the_classes_are_separate_subspaces(separate, tmp_path: Path) -> None:
    # Labelled by 3-dimensional subspaces fitted on the given labels (80% of each class still right), every sample
    # lies in its true class's subspace and is orthogonal to all others: the suggestions must be the true labels.
    result = relabel(_model(), separate["train"], separate["test"], layers=["0"], n_components=DIMS, max_epochs=1,
                     patience=1, output_dir=tmp_path, progress=False)
    corrupted = separate["given"] != separate["true"]
    assert 150 < int(corrupted.sum()) < 250
    assert (result.repaired, result.broken) == (1.0, 0.0)
    assert result.n_changed == int(corrupted.sum())


def _own_directions(seed: int = 0) -> dict[str, object]:
    """4 classes of 12 samples, each sample a scaled unit vector: 24 singletons, each on an axis of its own, and 12
    twin pairs, the two of a pair on one shared axis with different labels. A MASC subspace spans the axes of the
    samples it was fitted on (k_c = all of them at 0.99: equal eigenvalues), so a singleton's cosines are all 0
    unless its own row was fitted, and a twin's reach 1 at its twin's label exactly when the twin was fitted."""
    n_single, n_pairs = 24, 12
    single = np.arange(n_single) % 4
    first, second = np.arange(n_pairs) % 4, (np.arange(n_pairs) + 1) % 4
    given = np.concatenate([single, first, second])
    axis = np.concatenate([np.arange(n_single), n_single + np.arange(n_pairs), n_single + np.arange(n_pairs)])
    twin = np.concatenate([np.full(n_single, -1), n_single + n_pairs + np.arange(n_pairs),
                           n_single + np.arange(n_pairs)])
    x = np.zeros((len(given), n_single + n_pairs), dtype=np.float32)
    x[np.arange(len(given)), axis] = np.random.default_rng(seed).uniform(1, 2, len(given))
    order = np.random.default_rng(seed + 1).permutation(len(given))  # singletons and twins interleaved
    rank = np.argsort(order)
    given, x, twin = given[order], x[order], np.where(twin[order] >= 0, rank[np.maximum(twin[order], 0)], -1)
    xt, yt = torch.as_tensor(x), torch.as_tensor(given)
    return {"train": torch.utils.data.TensorDataset(xt, yt, yt), "test": torch.utils.data.TensorDataset(xt, yt),
            "given": given, "twin": twin, "d": x.shape[1]}


def _read_relabel_csv(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = list(csv.DictReader((folder / "relabel.csv").open()))
    assert [int(r["index"]) for r in rows] == list(range(len(rows)))
    return np.array([int(r["suggested_label"]) for r in rows]), np.array([float(r["margin"]) for r in rows])


@pytest.mark.parametrize("folds", [2, 3])
def test_cross_fitting_never_labels_a_sample_from_its_own_row_and_splits_as_label_issues(tmp_path: Path,
                                                                                        folds: int) -> None:
    data = _own_directions()
    given, twin = data["given"], data["twin"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(data["d"], 4))
    relabel(model, data["train"], data["test"], layers=["0"], cross_fit=folds, seed=3, max_epochs=1, patience=1,
            output_dir=tmp_path, progress=False)
    suggested, margin = _read_relabel_csv(tmp_path)
    # The folds, independently: scikit-learn's stratified folds over the given labels (label issues' folds).
    fold = np.empty(len(given), dtype=int)
    for k, (_, held) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=3).split(given, given)):
        fold[held] = k
    single = twin < 0
    # A singleton's own row was never fitted: every cosine 0, no margin, the lowest class (MASC's tie rule).
    assert np.all(suggested[single] == 0) and np.allclose(margin[single], 0, atol=1e-6)
    # A twin takes its twin's label, with cosine 1, exactly when the twin sits in another fold.
    apart = ~single & (fold != fold[np.maximum(twin, 0)])
    together = ~single & ~apart
    assert apart.sum() > 0 and together.sum() > 0  # both cases occur
    assert np.array_equal(suggested[apart], given[twin[apart]]) and np.allclose(margin[apart], 1, atol=1e-5)
    assert np.all(suggested[together] == 0) and np.allclose(margin[together], 0, atol=1e-6)


def test_more_folds_than_a_class_has_samples_is_one_line(tmp_path: Path) -> None:
    data = _own_directions()  # 12 samples per class
    with pytest.raises(InputError) as err:
        relabel(nn.Sequential(nn.Flatten(), nn.Linear(data["d"], 4)), data["train"], data["test"], layers=["0"],
                cross_fit=13, max_epochs=1, output_dir=tmp_path, progress=False)
    assert str(err.value) == "folds=13 needs at least 13 samples of every class; class 0 has 12"


def test_in_sample_suggestions_read_each_sample_back_from_its_own_row(tmp_path: Path) -> None:
    # The control of the test above: fitted on the samples themselves (cross_fit=1), a singleton's own row gives its
    # given label back with cosine 1 — so the zeros above come from the folds, not from the data.
    data = _own_directions()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(data["d"], 4))
    relabel(model, data["train"], data["test"], layers=["0"], cross_fit=1, max_epochs=1, patience=1,
            output_dir=tmp_path, progress=False)
    suggested, margin = _read_relabel_csv(tmp_path)
    single = data["twin"] < 0
    assert np.array_equal(suggested[single], data["given"][single]) and np.allclose(margin[single], 1, atol=1e-5)


def test_relabel_refuses_a_model_without_parameters_in_one_line(separate, tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        relabel(nn.Sequential(nn.Flatten()), separate["train"], separate["test"], output_dir=tmp_path,
                progress=False)
    assert "trainable parameters" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_issues_detector_repairs_every_label_and_the_ceiling_is_the_same_fine_tuning_on_true_labels(
        separate, tmp_path: Path) -> None:
    # find_label_issues' chosen probe labels the separate subspaces exactly as MASC does: every suggestion is the true
    # label. Then fine-tuning on the suggestions and the ceiling's fine-tuning on the true labels see the same labels,
    # from the same weights with the same seed, so they must end at the same accuracy and epoch.
    result = relabel(_model(), separate["train"], separate["test"], layers=["0"], n_components=DIMS, max_epochs=4,
                     patience=2, output_dir=tmp_path, progress=False, detector="issues", probes=("masc", "ncm"),
                     ceiling=True)
    rows = list(csv.DictReader((tmp_path / "relabel.csv").open()))
    suggested = np.array([int(r["suggested_label"]) for r in rows])
    assert np.array_equal(suggested, separate["true"].numpy())
    assert (result.detector, result.layer, result.repaired, result.broken) == ("issues", "0", 1.0, 0.0)
    assert result.probe in ("masc", "ncm")
    assert result.accuracy_ceiling == result.accuracy_after and result.ceiling_best_epoch == result.best_epoch
    saved = json.loads((tmp_path / "relabel.json").read_text())
    assert saved["accuracy_ceiling"] == result.accuracy_ceiling and saved["probe"] == result.probe


def test_issues_detector_and_ceiling_errors_are_one_line(separate, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cross_fit >= 2"):
        relabel(_model(), separate["train"], separate["test"], detector="issues", cross_fit=1, output_dir=tmp_path)
    with pytest.raises(InputError, match="detector"):
        relabel(_model(), separate["train"], separate["test"], detector="cleanlab", output_dir=tmp_path)
    x, given = separate["x"], separate["given"]
    no_truth = torch.utils.data.TensorDataset(x, given)
    with pytest.raises(InputError, match="true labels"):
        relabel(_model(), no_truth, separate["test"], layers=["0"], n_components=DIMS, max_epochs=1,
                output_dir=tmp_path, progress=False, ceiling=True)
