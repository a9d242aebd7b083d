"""The ``authors`` protocol against the ``clean`` one: extraction, training order, stop rule, relabeling, records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from _training_helpers import DictDigits, digits
from masc_probe import ProbeRunner
from masc_probe.errors import UnknownNameError
from masc_probe.layers import FeatureTap
from masc_probe.models import load_model
from masc_probe.models._paper import PaperCNN
from masc_probe.training import TrainConfig, preset_config, train


# ------------------------------------------------------------------------------------------------ extraction
def _rows(model: torch.nn.Module, x: torch.Tensor, protocol: str) -> dict[str, torch.Tensor]:
    with ProbeRunner(model, probes=("ncm",), protocol=protocol, controls=()) as runner:
        return runner.features(x)


def test_authors_extraction_changes_resnet_rows_and_leaves_the_mlp_alone() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    res = load_model("resnet18-cifar", num_classes=10)
    clean, authors = _rows(res, x, "clean"), _rows(res, x, "authors")
    assert list(authors) == list(res.PROBE_LAYERS)
    for name in res.PROBE_LAYERS:  # every probe point lies after a BatchNorm, which now saw one image only
        assert authors[name].shape == clean[name].shape
        assert not torch.allclose(authors[name], clean[name], atol=1e-3), name
    # Each image is normalized by its own statistics: its rows do not depend on the batch it came in ...
    alone = _rows(res, x[2:3], "authors")
    for name in res.PROBE_LAYERS:
        torch.testing.assert_close(alone[name][0], authors[name][2], rtol=1e-5, atol=1e-5)
    # ... and they are train-mode BatchNorm over that image alone, recomputed by hand for the stem.
    res.train()
    with torch.no_grad():
        stem = res.conv1(x[1:2])
        mean, var = stem.mean(dim=(0, 2, 3), keepdim=True), stem.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        by_hand = res.maxpool(torch.relu((stem - mean) / torch.sqrt(var + res.bn1.eps)))
    res.eval()
    torch.testing.assert_close(authors["maxpool"][1], by_hand.flatten(), rtol=1e-4, atol=1e-5)

    mlp = load_model("mlp", num_classes=10, in_chans=3, input_size=32)
    clean, authors = _rows(mlp, x, "clean"), _rows(mlp, x, "authors")
    assert list(authors) == ["input", "fc1", "fc2", "fc3", "fc4"]
    for name in authors:
        torch.testing.assert_close(authors[name], clean[name], rtol=1e-6, atol=1e-6)


def test_reports_record_the_protocol_and_the_mlp_scores_do_not_change(tmp_path: Path) -> None:
    # 120 training and 100 test digits: the authors protocol forwards one image at a time through the 5.3M-parameter
    # MLP, and what is compared (every number of the two reports) is exact equality at any size.
    x, y, y_true, xt, yt = digits(n_train=120)
    train_set = TensorDataset(torch.tensor(x), torch.tensor(y), torch.tensor(y_true))
    test_set = TensorDataset(torch.tensor(xt[:100]), torch.tensor(yt[:100]))
    torch.manual_seed(0)
    mlp = load_model("mlp", num_classes=10, in_chans=1, input_size=8)
    reports = {}
    for protocol in ("clean", "authors"):
        with ProbeRunner(mlp, layers=["fc1", "fc4"], probes=("masc", "ncm"), protocol=protocol) as runner:
            runner.fit([train_set[i:i + 40] for i in range(0, 120, 40)], num_classes=10)
            reports[protocol] = runner.evaluate([test_set[i:i + 50] for i in range(0, 100, 50)]).to_dict()
            if protocol == "authors":
                runner.save(tmp_path / "saved")
    assert reports["clean"]["protocol"] == "clean" and reports["authors"]["protocol"] == "authors"
    assert [r["test_accuracy"] for r in reports["authors"]["results"]] == \
        [r["test_accuracy"] for r in reports["clean"]["results"]]
    assert reports["authors"]["model_test_accuracy"] == reports["clean"]["model_test_accuracy"]
    assert json.loads((tmp_path / "saved" / "runner.json").read_text())["protocol"] == "authors"
    with ProbeRunner.load(tmp_path / "saved", mlp) as loaded:
        assert loaded.config.protocol == "authors"
    with pytest.raises(UnknownNameError, match="authors"):
        ProbeRunner(mlp, protocol="author")


def test_authors_model_accuracy_is_measured_in_eval_mode() -> None:
    import copy

    # A small network whose BatchNorm running statistics are off: in eval mode it predicts one class for every image,
    # in the authors' per-image train mode another. (The resnet18-cifar this test used before predicted class 0 for
    # all 24 images in both modes, so against labels 0, 1, 2, ... both modes scored 1/3 and the test could not fail.)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
    x = torch.randn(24, 3, 8, 8)
    net.eval()
    with torch.no_grad():
        eval_mode = net(x).argmax(1)
        per_image = copy.deepcopy(net).train()  # a train-mode pass moves the running statistics: on a copy
        train_mode = torch.cat([per_image(x[i:i + 1]).argmax(1) for i in range(len(x))])
    assert (eval_mode != train_mode).all()
    with ProbeRunner(net, layers=["7"], probes=("ncm",), protocol="authors", train_accuracy=False) as runner:
        runner.fit([(x, torch.arange(24) % 3)], num_classes=3)
        # Each test image labelled with its eval-mode prediction: 1 in eval mode, 0 in the per-image train mode.
        report = runner.evaluate([(x[:10], eval_mode[:10]), (x[10:], eval_mode[10:])])
    assert report.model_test_accuracy == 1.0
    assert not net.training


# ------------------------------------------------------------------------------------------------ training
# The trainer tests below train the paper's CNN (216k parameters), not its MLP (5.3M): a few epochs on 64 digits
# spend most of their time writing the weights (the resume state every epoch, the checkpoints); what they test (the
# order, the records, the resume) does not depend on the network.
class _RecordingCNN(PaperCNN):
    """The paper's CNN that records the sample ids (pixel 0, set to the index) of every training-mode batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x[:, 0, 0, 0].round().long().tolist())
        return super().forward(x)


