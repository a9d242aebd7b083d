"""Tests of masc_probe.relabel and masc_probe.editing on a real memorized run (300 digits, p=0.8)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from _training_helpers import memorized_run
from masc_probe.editing import edit_with_velpic, final_linear
from masc_probe.errors import InputError, UnknownNameError
from masc_probe.models import load_model
from masc_probe.relabel import probe_checkpoints, relabel


def _head_inputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the model feeds its final layer, read here with a hook of our own."""
    seen: list[torch.Tensor] = []
    handle = model.head.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return seen[0]


def _velpic_reference(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """VeLPIC in float64 from its definition: top eigenvector of each X_cᵀX_c, signed by the mean of x·v_c.

    The top eigenvector of X_cᵀX_c is X_c's top right singular vector; the SVD of the small (n_c × d) X_c avoids a
    d × d eigendecomposition.
    """
    vectors = []
    for c in range(k):
        xc = features[labels == c]
        v = np.linalg.svd(xc, full_matrices=False)[2][0]
        vectors.append(-v if (features @ v).mean() < 0 else v)
    return np.stack(vectors)


def test_velpic_editing_makes_the_model_predict_as_velpic() -> None:
    from masc_probe.probes import VeLPIC

    run = memorized_run()
    model = load_model(run.run_dir)
    train_x, test_x = run.train.x, run.test.x
    given = run.train.label.numpy()
    features = _head_inputs(model, train_x)
    probe = VeLPIC().fit(features.numpy(), given)
    expected = probe.predict(_head_inputs(model, test_x).numpy())

    edited = edit_with_velpic(model, run.train)
    assert edited is model and final_linear(model)[0] == "head"
    torch.testing.assert_close(model.head.weight, torch.as_tensor(probe.coef_))
    with torch.no_grad():
        pred = model(test_x).argmax(1).numpy()
    assert (pred == expected).all()
    # The same predictions from a float64 VeLPIC written here (up to float32 near-ties).
    ref = _velpic_reference(features.double().numpy(), given, 10)
    scores = _head_inputs(model, test_x).double().numpy() @ ref.T
    top2 = np.sort(scores, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4 * np.abs(top2[:, 1])
    assert clear.mean() > 0.95
    assert (pred[clear] == scores.argmax(1)[clear]).all()


def test_velpic_editing_errors() -> None:
    model = load_model("mlp", num_classes=10, in_chans=1, input_size=8)
    run = memorized_run()
    with pytest.raises(UnknownNameError, match="head"):
        edit_with_velpic(model, run.train, layer="haed")
    with pytest.raises(InputError, match="nn.Linear"):
        edit_with_velpic(model, run.train, layer="fc1")
    few = torch.utils.data.TensorDataset(run.train.x[:5], run.train.label[:5])
    with pytest.raises(InputError, match="every class"):
        edit_with_velpic(model, few)


def test_relabel_shares_match_the_known_corruption(tmp_path: Path) -> None:
    run = memorized_run()
    result = relabel(run.run_dir, run.train, run.test, seed=0, output_dir=tmp_path, progress=False)
    rows = list(csv.DictReader((tmp_path / "relabel.csv").open()))
    assert list(rows[0]) == ["index", "given_label", "suggested_label", "margin"]
    index = np.array([int(r["index"]) for r in rows])
    given = np.array([int(r["given_label"]) for r in rows])
    suggested = np.array([int(r["suggested_label"]) for r in rows])
    assert (index == np.arange(len(run.train))).all()
    assert (given == run.train.label.numpy()).all()
    assert all(float(r["margin"]) >= 0 for r in rows) and set(suggested) <= set(range(10))
    # The shares, recomputed from the csv and the corruption this test knows.
    true = run.train.true_label.numpy()
    corrupted = given != true
    assert result.repaired == pytest.approx((suggested[corrupted] == true[corrupted]).mean(), abs=1e-12)
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


def test_probe_checkpoints_gives_an_epoch_axis(tmp_path: Path) -> None:
    run = memorized_run()
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
    assert report.plot_dynamics(tmp_path / "dynamics.png").stat().st_size > 0
    with pytest.raises(InputError, match="checkpoints"):
        probe_checkpoints(tmp_path, train, test)
