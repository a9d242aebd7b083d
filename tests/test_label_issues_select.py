"""Label issues and relabeling choose their layer by the report's rule: against the held-out images' labels re-drawn
by the training data's corruption recipe with a recorded seed (default), or against the true ones (``clean``).

The constructed case has a known answer: a network with two layers, ``a`` reading a one-hot code of each image's
true label and ``b`` a one-hot code of the label the noisy rule re-draws for it (by ``corrupt_labels`` with the
recipe, the seed and the image's index: the rule's definition). Any probe at ``a`` is right on every true label and
any probe at ``b`` on every re-drawn one, so the noisy rule must choose ``b`` and the clean rule ``a``; re-drawn with
another seed, ``b`` no longer matches and ``a`` wins again (the control that the choice follows the recorded seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from masc_probe import find_label_issues, load_data
from masc_probe.cli import main
from masc_probe.data._batches import TensorBatches
from masc_probe.data.corruption import corrupt_labels
from masc_probe.errors import UnknownNameError
from masc_probe.pipeline.relabel import relabel

K, P, SEED = 4, 0.6, 5
RECIPE = {"mode": "random", "rate": P}


class _TwoCodes(nn.Module):
    """Input [one-hot u, one-hot v]: layer ``a`` gives u's code, layer ``b`` v's; a linear head to fine-tune."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Identity(), nn.Identity(), nn.Linear(2 * K, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x[:, :K]), self.b(x[:, K:])], dim=1))


def _codes(u: np.ndarray, v: np.ndarray) -> torch.Tensor:
    eye = np.eye(K, dtype=np.float32)
    return torch.as_tensor(np.concatenate([eye[u], eye[v]], axis=1))


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    true = np.arange(200) % K
    given = corrupt_labels(true, 0.3, num_classes=K, seed=1)  # training rows: both codes carry the given label
    y = rng.permutation(np.arange(200) % K)
    index = 1000 + rng.permutation(200)  # the images' own indices, not their positions
    redrawn = corrupt_labels(y, P, num_classes=K, seed=SEED, indices=index)
    return {"true": true, "given": given, "y": y, "index": index, "redrawn": redrawn}


def _issues(case: dict[str, np.ndarray], **kwargs) -> object:
    c = case
    train = TensorBatches(_codes(c["given"], c["given"]), torch.as_tensor(c["given"]), batch_size=64)
    test = TensorBatches(_codes(c["y"], c["redrawn"]), torch.as_tensor(c["y"]), index=torch.as_tensor(c["index"]),
                         batch_size=64)
    return find_label_issues(_TwoCodes(), train, layers=["a", "b"], probes=("masc", "ncm"), select=test,
                             corruption=RECIPE, progress=False, **kwargs)


def test_label_issues_choose_against_the_redrawn_labels_by_default_and_the_true_ones_on_request(case) -> None:
    y, redrawn = case["y"], case["redrawn"]
    assert 0.35 < np.mean(redrawn != y) < 0.6  # the two codes disagree on about p (K-1)/K = 0.45 of the images
    noisy = _issues(case, select_seed=SEED)
    assert noisy.layer == "b" and noisy.select_accuracy == 1.0
    at_a = [c["select_accuracy"] for c in noisy.candidates if c["layer"] == "a"]
    assert at_a == [pytest.approx(np.mean(y == redrawn))] * 2  # a's probes are right on the true labels only
    record = noisy.choosing_labels
    assert {k: record[k] for k in ("kind", "mode", "rate", "seed", "n")} == \
        {"kind": "noisy", "mode": "random", "rate": P, "seed": SEED, "n": 200}
    assert record["realized_rate"] == pytest.approx(np.mean(redrawn != y)) and record["condition_holds"] is True
    assert noisy.summary()["choosing_labels"] == record
    clean = _issues(case, select_seed=SEED, select_rule="clean")
    assert clean.layer == "a" and clean.select_accuracy == 1.0 and clean.choosing_labels["kind"] == "clean"
    other_seed = _issues(case, select_seed=SEED + 1)  # the control: b's code no longer is the choosing labels
    assert other_seed.layer == "a" and other_seed.choosing_labels["seed"] == SEED + 1