def _indexed_digits(n: int) -> DictDigits:
    x, y, y_true, _, _ = digits(n_train=n)
    x[:, 0, 0, 0] = np.arange(n)  # digits' top-left pixel is always blank: it carries the sample's index instead
    return DictDigits(x, y, y_true)


def _orders(protocol: str, tmp_path: Path) -> list[list[int]]:
    torch.manual_seed(0)
    model = _RecordingCNN(num_classes=10, in_chans=1, input_size=(8, 8))
    model.seen = []
    config = preset_config("cnn", "digits", preset="fast", num_classes=10, max_epochs=3, batch_size=16,
                           output_dir=str(tmp_path / protocol), progress=False, protocol=protocol,
                           keep_checkpoints="final")  # fmt: skip
    train(model, _indexed_digits(64), config=config)
    epochs = [sum(model.seen[i:i + 4], []) for i in range(0, len(model.seen), 4)]
    assert len(epochs) == 3 and all(sorted(e) == list(range(64)) for e in epochs)
    return epochs


def test_authors_training_takes_the_data_in_its_own_order_every_epoch(tmp_path: Path) -> None:
    assert _orders("authors", tmp_path) == [list(range(64))] * 3
    clean = _orders("clean", tmp_path)
    assert clean[0] != list(range(64)) and clean[0] != clean[1] != clean[2]


