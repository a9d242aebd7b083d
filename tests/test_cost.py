"""The cost before the wait (masc_probe.training._cost): the pace of the first timed steps and epochs, the bound
until max_epochs, and on a CPU with a GPU-sized job one line on what to do instead; logged, TTY or not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from masc_probe.training import _cost
from masc_probe.training._cost import CostClock, duration


class FakeTime:
    """perf_counter that advances only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(_cost.time, "perf_counter", fake)
    return fake


@pytest.mark.parametrize(("seconds", "text"), [(4.25, "4.2 s"), (59, "59 s"), (200, "3 min 20 s"),
                                               (3600, "1 h"), (7500, "2 h 5 min"), (93784, "1 d 2 h")])
def test_durations_read_in_their_two_largest_units(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_a_cpu_job_sized_for_a_gpu_is_told_after_its_first_timed_steps(clock_time: FakeTime,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    clock = CostClock(steps_per_epoch=100, first_epoch=1, max_epochs=500, device=torch.device("cpu"),
                      n_train=50_000)
    clock.start_epoch()
    with caplog.at_level(logging.INFO, logger="masc_probe"):
        for _ in range(11):  # the first step is not timed; then 10 steps of 2 s each
            clock_time.now += 2.0
            clock.step()
    # 2 s/step x 100 steps = 200 s per epoch of steps; 500 epochs: 100,000 s = 1 d 3 h 46 min
    assert clock.estimates["seconds_per_step"] == pytest.approx(2.0)
    assert "2 s per step over 10 timed steps: 3 min 20 s per epoch of 100 steps" in caplog.text
    assert "up to 500 epochs: 1 d 3 h at most" in caplog.text
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "--device cuda" in warning[0].getMessage()
    assert "--max-train-samples 5000" in warning[0].getMessage() and "1 d 3 h" in warning[0].getMessage()


def test_the_epoch_bound_is_the_measured_epoch_times_the_epochs_left(clock_time: FakeTime,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    clock = CostClock(steps_per_epoch=3, first_epoch=4, max_epochs=25, device=torch.device("cpu"), n_train=300)
    with caplog.at_level(logging.INFO, logger="masc_probe"):
        clock.start_epoch()
        clock_time.now += 12.0  # epoch 4 (resumed after 3) takes 12 s: 21 epochs left, 252 s
        clock.end_epoch(4)
        for epoch in range(5, 9):
            clock_time.now += 8.0  # epochs 4-8: 12 + 4 x 8 = 44 s, 8.8 s each; 17 left: 149.6 s
            clock.end_epoch(epoch)
    assert clock.estimates["bound_seconds"] == pytest.approx(12.0 * 22)
    assert "epoch 4 took 12 s: memorizing takes at most 4 min 12 s more (21 epochs to max_epochs=25" in caplog.text
    assert clock.estimates["seconds_per_epoch_5"] == pytest.approx(8.8)
    assert "epochs 4-8 took 8.8 s each on average: memorizing takes at most 2 min 30 s more (17 epochs" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # 264 s: not a GPU-sized job


def test_training_says_its_cost_in_the_log_without_a_tty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from masc_probe.pipeline import train_model

    with caplog.at_level(logging.INFO, logger="masc_probe"):
        train_model(dataset="digits", max_epochs=2, output_dir=tmp_path / "run", progress=False)
    assert "s per step over 10 timed steps" in caplog.text and "per epoch of 12 steps" in caplog.text
    assert "epoch 1 took" in caplog.text and "(1 epoch to max_epochs=2" in caplog.text