def test_without_a_recipe_the_choice_is_on_the_labels_as_given_and_a_bad_rule_is_one_line(case) -> None:
    c = case
    train = TensorBatches(_codes(c["given"], c["given"]), torch.as_tensor(c["given"]), batch_size=64)
    test = TensorBatches(_codes(c["y"], c["redrawn"]), torch.as_tensor(c["y"]), batch_size=64)
    given = find_label_issues(_TwoCodes(), train, layers=["a", "b"], probes=("ncm",), select=test, progress=False)
    assert given.layer == "a" and given.choosing_labels["kind"] == "given"  # no corruption record: as given
    with pytest.raises(UnknownNameError) as err:
        find_label_issues(None, train, select_rule="noisey", progress=False)
    assert "select must be one of noisy, clean" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("detector", ["masc", "issues"])
def test_relabel_chooses_its_layer_by_the_same_rule(case, detector: str, tmp_path: Path) -> None:
    c = case
    train = torch.utils.data.TensorDataset(_codes(c["given"], c["given"]), torch.as_tensor(c["given"]),
                                           torch.as_tensor(c["true"]))
    test = torch.utils.data.TensorDataset(_codes(c["y"], c["redrawn"]), torch.as_tensor(c["y"]),
                                          torch.as_tensor(c["y"]), torch.as_tensor(c["index"]))
    kwargs = dict(layers=["a", "b"], max_epochs=1, patience=1, progress=False, detector=detector,
                  probes=("masc", "ncm"), select_seed=SEED, corruption=RECIPE)
    noisy = relabel(_TwoCodes(), train, test, output_dir=tmp_path / "noisy", **kwargs)
    assert noisy.layer == "b" and noisy.selection_accuracy == 1.0
    saved = json.loads((tmp_path / "noisy" / "relabel.json").read_text())["choosing_labels"]
    assert (saved["kind"], saved["mode"], saved["rate"], saved["seed"], saved["n"]) == ("noisy", "random", P, SEED, 40)
    assert 0 < saved["realized_rate"] < 1
    clean = relabel(_TwoCodes(), train, test, output_dir=tmp_path / "clean", select="clean", **kwargs)
    assert clean.layer == "a" and clean.selection_accuracy == 1.0
    assert json.loads((tmp_path / "clean" / "relabel.json").read_text())["choosing_labels"]["kind"] == "clean"


def test_the_cli_records_the_runs_redrawn_labels_and_select_clean_the_true_ones(digits_cli_run, tmp_path) -> None:
    folder = digits_cli_run[0]
    common = ["--probes", "masc,ncm", "--gallery", "0", "--quiet"]
    assert main(["label-issues", str(folder), "--out", str(tmp_path / "noisy"), *common]) == 0
    assert main(["label-issues", str(folder), "--out", str(tmp_path / "clean"), "--select", "clean", *common]) == 0
    noisy, clean = (json.loads((tmp_path / k / "label_issues.json").read_text()) for k in ("noisy", "clean"))
    record = noisy["choosing_labels"]
    assert (record["kind"], record["mode"], record["rate"], record["seed"]) == ("noisy", "random", 0.8, 0)
    test = load_data("digits", split="test")
    y, index = np.asarray(test["label"]), np.asarray(test["index"])
    redrawn = corrupt_labels(y, 0.8, num_classes=10, seed=0, indices=index)
    assert record["n"] == len(y) and record["realized_rate"] == pytest.approx(np.mean(redrawn != y))
    assert abs(record["realized_rate"] - 0.72) < 4 * np.sqrt(0.72 * 0.28 / len(y))  # p (K-1)/K, binomially
    assert clean["choosing_labels"]["kind"] == "clean"
    # Accuracy against labels 72% re-drawn is about a (1 - p) + p / K: far below the same probe's clean accuracy a.
    by = {(c["layer"], c["probe"]): c["select_accuracy"] for c in clean["candidates"]}
    pairs = [(c["select_accuracy"], by[(c["layer"], c["probe"])]) for c in noisy["candidates"]]
    assert all(n < a for n, a in pairs if a > 0.3) and any(a > 0.3 for _, a in pairs)
