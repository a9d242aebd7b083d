"""The pass of a training run that takes steps: one epoch of cross-entropy steps on the given labels, and the
optimizer that takes them (:func:`~masc_probe.training.train` runs it every epoch; relabeling's fine-tuning calls
:func:`train_epoch` on its own)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from masc_probe.data._batches import split_batch
from masc_probe.models import model_logits

__all__ = ["make_optimizer", "train_epoch"]


def make_optimizer(params: Iterable[torch.nn.Parameter], name: str, *, lr: float,
                   momentum: float) -> torch.optim.Optimizer:
    """The optimizer a run (or a fine-tuning of it) uses: ``"sgd"`` with momentum, or ``"adam"``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    return torch.optim.Adam(params, lr=lr)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable[Any], *, device: torch.device,
                backward: Callable[[torch.Tensor], Any] | None = None, gather: Callable[[Any], Any] | None = None,
                disable: bool | None = True, desc: str = "epoch") -> float:
    """One pass of cross-entropy steps on the given labels; returns the mean loss over the samples seen (see
    :func:`train` for the running accuracy of the same pass).

    Args:
        model: Put in train mode.
        optimizer: Stepped once per batch.
        loader: Batches in the contract's forms.
        device: Where the inputs go.
        backward: Runs the backward pass of the batch's mean loss (Accelerate's ``backward``, which scales for
            mixed precision); None: ``loss.backward()``.
        gather: As in :func:`evaluate`, for the reported loss only.
        disable: Hide the progress bar (None: tqdm hides it when stderr is not a TTY).
        desc: The progress bar's label.
    """
    return epoch_steps(model, optimizer, loader, device=device, backward=backward, gather=gather, disable=disable,
                  desc=desc)[0]


def epoch_steps(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable[Any], *, device: torch.device,
           backward: Callable[[torch.Tensor], Any] | None, gather: Callable[[Any], Any] | None,
           disable: bool | None, desc: str, forward: Callable[[torch.Tensor], Any] | None = None,
           memory_format: torch.memory_format | None = None,
           on_step: Callable[[], None] | None = None) -> tuple[float, float]:
    """:func:`train_epoch`, also returning the running accuracy: the share of samples whose train-mode prediction,
    made in the forward of their own step (before it), matches the given label — the authors' stop rule.
    *forward* is the model's forward (its torch.compile'd form); the loss and the accuracy stay on the device until
    the epoch ends (no host sync per step)."""
    model.train()
    forward = model if forward is None else forward  # (a compiled module has no truth value)
    total = torch.zeros((), dtype=torch.float64, device=device)
    right = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=disable):
        part = split_batch(batch)
        x, y = part.x.to(device, non_blocking=True), part.y.to(device, non_blocking=True)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        logits = model_logits(forward(x)).float()  # transformers models return a ModelOutput
        losses = F.cross_entropy(logits, y, reduction="none")
        optimizer.zero_grad(set_to_none=True)
        (backward or torch.Tensor.backward)(losses.mean())
        optimizer.step()
        if on_step is not None:
            on_step()
        hits = (logits.detach().argmax(dim=1) == y).long()  # an integer tensor: every backend gathers those
        # gather_for_metrics drops the samples Accelerate repeats to even out the last batch across processes.
        seen, hits = gather((losses.detach(), hits)) if gather is not None else (losses.detach(), hits)
        total += seen.double().sum()
        right += hits.sum()
        count += seen.numel()
    return float(total / max(count, 1)), int(right) / max(count, 1)
