"""What a training run will cost, said before the wait: the pace of its first timed steps and of its first epoch.

After the first few timed steps (the very first step, which pays for lazy setup, is not timed) training logs the
seconds per step and what a full epoch of steps takes at that pace; after its first whole epoch (the steps and the
passes over the data that follow them), the seconds per epoch and the time until ``max_epochs`` — the most the run
can take, since it stops as soon as it memorizes; after five epochs, the same from their mean. On a CPU, a run whose bound exceeds an hour gets one more line on
what to do instead: a GPU (``--device cuda``) or a subset first (``--max-train-samples``). The lines go through the
``masc_probe`` logger (the CLI prints them, TTY or not); :attr:`CostClock.estimates` keeps the numbers.

>>> duration(93784)
'1 d 2 h'
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

logger = logging.getLogger("masc_probe.training")

__all__ = ["CostClock", "duration"]

TIMED_STEPS = 10  # steps timed (after the first) before the pace is said, or fewer once TIMED_SECONDS have passed
TIMED_SECONDS = 30.0
REFINE_AFTER = 5  # epochs after which the pace is said again, from their mean
CPU_ADVICE_SECONDS = 3600.0  # on a CPU, a bound past this is a job for a GPU (or a subset first)


def duration(seconds: float) -> str:
    """A duration in its two largest units: ``'45 s'``, ``'3 min 20 s'``, ``'2 h 5 min'``, ``'1 d 2 h'``."""
    s = int(round(seconds))
    if s < 60:
        return f"{max(seconds, 0):.1f} s" if seconds < 10 else f"{s} s"
    units = [("d", 86400), ("h", 3600), ("min", 60), ("s", 1)]
    parts = []
    for name, size in units:
        if s >= size or parts:
            parts.append(f"{s // size} {name}")
            s %= size
        if len(parts) == 2:
            break
    return " ".join(p for p in parts if not p.startswith("0 ")) or parts[0]


class CostClock:
    """Times a run's steps and epochs and logs the cost once (see the module docstring).

    Args:
        steps_per_epoch: Optimizer steps in one epoch (None when the loader cannot say).
        first_epoch: The epoch the clock starts at (after a resume, the next one).
        max_epochs: The run's last possible epoch.
        device: Where the steps run (a CUDA device is synchronized before a reading).
        n_train: Training samples (for the advice line).
        enabled: Log at all (the main process only).
    """

    def __init__(self, *, steps_per_epoch: int | None, first_epoch: int, max_epochs: int, device: torch.device,
                 n_train: int | None, enabled: bool = True) -> None:
        self.steps_per_epoch, self.first_epoch, self.max_epochs = steps_per_epoch, first_epoch, max_epochs
        self.device, self.n_train, self.enabled = device, n_train, enabled
        self.estimates: dict[str, Any] = {}
        self._steps = 0
        self._first_step_done: float | None = None
        self._epoch_start: float | None = None
        self._said_steps = False

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start_epoch(self) -> None:
        if self._epoch_start is None:
            self._epoch_start = self._now()

    def step(self) -> None:
        """After each optimizer step of the first epoch: time the steps, and say the pace once it is known."""
        if self._said_steps or not self.enabled:
            return
        self._steps += 1
        if self._steps == 1:
            self._first_step_done = self._now()
            return
        timed = self._steps - 1
        elapsed = time.perf_counter() - (self._first_step_done or 0.0)
        if timed < TIMED_STEPS and elapsed < TIMED_SECONDS:
            return
        elapsed = self._now() - (self._first_step_done or 0.0)
        self._said_steps = True
        per_step = elapsed / timed
        self.estimates["seconds_per_step"] = per_step
        if self.steps_per_epoch:
            per_epoch = per_step * self.steps_per_epoch
            self.estimates["seconds_per_epoch_of_steps"] = per_epoch
            logger.info("pace: %.3g s per step over %d timed steps: %s per epoch of %d steps (before the passes "
                        "over the data); up to %d epochs: %s at most", per_step, timed, duration(per_epoch),
                        self.steps_per_epoch, self._epochs_left(), duration(per_epoch * self._epochs_left()))
            self._advise(per_epoch * self._epochs_left())

    def end_epoch(self, epoch: int) -> None:
        """After the first epoch's steps and passes: the seconds per epoch and the bound until ``max_epochs``; after
        the fifth, the same from the mean of five (epochs differ: the stop rule's pass grows as the accuracy rises,
        and every ``eval_every``-th epoch passes over all the data)."""
        if not self.enabled or self._epoch_start is None or epoch - self.first_epoch + 1 not in (1, REFINE_AFTER):
            return
        done = epoch - self.first_epoch + 1
        per_epoch = (self._now() - self._epoch_start) / done
        left = max(self.max_epochs - epoch, 0)
        key = "" if done == 1 else f"_{done}"
        self.estimates.update({f"seconds_per_epoch{key}": per_epoch, f"bound_seconds{key}": per_epoch * (done + left)})
        what = f"epoch {epoch} took {duration(per_epoch)}" if done == 1 else (
            f"epochs {self.first_epoch}-{epoch} took {duration(per_epoch)} each on average")
        logger.info("%s: memorizing takes at most %s more (%d epoch%s to max_epochs=%d at this pace; the run stops "
                    "once it memorizes)", what, duration(per_epoch * left), left, "" if left == 1 else "s",
                    self.max_epochs)
        if not self._said_steps:
            self._advise(per_epoch * (done + left))

    def _epochs_left(self) -> int:
        return max(self.max_epochs - self.first_epoch + 1, 1)

    def _advise(self, bound: float) -> None:
        if self.device.type != "cpu" or bound <= CPU_ADVICE_SECONDS or self.estimates.get("advised"):
            return
        self.estimates["advised"] = True
        gpu = ("a GPU is visible here: --device cuda" if torch.cuda.is_available()
               else "on a machine with a GPU: --device cuda")
        subset = min(5000, (self.n_train or 10000) // 10) or 1
        logger.warning("on the CPU this run may take up to %s: train %s, or try a subset first "
                       "(--max-train-samples %d)", duration(bound), gpu, subset)
