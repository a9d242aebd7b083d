"""The stop rule at the price of what can matter (issue 22): the pass over the training data ends as soon as its
answer is certain, and a run still stops at the epoch the rule's plain definition gives — "the first epoch whose
evaluation of the whole training set reaches the target" — with the same weights. The definition is written out
here as a hand-made loop; the pass is checked against accuracies counted with numpy; skipping a pass is checked
against what torch's own DataLoader does to the random stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _training_helpers import digits
from masc_probe.data import TensorBatches
from masc_probe.data._batches import epoch_order
from masc_probe.models import load_model
from masc_probe.training import TrainConfig, make_optimizer, preset_config, train
from masc_probe.training._config import reaches
from masc_probe.training._passes import Tally, skip_pass, stop_pass


# ------------------------------------------------------------------------------------------ the rows' answers
def test_reaches_reads_exact_values_bounds_and_rows_older_than_the_key() -> None:
    assert reaches({"a": 0.95}, "a", 0.95) and not reaches({"a": 0.94}, "a", 0.95)
    assert reaches({}, "a", 0.99)  # a row from before the key existed counts as 1.0, as lr_at always read it
    row = {"epoch": 3, "a": None, "_train_accuracy_bounds": [0.2, 0.8]}
    assert reaches(row, "a", 0.2) and not reaches(row, "a", 0.81)
    with pytest.raises(ValueError, match="epoch 3"):
        reaches(row, "a", 0.5)


def test_thresholds_asked_are_exactly_the_rows_lr_at_reads() -> None:
    config = TrainConfig(lr_schedule="plateau", lr_min_delta=0.01, lr_decay_after=0.9, target_accuracy=0.999)
    # By hand: 2.0 and 1.9 improve (< 0.99 x best), 1.89 and 1.95 do not (best 1.9: 1.881), 1.5 does.
    losses = [2.0, 1.9, 1.89, 1.95, 1.5]
    asked = [config.accuracy_thresholds([{"loss": v} for v in losses[:i]], losses[i]) for i in range(len(losses))]
    assert asked == [([0.999], []), ([0.999], []), ([0.999], [0.9]), ([0.999], [0.9]), ([0.999], [])]
    assert TrainConfig(protocol="authors").accuracy_thresholds([], 1.0) == ([], [])
    assert TrainConfig(lr_schedule="constant").accuracy_thresholds([{"loss": 1.0}], 2.0) == ([1.0], [])
    # On random histories: a row whose accuracy answers nothing makes lr_at fail exactly when it was asked.
    rng = np.random.default_rng(0)
    for _ in range(40):
        rows = [{"epoch": i + 1, "loss": float(v), "train_accuracy_corrupted": float(a)}
                for i, (v, a) in enumerate(zip(2.0 * np.cumprod(rng.uniform(0.97, 1.02, 25)), rng.uniform(0.8, 1, 25)))]
        for i, row in enumerate(rows):
            vague = [*rows[:i], {**row, "train_accuracy_corrupted": None, "_train_accuracy_bounds": [0.0, 1.0]}]
            if config.accuracy_thresholds(rows[:i], row["loss"])[1]:
                with pytest.raises(ValueError):
                    config.lr_at(vague)
            else:
                assert config.lr_at(vague) == config.lr_at(rows[: i + 1])


# -------------------------------------------------------------------------------------------------- the pass
class _Counted(nn.Module):
    """Logits = the input (one-hot predictions), counting the samples it is asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return x


def _predictions(n: int, wrong: list[int]) -> tuple[TensorBatches, np.ndarray]:
    y = torch.arange(n) % 10
    pred = y.clone()
    pred[wrong] = (y[wrong] + 1) % 10
    return TensorBatches(F.one_hot(pred, 10).float(), y, batch_size=100), pred.numpy() == y.numpy()


# 1,000 samples in batches of 100; the pass may end before a batch once every answer is certain. Every 3rd wrong:
# after 100k samples, ceil(100k / 3) wrong. Every i % 10 < 7 wrong: 70 per batch.
THIRD, SEVENTY = list(range(0, 1000, 3)), [i for i in range(1000) if i % 10 < 7]