@pytest.mark.parametrize("protocol", ["authors", "clean"])
@pytest.mark.usefixtures("long_training")  # four runs of up to 10 epochs each
def test_the_stop_rule_reads_the_protocols_accuracy(protocol: str, tmp_path: Path) -> None:
    x, y, y_true, _, _ = digits(n_train=200)
    data = DictDigits(x, y, y_true)

    def run(name: str, target: float) -> Any:
        config = preset_config("mlp", "digits", preset="fast", num_classes=10, batch_size=32, progress=False,
                               output_dir=str(tmp_path / name), protocol=protocol, max_epochs=10,
                               target_accuracy=target, keep_checkpoints="final", eval_every=1)  # fmt: skip
        return train("mlp", data, config=config)

    history = run("free", 1.0).history
    running = [h["train_accuracy_running"] for h in history]
    after = [h["train_accuracy_corrupted"] for h in history]

    def first(values: list[float], target: float) -> int | None:
        return next((i + 1 for i, v in enumerate(values) if v >= target), None)

    # A target that the two accuracies reach at different epochs (the running accuracy, of the weights while they
    # change during the epoch, trails the eval pass after it): the run stops when the protocol's one reaches it.
    ours = running if protocol == "authors" else after
    reached = {t: (first(running, t), first(after, t)) for t in sorted(set(running) | set(after))}
    targets = [t for t, (a, b) in reached.items() if a is not None and b is not None and a != b]
    assert targets, history
    target = targets[len(targets) // 2]
    stopped = run("stopped", target)
    assert stopped.stopped == "target" and stopped.epochs == first(ours, target)
    assert stopped.history == history[:stopped.epochs]  # the same steps: neither order nor init depends on the target


def test_protocol_and_checkpoint_policy_are_recorded_and_checked(tmp_path: Path) -> None:
    data = TensorDataset(*[torch.tensor(a) for a in digits(n_train=64)[:3]])
    config = preset_config("cnn", "digits", preset="paper", num_classes=10, max_epochs=3, batch_size=32,
                           output_dir=str(tmp_path / "a"), progress=False, protocol="authors",
                           keep_checkpoints="all", optimizer="sgd")  # fmt: skip
    train("cnn", data, config=config)
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["masc_probe"]["training"]
    assert (saved["protocol"], saved["keep_checkpoints"], saved["optimizer"]) == ("authors", "all", "sgd")
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == [f"epoch-000{e}" for e in range(4)]
    final = config.replace(keep_checkpoints="final", output_dir=str(tmp_path / "f"))
    train("cnn", data, config=final)
    assert [p.name for p in (tmp_path / "f" / "checkpoints").iterdir()] == ["epoch-0003"]
    assert [e for e in range(30) if TrainConfig(keep_checkpoints="all").keeps_checkpoint(e)] == list(range(30))
    assert not any(TrainConfig(keep_checkpoints="final").keeps_checkpoint(e) for e in range(30))
    with pytest.raises(UnknownNameError, match="authors"):
        TrainConfig(protocol="author")
    with pytest.raises(UnknownNameError, match="dense"):
        TrainConfig(keep_checkpoints="sparse")
    from masc_probe.errors import InputError

    with pytest.raises(InputError, match="protocol='authors'"):  # a run of one protocol is not resumed by the other
        train("cnn", data, config=config.replace(protocol="clean", max_epochs=4))


def test_runs_saved_before_the_new_fields_resume(tmp_path: Path) -> None:
    """Runs written by commit decbc51's code (runs/paper/*) have no protocol or keep_checkpoints in their resume
    state: they resume under today's defaults, which are the behaviour of that code."""
    data = TensorDataset(*[torch.tensor(a) for a in digits(n_train=64)[:3]])
    config = preset_config("cnn", "digits", preset="fast", num_classes=10, max_epochs=2, batch_size=32,
                           output_dir=str(tmp_path / "old"), progress=False, checkpoint_dense_until=-1,
                           checkpoint_every=0)  # fmt: skip
    reference = train("cnn", data, config=config.replace(max_epochs=3, output_dir=str(tmp_path / "ref")))
    train("cnn", data, config=config)
    state_path = tmp_path / "old" / "resume" / "trainer.json"
    state = json.loads(state_path.read_text())
    for key in ("protocol", "keep_checkpoints"):
        del state["config"][key]
    for row in state["history"]:
        del row["train_accuracy_running"]
    state.pop("weights", None)
    state_path.write_text(json.dumps(state))
    resumed = train("cnn", data, config=config.replace(max_epochs=3))
    assert resumed.epochs == 3
    assert resumed.history[-1] == reference.history[-1]
    a, b = (load_model(tmp_path / name).state_dict() for name in ("old", "ref"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_relabel_run_fits_on_the_whole_training_set_under_the_authors_protocol(
        digits_run: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import masc_probe.pipeline.relabel as relabel_module
    from masc_probe.pipeline import relabel_run

    folder = digits_run.output_dir  # a trained run folder (the session's; relabel itself is replaced: nothing written)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(relabel_module, "relabel", lambda *a, **k: calls.append(k) or k)
    relabel_run(folder, protocol="authors", max_epochs=1, progress=False)
    relabel_run(folder, max_epochs=1, progress=False)
    assert [c["cross_fit"] for c in calls] == [1, 2]
    with pytest.raises(UnknownNameError, match="authors"):
        relabel_run(folder, protocol="author")
