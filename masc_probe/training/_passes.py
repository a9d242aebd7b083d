"""The passes of a training run that take no step: the evaluation pass (accuracy against the given and the true
labels, margins), the stop rule's pass that ends once its questions are answered, the label-only pass that measures
the realized corruption rate, and a skipped pass that leaves the random stream where the pass would have.

Every pass counts on the device and reads its counts back once at the end — except the stop rule's pass, which must
look after every batch to know whether it can end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from masc_probe.data._batches import split_batch
from masc_probe.errors import InputError
from masc_probe.models import model_logits


@dataclass(frozen=True)
class Tally:
    """The counts of a pass over ``seen`` of ``total`` samples (``total`` None when unknown)."""

    right: int  # predictions equal to the given label
    right_true: int  # equal to the true label (the given one where the batches carry no true labels)
    differ: int  # given labels that differ from the true ones
    seen: int
    total: int | None
    has_true: bool
    complete: bool  # the pass went through every batch

    def bounds(self) -> tuple[float, float]:
        """``[lo, hi]`` of the accuracy over all ``total`` samples: the share known right, and one minus the share
        known wrong (each the same float division the complete pass's accuracy is)."""
        total = self.total if self.total is not None else self.seen
        return self.right / total, (total - (self.seen - self.right)) / total

    def accuracies(self) -> tuple[float, float | None, float | None]:
        """:func:`evaluate`'s triple from these counts."""
        if not self.has_true:
            return self.right / self.seen, None, None
        return self.right / self.seen, self.right_true / self.seen, self.differ / self.seen


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any], *, device: torch.device,
             gather: Callable[[Any], Any] | None = None, margins: list[Any] | None = None,
             memory_format: torch.memory_format | None = None) -> tuple[float, float | None, float | None]:
    """Accuracy against the given and the true labels, and the share of given ≠ true labels.

    Args:
        model: Put in eval mode.
        loader: Batches in the contract's forms.
        device: Where the inputs go.
        gather: Collects a tuple of per-process tensors across processes (Accelerate's ``gather_for_metrics``,
            which also drops the samples it repeated to even out the last batch); None with one process.
        margins: A list to append each batch's ``(index, margin)`` tensors to: the data's ``index`` column (the
            position in the pass without one) and the given-label logit minus the largest other logit (float64).
        memory_format: The inputs' memory format (``torch.channels_last`` for a network converted to it).

    Returns:
        ``(accuracy vs given labels, accuracy vs true labels, realized corruption rate)``; the last two are None
        when the batches carry no true labels.

    Raises:
        InputError: The loader gives no batch.
    """
    return scan(model, loader, device=device, gather=gather, margins=margins, memory_format=memory_format).accuracies()


@torch.no_grad()
def scan(model: nn.Module, loader: Iterable[Any], *, device: torch.device, gather: Callable[[Any], Any] | None,
         margins: list[Any] | None = None, total: int | None = None,
         done: Callable[[int, int], bool] | None = None,
         memory_format: torch.memory_format | None = None) -> Tally:
    """Count right predictions over *loader* in eval mode; ``done(right, seen)``, asked before each batch, ends the
    pass early when it says True (every process gets the same gathered counts, so all end at the same batch).

    Raises:
        InputError: The loader gives no batch.
    """
    model.eval()
    right = torch.zeros((), dtype=torch.int64, device=device)
    right_true = torch.zeros((), dtype=torch.int64, device=device)
    differ = torch.zeros((), dtype=torch.int64, device=device)
    seen, has_true, complete = 0, True, True
    for batch in loader:
        if done is not None and seen and done(int(right), seen):
            complete = False
            _leave(loader)
            break
        part = split_batch(batch)
        x = _to(part.x, device, memory_format)
        logits = model_logits(model(x))
        pred = logits.argmax(dim=1)
        y = part.y.to(device, non_blocking=True)
        if margins is not None:
            index = part.index.to(device) if part.index is not None else None
            margins.append(_margins(logits, y, index, seen, gather))
        y_true = part.y_true.to(device, non_blocking=True) if part.y_true is not None else y
        has_true = has_true and part.y_true is not None
        if gather is not None:
            pred, y, y_true = gather((pred, y, y_true))
        right += (pred == y).sum()
        right_true += (pred == y_true).sum()
        differ += (y != y_true).sum()
        seen += int(y.numel())
    if seen == 0:
        raise InputError("expected at least one batch of data to evaluate, got none")
    return Tally(int(right), int(right_true), int(differ), seen, total, has_true, complete)