@pytest.mark.parametrize(("wrong", "stop", "other", "seen"), [
    ([150, 160], [0.999], [], 200),  # the 2nd error, in the 2nd batch: hi = 998/1000 < 0.999
    ([150], [0.999], [], 1000),  # 999/1000 reaches 0.999: the pass goes on to the end
    (THIRD, [0.999], [], 100),  # 34 wrong in the first batch
    (THIRD, [0.999], [0.9], 400),  # 100 wrong after 300 leaves hi = 0.9, not below; 134 after 400
    (THIRD, [0.999], [0.5], 800),  # "at least 0.5" is certain once 500 are right: 533 after 800
    (THIRD, [], [0.6], 900),  # 600 right after 900: lo = 0.6 (the whole pass: 0.666)
    (SEVENTY, [0.999], [0.5], 800),  # "below 0.5" is certain once 501 are wrong: 560 after 800
])
def test_stop_pass_ends_when_and_only_when_its_answers_are_certain(wrong: list[int], stop: list[float],
                                                                   other: list[float], seen: int) -> None:
    data, right = _predictions(1000, wrong)
    model = _Counted()
    tally = stop_pass(model, data, total=1000, stop=stop, other=other, device=torch.device("cpu"), gather=None)
    assert model.seen == tally.seen == seen
    assert tally.complete == (seen == 1000)
    truth = float(right.mean())  # the whole pass's accuracy, counted here
    lo, hi = tally.bounds()
    assert lo <= truth <= hi
    assert tally.right == int(right[:seen].sum())
    for threshold in stop + other:  # the rows' answers are the full pass's answers
        assert reaches({"a": None, "_train_accuracy_bounds": [lo, hi]}, "a", threshold) == (truth >= threshold)
    if tally.complete:
        assert tally.accuracies()[0] == truth


def test_stop_pass_without_a_question_runs_no_forward_and_without_a_length_runs_them_all() -> None:
    data, right = _predictions(300, [0, 1, 2])
    model = _Counted()
    none = stop_pass(model, data, total=300, stop=[], other=[], device=torch.device("cpu"), gather=None)
    assert model.seen == 0 and not none.complete and none.bounds() == (0.0, 1.0)
    whole = stop_pass(model, data, total=None, stop=[0.999], other=[], device=torch.device("cpu"), gather=None)
    assert model.seen == 300 and whole.complete and whole.accuracies()[0] == float(right.mean())


def test_bounds_are_the_same_float_division_as_the_complete_pass() -> None:
    tally = Tally(right=7, right_true=0, differ=0, seen=10, total=10, has_true=True, complete=True)
    assert tally.bounds() == (0.7, 0.7) == (tally.accuracies()[0],) * 2


@pytest.mark.parametrize("own_generator", [False, True])
def test_a_skipped_pass_leaves_the_random_stream_where_a_pass_would(own_generator: bool) -> None:
    generator = torch.Generator().manual_seed(5) if own_generator else None
    loader = DataLoader(TensorDataset(torch.zeros(10, 2)), batch_size=4, generator=generator)
    torch.manual_seed(1)
    list(loader)
    after_pass = (torch.get_rng_state(), generator.get_state() if generator else None)
    torch.manual_seed(1)
    if generator is not None:
        generator.manual_seed(5)
    skip_pass(loader)
    assert torch.equal(torch.get_rng_state(), after_pass[0])
    if generator is not None:
        assert torch.equal(generator.get_state(), after_pass[1])
    torch.manual_seed(1)
    skip_pass([{"image": torch.zeros(1, 2), "label": torch.zeros(1)}])  # not a DataLoader: draws nothing
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(1).get_state())


