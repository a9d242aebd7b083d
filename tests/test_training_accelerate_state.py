"""training.train and Accelerate's process-wide state: an Accelerator the user made survives a training run, and a
run that made the state itself leaves none behind.

Accelerate keeps one state per process (``AcceleratorState``, a shared dict); a second ``Accelerator`` joins it, and
may not change its mixed precision. These tests run one-epoch trainings of the paper's MLP on 64 digits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState, is_initialized
from torch.utils.data import Dataset

from _training_helpers import tuple_data
from masc_probe.errors import InputError
from masc_probe.training import _accelerate
from masc_probe.training import preset_config, train


def _fresh() -> None:
    # The tests' own clean slate (private API, test code only): the library never resets a state it did not make.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def clean_state() -> Iterator[None]:
    _fresh()
    yield
    _fresh()


def _train(tmp_path: Path, name: str, **overrides: object) -> None:
    config = preset_config("mlp", "digits", preset="fast", num_classes=10, output_dir=str(tmp_path / name),
                           max_epochs=1, batch_size=32, cpu=True, progress=False, **overrides)
    train("mlp", tuple_data(64), config=config)


def test_a_run_that_made_the_state_leaves_none_behind(tmp_path: Path) -> None:
    _train(tmp_path, "a")
    assert not is_initialized()
    # So the user (or a second run) may choose other settings afterwards.
    user = Accelerator(cpu=True, mixed_precision="bf16")
    assert user.mixed_precision == "bf16"


def test_the_users_accelerator_is_used_and_left_as_it_was(tmp_path: Path) -> None:
    user = Accelerator(cpu=True)
    device = user.device
    _train(tmp_path, "b")
    assert is_initialized() and user.state.initialized  # not cleared under the user's feet
    assert user.device is device and user.mixed_precision == "no"  # the same state, not one rebuilt alike
    assert user.gather_for_metrics is not None and user.num_processes == 1


def test_settings_the_users_accelerator_cannot_take_are_one_line_and_change_nothing(tmp_path: Path) -> None:
    user = Accelerator(cpu=True, mixed_precision="bf16")
    with pytest.raises(InputError) as err:
        _train(tmp_path, "c")  # mixed_precision "no"
    text = str(err.value)
    assert "bf16" in text and "mixed_precision" in text and "\n" not in text, text
    assert user.mixed_precision == "bf16" and user.state.initialized
    assert not (tmp_path / "c").exists()  # refused before the run folder was touched


class _FailsLater(Dataset):
    """The digits rows, until *calls* reads have been made; then every read raises (mid-training, not at setup)."""

    def __init__(self, rows: Dataset, calls: int) -> None:
        self.rows, self.left = rows, calls

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> object:
        self.left -= 1
        if self.left < 0:
            raise RuntimeError("disk gone mid-run")
        return self.rows[i]


def test_a_run_that_fails_mid_training_leaves_no_state_behind(tmp_path: Path) -> None:
    # 64 rows: the first batch read before training (32), the realized noise rate (64), epoch 1's steps (64) and its
    # accuracy pass (at most 64) take at most 224 reads, so the failure comes in epoch 2 or later (asserted below);
    # labels 80% corrupted are not all learned in so few epochs.
    config = preset_config("mlp", "digits", preset="fast", num_classes=10, output_dir=str(tmp_path / "d"),
                           max_epochs=20, target_accuracy=1.0, batch_size=32, cpu=True, progress=False)
    with pytest.raises(RuntimeError, match="disk gone mid-run"):  # the run's own error, not one from the cleanup
        train("mlp", _FailsLater(tuple_data(64), calls=256), config=config)
    assert (tmp_path / "d" / "resume").is_dir()  # epoch 1 was done: the failure came inside the training loop
    assert not is_initialized() and not PartialState._shared_state and _accelerate._MADE is None
    user = Accelerator(cpu=True, mixed_precision="bf16")  # so other settings may be chosen right after
    assert user.mixed_precision == "bf16"