def stop_pass(model: nn.Module, loader: Iterable[Any], *, total: int | None, stop: Sequence[float],
              other: Sequence[float], device: torch.device, gather: Callable[[Any], Any] | None,
              memory_format: torch.memory_format | None = None) -> Tally:
    """The stop rule's pass over the training data: it ends as soon as the accuracy is certain to stay below every
    *stop* threshold and to lie on a known side of every *other* one; a reachable stop threshold keeps it going to
    the end (the row of the stop epoch is complete). Without *total* (data of unknown length) it goes to the end.

    With no question at all it ends before its first forward pass, having started the pass (a DataLoader's start
    draws from the random stream: the weights of a network that draws too — dropout — stay those of a full pass).
    """

    def done(right: int, seen: int) -> bool:
        lo, hi = Tally(right, 0, 0, seen, total, True, False).bounds()
        return all(hi < t for t in stop) and all(hi < t or lo >= t for t in other)

    if total is None:
        return scan(model, loader, device=device, gather=gather, memory_format=memory_format)
    if not stop and not other:
        skip_pass(loader)
        return Tally(0, 0, 0, 0, total, False, False)
    return scan(model, loader, device=device, gather=gather, total=total, done=done, memory_format=memory_format)


def realized_rate(loader: Iterable[Any], *, gather: Callable[[Any], Any] | None) -> float | None:
    """The share of given ≠ true labels over a pass that reads only the labels (None without true labels)."""
    differ, count = 0, 0
    for batch in loader:
        part = split_batch(batch)
        if part.y_true is None:
            _leave(loader)
            return None
        y, y_true = part.y, part.y_true
        if gather is not None:
            y, y_true = gather((y, y_true))
        differ += int((y != y_true).sum())
        count += int(y.numel())
    return differ / count if count else None


def skip_pass(loader: Iterable[Any]) -> None:
    """Leave the global random stream where a pass over *loader* would have left it: making a DataLoader's
    iterator draws one int64 from the loader's generator (the global one when None) for its workers' base seed, and
    an unshuffled pass draws nothing else; other iterables draw nothing (tests/test_train_speed_rule.py holds torch
    to this)."""
    base = getattr(loader, "base_dataloader", loader)
    if isinstance(base, DataLoader):
        torch.empty((), dtype=torch.int64).random_(generator=base.generator)


def _leave(loader: Any) -> None:
    """Close an Accelerate loader left before its end (it unregisters itself from the gradient state only there)."""
    end = getattr(loader, "end", None)
    if callable(end):
        end()


def _to(x: torch.Tensor, device: torch.device, memory_format: torch.memory_format | None) -> torch.Tensor:
    x = x.to(device, non_blocking=True)  # without blocking from pinned memory; a plain copy otherwise
    return x if memory_format is None else x.contiguous(memory_format=memory_format)


def _margins(logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None, start: int,
             gather: Callable[[Any], Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, margin)`` of one batch, gathered across processes: the given-label logit minus the largest other
    (float64). Without an index column, the position in the pass (*start*: the samples of the earlier batches)."""
    z = logits.detach().double()
    margin = z.gather(1, y[:, None])[:, 0] - z.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    if index is None:
        (margin,) = gather((margin,)) if gather is not None else (margin,)
        return torch.arange(start, start + len(margin), device=margin.device), margin
    out = (index.long(), margin)
    return gather(out) if gather is not None else out