# ---------------------------------------------------------------------------------------------- whole runs
def _dropout_net() -> nn.Module:
    """The paper's CNN with dropout after its first dense layer (no parameter added: it saves and loads as "cnn").
    The CNN, not the MLP: 216k parameters against 5.3M, and a few epochs on 96 digits spend most of their time writing
    the weights (the resume state every epoch)."""
    torch.manual_seed(0)
    net = load_model("cnn", num_classes=10, input_size=[1, 8, 8])
    net.fc1.act = nn.Sequential(nn.ReLU(), nn.Dropout(0.5))
    return net


def test_the_evaluation_schedule_changes_no_weight_even_of_a_network_that_draws(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """Dropout draws from the global stream, and so does every DataLoader pass: skipped test passes must draw what
    the passes would have (the negative control, a skip that draws nothing, changes the weights)."""
    x, yc, y, xt, yt = digits(96)
    train_set = TensorDataset(torch.tensor(x), torch.tensor(yc), torch.tensor(y))
    test_set = TensorDataset(torch.tensor(xt[:64]), torch.tensor(yt[:64]))

    def weights(every: int, name: str) -> dict[str, torch.Tensor]:
        config = preset_config("cnn", "digits", preset="fast", num_classes=10, max_epochs=4, eval_every=every,
                               output_dir=str(tmp_path / name), batch_size=32, keep_checkpoints="final")
        net = _dropout_net()
        result = train(net, train_set, config=config, test_data=test_set)
        tests = [r["test_accuracy"] is not None for r in result.history]
        assert tests == ([True] * 4 if every == 1 else [False, False, True, True])
        return {k: v.clone() for k, v in net.state_dict().items()}

    every_epoch, every_third = weights(1, "a"), weights(3, "b")
    assert all(torch.equal(every_epoch[k], every_third[k]) for k in every_epoch)
    from masc_probe.training import _loop

    monkeypatch.setattr(_loop, "skip_pass", lambda loader: None)
    drawing_nothing = weights(3, "c")
    assert not all(torch.equal(every_epoch[k], drawing_nothing[k]) for k in every_epoch)


def _definition(config: TrainConfig, net: nn.Module, data: TensorBatches) -> tuple[list[dict], dict]:
    """The clean protocol written out: the seeded order, one step per batch, then the whole training set evaluated
    after every epoch; stop at the first epoch whose accuracy reaches the target. The rate of each epoch is
    lr_at of the rows so far (every row exact)."""
    optimizer = make_optimizer(net.parameters(), config.optimizer, lr=config.lr, momentum=config.momentum)
    rows: list[dict] = []
    for epoch in range(1, config.max_epochs + 1):
        lr = config.lr_at(rows)
        for group in optimizer.param_groups:
            group["lr"] = lr
        net.train()
        order, total = epoch_order(data.num_samples, config.seed, epoch), 0.0
        for start in range(0, data.num_samples, config.batch_size):
            pick = order[start:start + config.batch_size]
            losses = F.cross_entropy(net(data.x[pick]).float(), data.y[pick], reduction="none")
            optimizer.zero_grad(set_to_none=True)
            losses.mean().backward()
            optimizer.step()
            total += float(losses.detach().double().sum())
        net.eval()
        with torch.no_grad():
            acc = float((net(data.x).argmax(1) == data.y).double().mean())
        rows.append({"epoch": epoch, "loss": total / data.num_samples, "lr": lr, "train_accuracy_corrupted": acc})
        if acc >= config.target_accuracy:
            break
    return rows, {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.slow
def test_a_run_stops_where_the_definition_stops_with_the_same_weights(tmp_path: Path) -> None:
    """The paper's MLP on 200 digits at p = 0.8 (Adam, batch 128, target 1.0), with a plateau rule that asks its
    question on most epochs (an improvement is a 20% lower loss; gate 0.5, patience 2, floor a quarter of the rate),
    so that a wrong answer would move the rate and the weights."""
    x, yc, y, _, _ = digits(200)
    data = TensorBatches(torch.tensor(x), torch.tensor(yc), torch.tensor(y), batch_size=128)
    config = preset_config("mlp", "digits", preset="fast", num_classes=10, max_epochs=120, lr=1e-3, lr_floor=0.25,
                           lr_min_delta=0.2, lr_decay_after=0.5, lr_patience=2, output_dir=str(tmp_path / "run"),
                           keep_checkpoints="final")
    torch.manual_seed(0)
    net = load_model("mlp", num_classes=10, input_size=[1, 8, 8])
    start = {k: v.clone() for k, v in net.state_dict().items()}
    result = train(net, data, config=config)
    net.load_state_dict(start)
    rows, weights = _definition(config, net, data.with_batches(128))
    assert result.stopped == "target" and rows[-1]["train_accuracy_corrupted"] >= config.target_accuracy
    assert len(result.history) == len(rows)  # the same stop epoch
    trained = load_state(tmp_path / "run")
    assert all(torch.equal(trained[k], weights[k]) for k in weights)  # the same final weights, bit for bit
    assert len({r["lr"] for r in rows}) > 2, "the plateau rule never decayed: the test would not see a wrong answer"
    asked = {i for i, r in enumerate(rows) if config.accuracy_thresholds(rows[:i], r["loss"])[1]}
    answers = {rows[i]["train_accuracy_corrupted"] >= 0.5 for i in asked}
    assert answers == {True, False}, "the gate was asked, and answered both ways"
    partial = {i for i, r in enumerate(result.history) if r["train_accuracy_corrupted"] is None}
    assert len(partial) > len(rows) // 2  # most epochs paid only part of the pass...
    assert {rows[i]["train_accuracy_corrupted"] >= 0.5 for i in partial & asked} == {True, False}  # ...gate or not
    for ours, theirs in zip(result.history, rows, strict=True):
        assert ours["lr"] == theirs["lr"]
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-12)
        if ours["train_accuracy_corrupted"] is not None:
            assert ours["train_accuracy_corrupted"] == theirs["train_accuracy_corrupted"]


def load_state(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "model.safetensors")


def test_a_run_closed_after_an_epoch_without_evaluation_gets_its_last_row_completed(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """A killed run rerun with a lower max_epochs (gpu_check's close step) ends at an epoch whose pass ended early:
    its row is completed from the resume state's weights, and equals the saved model's accuracies counted here."""
    from masc_probe.training import _loop

    x, yc, y, xt, yt = digits(96)
    data = TensorBatches(torch.tensor(x), torch.tensor(yc), torch.tensor(y), batch_size=32)
    test = TensorBatches(torch.tensor(xt), torch.tensor(yt), batch_size=64)
    config = preset_config("cnn", "digits", preset="fast", num_classes=10, max_epochs=6, eval_every=100,
                           output_dir=str(tmp_path / "run"), batch_size=32, keep_checkpoints="final")
    write, calls = _loop.write_metrics, []

    def killed_after_two(run_dir: Path, history: list) -> None:
        write(run_dir, history)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(_loop, "write_metrics", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(_dropout_net(), data, config=config, test_data=test)
    monkeypatch.setattr(_loop, "write_metrics", write)
    result = train(_dropout_net(), data, config=config.replace(max_epochs=2), test_data=test)
    assert result.stopped == "max_epochs" and [r["epoch"] for r in result.history] == [1, 2]
    assert result.history[0]["train_accuracy_corrupted"] is None  # epoch 1 stays as it ran
    last = result.history[-1]
    net = load_model(tmp_path / "run").eval()
    with torch.no_grad():
        given = float((net(data.x).argmax(1) == data.y).double().mean())
        true = float((net(data.x).argmax(1) == data.y_true).double().mean())
        on_test = float((net(test.x).argmax(1) == test.y).double().mean())
    assert (last["train_accuracy_corrupted"], last["train_accuracy_true"], last["test_accuracy"]) == (given, true,
                                                                                                     on_test)
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and '"train_accuracy_corrupted": null' not in rows[-1]


@pytest.mark.slow
def test_compile_trains_the_same_network_and_records_it(tmp_path: Path) -> None:
    """--compile: torch.compile'd forward passes (inductor compiles C++ here: slow), the module itself saved under
    its own names; a few float32 roundings apart from the eager run, and recorded as a setting of the run."""
    import json

    x, yc, y, _, _ = digits(96)
    data = TensorBatches(torch.tensor(x), torch.tensor(yc), torch.tensor(y), batch_size=32)
    nets = {}
    for compiled in (False, True):
        config = preset_config("mlp", "digits", preset="fast", num_classes=10, max_epochs=2, compile=compiled,
                               output_dir=str(tmp_path / str(compiled)), batch_size=32, keep_checkpoints="final")
        torch.manual_seed(0)
        train(load_model("mlp", num_classes=10, input_size=[1, 8, 8]), data, config=config)
        nets[compiled] = load_state(tmp_path / str(compiled))
        saved = json.loads((tmp_path / str(compiled) / "config.json").read_text())["masc_probe"]["training"]
        assert saved["compile"] is compiled
    assert nets[True].keys() == nets[False].keys()
    assert all(torch.allclose(nets[True][k], nets[False][k], atol=1e-5) for k in nets[True])


def test_two_processes_end_the_stop_pass_together_and_log_what_one_process_logs(tmp_path: Path,
                                                                                processes) -> None:
    """torchrun, two CPU processes: epochs 1 and 2 end their stop pass after a batch (on the gathered counts, so
    both processes leave at the same batch and no collective waits); the rows and weights are one process's."""
    import json
    import os
    import sys

    from safetensors.torch import load_file

    from _training_helpers import tuple_data

    here = Path(__file__).resolve().parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(here / "_train_script.py"), str(tmp_path / "two"), "3", "256", "paper", "64"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(here), "OMP_NUM_THREADS": "1"}
    done = processes.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = preset_config("mlp", "digits", num_classes=10, max_epochs=3, batch_size=64, cpu=True, progress=False)
    one = train("mlp", tuple_data(256), config=config.replace(output_dir=str(tmp_path / "one")))
    rows = [[json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
            for path in (tmp_path / "two", one.run_dir)]
    assert [r["train_accuracy_corrupted"] is None for r in rows[0]] == [True, True, False]
    for two, single in zip(*rows, strict=True):
        assert two["train_accuracy_corrupted"] == single["train_accuracy_corrupted"]
        assert abs(two["loss"] - single["loss"]) < 1e-6
    two_w, one_w = load_file(tmp_path / "two" / "model.safetensors"), load_file(one.run_dir / "model.safetensors")
    assert max(float((two_w[k] - one_w[k]).abs().max()) for k in one_w) < 1e-6


def test_a_channels_last_network_saves_resumes_and_reloads(tmp_path: Path, monkeypatch) -> None:
    """What a CUDA device gets for a convolutional network (channels_last), forced here on the CPU: the run's files
    are written from those strides and read back, a rerun resumes from them, and the weights stay within float32
    rounding of a run in the default layout."""
    from masc_probe.training import _loop

    x, yc, y, _, _ = digits(64)
    data = TensorBatches(torch.tensor(x), torch.tensor(yc), torch.tensor(y), batch_size=32)

    def run(name: str, epochs: int) -> dict[str, torch.Tensor]:
        config = preset_config("cnn", "digits", preset="fast", num_classes=10, max_epochs=epochs, batch_size=32,
                               output_dir=str(tmp_path / name), keep_checkpoints="final")
        torch.manual_seed(0)
        train(load_model("cnn", num_classes=10, input_size=[1, 8, 8]), data, config=config)
        return load_state(tmp_path / name)

    plain = run("plain", 2)
    monkeypatch.setattr(_loop, "_memory_format", lambda model, device: torch.channels_last)
    run("last", 1)
    resumed = run("last", 2)  # continues from epoch 1's resume state
    assert resumed.keys() == plain.keys()
    assert all(torch.allclose(resumed[k], plain[k], atol=1e-5) for k in plain)
    reloaded = load_model(tmp_path / "last").state_dict()
    assert all(torch.equal(reloaded[k], resumed[k]) for k in resumed)
