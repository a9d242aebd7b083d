"""Tests of masc_probe.training: memorization on real data, resume after a kill, checkpoints, presets, errors."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _training_helpers import RATE, MemorizedRun, tuple_data
from masc_probe.errors import InputError, UnknownNameError
from masc_probe.models import load_model
from masc_probe.training import TrainConfig, paper_normalization, preset_config, train

HERE = Path(__file__).resolve().parent


def _accuracies(model: torch.nn.Module, data: object) -> tuple[float, float]:
    """Accuracy of *model* against the given and the true labels of a DictDigits, computed here from scratch."""
    model.eval()
    with torch.no_grad():
        pred = model(data.x).argmax(1)
    return float((pred == data.label).double().mean()), float((pred == data.true_label).double().mean())


def test_fast_preset_memorizes_corrupted_digits(memorizer: MemorizedRun) -> None:
    run = memorizer
    history = run.result.history
    assert run.result.stopped == "target"
    assert history[-1]["train_accuracy_corrupted"] >= 1.0
    # The final model, reloaded from the run folder alone, fits the corrupted labels and has the logged numbers.
    model = load_model(run.run_dir)
    given, true = _accuracies(model, run.train)
    assert given == 1.0
    assert true == pytest.approx(history[-1]["train_accuracy_true"], abs=1e-12)
    assert _accuracies(model, run.test)[0] == pytest.approx(history[-1]["test_accuracy"], abs=1e-12)
    # Memorizing corrupted labels: the true labels agree only where corruption left them (or by chance).
    kept = float((run.train.label == run.train.true_label).double().mean())
    assert true < kept + 0.2


def test_helper_digits_are_sklearns() -> None:
    from sklearn.datasets import load_digits

    from _training_helpers import _load_digits

    x, y = load_digits(return_X_y=True)
    mine = _load_digits()
    assert np.array_equal(mine[0], x) and np.array_equal(mine[1], y)


def test_run_folder_holds_metrics_checkpoints_and_provenance(memorizer: MemorizedRun) -> None:
    run = memorizer
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows == run.result.history
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert set(rows[0]) == {"epoch", "loss", "train_accuracy_corrupted", "train_accuracy_true", "test_accuracy", "lr",
                            "train_accuracy_running"}
    last = rows[-1]["epoch"]
    kept = sorted(int(p.name.split("-")[1]) for p in (run.run_dir / "checkpoints").iterdir())
    expected = sorted({e for e in range(0, 21, 2)} | {e for e in range(25, last + 1, 5)} | {last})
    assert kept == expected
    masc = json.loads((run.run_dir / "config.json").read_text())["masc_probe"]
    realized = float((run.train.label != run.train.true_label).double().mean())
    assert masc["corruption"] == {"mode": "random", "rate": RATE, "seed": 0, "realized_rate": realized}
    assert (masc["model"], masc["num_classes"], masc["input_size"], masc["epoch"]) == ("mlp", 10, [1, 8, 8], last)
    assert masc["training"]["optimizer"] == "adam" and masc["training"]["stopped"] == "target"
    # A kept checkpoint is a loadable model with its own epoch; epoch 0 is the untrained network.
    first = json.loads((run.run_dir / "checkpoints" / "epoch-0002" / "config.json").read_text())["masc_probe"]
    assert first["epoch"] == 2 and first["metrics"] == rows[1]
    final_ckpt = load_file(run.run_dir / "checkpoints" / f"epoch-{last:04d}" / "model.safetensors")
    final = load_file(run.run_dir / "model.safetensors")
    assert all(torch.equal(final[k], final_ckpt[k]) for k in final)
    # Memorized: the resume state keeps only its history and config (no weights, no optimizer state) ...
    assert os.listdir(run.run_dir / "resume") == ["trainer.json"]
    # ... and rerunning the finished run changes nothing and trains no further epoch.
    config = TrainConfig.from_dict(masc_training_config(run.run_dir))
    again = train("mlp", run.train, config=config)
    assert again.history == run.result.history
    after = load_file(run.run_dir / "model.safetensors")
    assert after.keys() == final.keys() and all(torch.equal(after[k], final[k]) for k in final)


def masc_training_config(run_dir: Path) -> dict:
    """The TrainConfig the run was made with, from its resume state."""
    return json.loads((run_dir / "resume" / "trainer.json").read_text())["config"]


def _script(out: Path, max_epochs: int, n: int, *pause_at_step: int) -> list[str]:
    return [sys.executable, str(HERE / "_train_script.py"), str(out), str(max_epochs), str(n), "fast", "32",
            *map(str, pause_at_step)]


def test_resume_after_kill_reproduces_an_uninterrupted_run(tmp_path: Path, processes: ModuleType) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    reference = processes.Popen(_script(tmp_path / "ref", 8, 128), env=env, stdout=processes.PIPE,
                                stderr=processes.PIPE, text=True)  # fmt: skip
    # 128 samples in batches of 32: 4 steps an epoch. The run waits after step 14, two batches into epoch 4, to be
    # killed there: the point of the kill is the same on any machine, never a race against the polling.
    killed = processes.Popen(_script(tmp_path / "run", 8, 128, 14), env=env, stdout=processes.PIPE,
                             stderr=processes.PIPE, text=True)  # fmt: skip
    assert killed.stdout.readline() == "paused at step 14\n", killed.communicate()[1][-2000:]
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    # A kill between the two renames of a state rewrite leaves the newest state in resume.tmp/
    # (test_a_kill_inside_a_state_rewrite_keeps_the_newest_complete_state); here the state of epoch 3 is complete.
    states = [tmp_path / "run" / name / "trainer.json" for name in ("resume", "resume.tmp", "resume.old")]
    assert max(json.loads(p.read_text())["epoch"] for p in states if p.exists()) == 3
    rerun = processes.run(_script(tmp_path / "run", 8, 128), env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming {tmp_path / 'run'} after epoch 3" in rerun.stderr
    out, err = reference.communicate(timeout=180)
    assert reference.returncode == 0, err[-2000:]
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [(p / "metrics.jsonl").read_text() for p in (tmp_path / "ref", tmp_path / "run")]
    assert metrics[0] == metrics[1] and len(metrics[0].splitlines()) >= 4
    assert sorted(os.listdir(tmp_path / "ref" / "checkpoints")) == sorted(os.listdir(tmp_path / "run" / "checkpoints"))


def test_a_kill_inside_a_state_rewrite_keeps_the_newest_complete_state(tmp_path: Path) -> None:
    from masc_probe.training import _settle_resume

    for name, epoch in (("resume.old", 2), ("resume.tmp", 4)):  # killed after the first of the two renames
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer.json").write_text(json.dumps({"epoch": epoch}))
    _settle_resume(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["resume"]
    assert json.loads((tmp_path / "resume" / "trainer.json").read_text())["epoch"] == 4
    (tmp_path / "resume.tmp").mkdir()  # killed while writing the next state: incomplete, no trainer.json
    _settle_resume(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["resume"]
    assert json.loads((tmp_path / "resume" / "trainer.json").read_text())["epoch"] == 4


def test_resume_refuses_a_folder_of_another_run(tmp_path: Path) -> None:
    data = tuple_data(64)
    config = preset_config("mlp", "digits", preset="fast", num_classes=10, output_dir=str(tmp_path), max_epochs=1,
                           batch_size=32, progress=False)  # fmt: skip
    train("mlp", data, config=config)
    with pytest.raises(InputError, match="lr=0.0003"):  # the saved run's: the fast preset's Adam rate
        train("mlp", data, config=config.replace(lr=0.01))
    fresh = train("mlp", data, config=config.replace(lr=0.01, resume=False))
    assert fresh.epochs == 1


def test_bf16_mixed_precision_trains(tmp_path: Path) -> None:
    data = tuple_data(64)
    config = preset_config("mlp", "digits", preset="fast", num_classes=10, max_epochs=1, batch_size=16,
                           progress=False, output_dir=str(tmp_path), mixed_precision="bf16")  # fmt: skip
    result = train("mlp", data, config=config)
    assert np.isfinite(result.history[-1]["loss"])
    saved = load_file(tmp_path / "model.safetensors")
    assert saved["head.weight"].dtype == torch.float32  # autocast computes in bf16; the weights stay float32
    init = load_file(tmp_path / "checkpoints" / "epoch-0000" / "model.safetensors")
    assert not torch.equal(saved["head.weight"], init["head.weight"])


def test_checkpoint_policy_is_the_follow_up_papers() -> None:
    config = TrainConfig()
    assert [e for e in range(61) if config.keeps_checkpoint(e)] == [*range(0, 21, 2), *range(25, 61, 5)]
    sparse = TrainConfig(checkpoint_dense_until=-1, checkpoint_every=0)
    assert not any(sparse.keeps_checkpoint(e) for e in range(50))


def test_presets() -> None:
    assert preset_config("mlp", "mnist").to_dict() == {
        **TrainConfig().to_dict(), "model": "mlp", "dataset": "mnist", "optimizer": "sgd", "lr": 1e-3,
        "momentum": 0.9, "batch_size": 128, "target_accuracy": 0.999}  # fmt: skip
    assert (preset_config("cnn", "cifar10").batch_size, preset_config("cnn", "mnist").batch_size) == (32, 128)
    # The authors' batch follows the dataset, not the model: 32 on CIFAR-10 for the MLP too.
    assert (preset_config("mlp", "cifar10").batch_size, preset_config("mlp", "fashion_mnist").batch_size) == (32, 128)
    assert preset_config("cnn", "fashion_mnist").target_accuracy == 0.991
    assert preset_config("alexnet", "cifar100").lr == 1e-4
    # AlexNet on Tiny ImageNet: the authors' batch of 500 and unnormalized pixels (ToTensor only).
    assert (preset_config("alexnet", "zh-plus/tiny-imagenet").batch_size, preset_config("alexnet").batch_size) == \
        (500, 128)
    assert paper_normalization("alexnet", "../shared/data/tiny-imagenet/") == ((0.0,), (1.0,))
    assert paper_normalization("alexnet", "cifar100") is None and paper_normalization("mlp", "tiny-imagenet") is None
    assert preset_config("resnet18-cifar", "cifar10").target_accuracy == 1.0
    fast = preset_config("timm/resnet18", "digits")
    assert (fast.optimizer, fast.lr, fast.batch_size, fast.target_accuracy) == ("adam", 3e-4, 128, 1.0)
    assert fast.lr_schedule == "plateau"


def test_bad_settings_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="max_epochs"):
        TrainConfig(max_epochs=0)
    with pytest.raises(UnknownNameError, match="adam"):
        TrainConfig(optimizer="adamw")
    with pytest.raises(UnknownNameError, match="batch_size"):
        TrainConfig.from_dict({"batch_sise": 3})
    with pytest.raises(InputError, match="batch_size"):
        TrainConfig(batch_size=0)
    data = tuple_data(40)
    with pytest.raises(InputError, match=r"batch_size=64 is larger than the training data \(40 samples\)") as info:
        train("mlp", data, config=TrainConfig(batch_size=64, num_classes=10, output_dir=str(tmp_path)))
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="num_classes"):
        train("mlp", data, config=TrainConfig(batch_size=8, output_dir=str(tmp_path / "x")))


def test_plateau_schedule_follows_the_loss_history() -> None:
    config = TrainConfig(lr=1e-3, lr_schedule="plateau", lr_patience=3, lr_decay=0.5, lr_min_delta=0.01,
                         lr_floor=0.1)  # fmt: skip
    rows = lambda losses: [{"loss": v} for v in losses]  # noqa: E731
    assert config.lr_at([]) == 1e-3
    # A loss that keeps falling by more than 1% never decays the rate.
    assert config.lr_at(rows([2.0 * 0.9**i for i in range(40)])) == 1e-3
    # Flat after the first epoch: a halving every 3 epochs (epochs 4, 7, 10), then the floor (1e-4) holds.
    assert config.lr_at(rows([1.0] * 4)) == 5e-4
    assert config.lr_at(rows([1.0] * 7)) == 2.5e-4
    assert config.lr_at(rows([1.0] * 10)) == 1.25e-4
    assert config.lr_at(rows([1.0] * 100)) == pytest.approx(1e-4)
    # A spike does not count as a plateau unless it lasts: below-best-by-1% epochs reset the count.
    assert config.lr_at(rows([1.0, 1.5, 1.4, 0.9, 2.0, 0.8])) == 1e-3
    # Less than 1% below the best is no improvement.
    assert config.lr_at(rows([1.0, 0.995, 0.992, 0.991])) == 5e-4
    assert TrainConfig(lr=1e-3).lr_at(rows([1.0] * 50)) == 1e-3  # constant
    # No plateau counts before memorizing starts (train accuracy below lr_decay_after), however flat the loss.
    stall = [{"loss": 2.2 - 0.001 * i, "train_accuracy_corrupted": 0.26} for i in range(60)]
    assert config.lr_at(stall) == 1e-3
    late = stall + [{"loss": 0.1, "train_accuracy_corrupted": 0.95}] * 4
    assert config.lr_at(late) == 5e-4  # 0.1 is a new best, then 3 flat epochs at 0.95
    with pytest.raises(InputError, match="lr_decay_after"):
        TrainConfig(lr_decay_after=1.5)
    with pytest.raises(InputError, match="lr_floor"):
        TrainConfig(lr_floor=0)
    with pytest.raises(UnknownNameError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")


def test_tensor_batches_train_exactly_like_the_dataset(tmp_path: Path) -> None:
    from _training_helpers import DictDigits, digits

    from masc_probe.data import TensorBatches

    x, y, y_true, _, _ = digits(n_train=200)
    data = DictDigits(x, y, y_true)
    weights = []
    # The paper's CNN (216k parameters; the MLP's 5.3M made writing the weights most of the time): the two sources
    # must give the same weights whatever the network.
    for name, source in (("dataset", data), ("tensors", TensorBatches.from_data(data))):
        config = preset_config("cnn", "digits", preset="fast", num_classes=10, max_epochs=2, batch_size=32,
                               output_dir=str(tmp_path / name), progress=False)  # fmt: skip
        result = train("cnn", source, config=config)
        weights.append((load_model(result.run_dir).state_dict(), result.history))
    (w_a, h_a), (w_b, h_b) = weights
    assert h_a == h_b
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)
    # The same epoch order as EpochSampler, batch by batch; a different seed gives another order.
    tb = TensorBatches.from_data(data).with_batches(50, shuffle_seed=3)
    tb.set_epoch(2)
    from masc_probe.training import EpochSampler

    sampler = EpochSampler(200, 3)
    sampler.set_epoch(2)
    assert torch.cat([b["index"] for b in tb]).tolist() == list(sampler)
    with pytest.raises(InputError, match="expected 200 labels"):
        TensorBatches(torch.zeros(200, 1, 8, 8), torch.zeros(199, dtype=torch.int64))


def test_a_config_naming_another_paper_architecture_is_refused_before_training(tmp_path) -> None:
    """config.json records config.model: a CNN trained under config.model='mlp' made a folder that did not reload."""
    from masc_probe.data._batches import TensorBatches

    X = torch.rand(32, 1, 28, 28)
    data = TensorBatches(X, torch.arange(32) % 10, batch_size=16)
    config = preset_config("mlp", "mnist", preset="fast", num_classes=10, output_dir=str(tmp_path / "run"),
                           max_epochs=1, batch_size=16, progress=False, cpu=True)
    with pytest.raises(InputError, match="config.model is 'mlp' but the model given is 'cnn'"):
        train(load_model("cnn", num_classes=10, in_chans=1, input_size=28), data, config=config)
    assert not (tmp_path / "run" / "model.safetensors").exists()
