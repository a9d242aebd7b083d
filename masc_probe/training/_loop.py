"""Train a network until it memorizes its (corrupted) training labels, with Accelerate.

One code path runs on one CPU, one GPU, or several processes (``torchrun`` / ``accelerate launch``): the global
batch is ``config.batch_size`` whatever the number of processes (each gets ``batch_size / W``), so one and several
processes take the same steps. The run folder (docs/architecture.md) receives ``metrics.jsonl``,
``checkpoints/epoch-NNNN/`` per the checkpoint policy, the final ``model.safetensors`` + ``config.json``, and
``resume/``, a training state rewritten atomically after every epoch (``_run_folder``): rerunning the same call
after a kill continues where the last finished epoch left off and ends with the same weights and metrics as an
uninterrupted run. Once the run has memorized, ``resume/`` keeps only its history (a rerun returns the finished run);
a run cut off at ``max_epochs`` keeps its whole state, so that a rerun with more epochs continues it.

``config.protocol`` decides the order and the stop rule: ``"clean"`` draws a seeded order every epoch and stops on
an eval-mode pass over the training data after the epoch; ``"authors"`` (the MASC authors' code) keeps the data's
own order and stops on the running accuracy — each batch's train-mode predictions, made before its step, summed
over the epoch. Every metrics row records both (``train_accuracy_corrupted``, ``train_accuracy_running``).

``config.record_margins`` also keeps, from the same eval pass over the training data, every sample's margin (given-
label logit minus the largest other) after each epoch in ``margins.safetensors``: the training record AUM needs
(:func:`masc_probe.find_label_issues`, ``masc-probe label-issues --method aum``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from masc_probe.data._batches import make_loader, split_batch
from masc_probe.errors import InputError
from masc_probe.models import load_model, model_logits, model_spec, save_model
from masc_probe.training._config import TrainConfig
from masc_probe.training._init import init_record
from masc_probe.training._run_folder import (
    MARGINS_NAME,
    METRICS_NAME,
    STATE_NAME,
    check_same_run,
    masc_config,
    read_margins,
    remove,
    save_checkpoint,
    save_resume,
    settle_resume,
    write_margins,
    write_metrics,
)

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "evaluate", "make_optimizer", "train", "train_epoch"]

@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did: the run folder, one metrics row per epoch, and why it stopped."""

    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "target"  # "target" (memorized) or "max_epochs"

    @property
    def epochs(self) -> int:
        """The last finished epoch."""
        return self.history[-1]["epoch"] if self.history else 0


def train(
    model: nn.Module | str, train_data: Any, *, config: TrainConfig, test_data: Any = None
) -> TrainResult:
    """Train until train accuracy on the given (corrupted) labels reaches ``config.target_accuracy`` (measured as
    ``config.protocol`` says: an eval pass after the epoch, or the epoch's running accuracy).

    Args:
        model: A paper or timm model, or a model spec that is built here after seeding (so that the run is
            reproducible from its config alone); ``config.num_classes`` or a ``ClassLabel`` feature gives its width.
        train_data: A DataLoader, a map-style dataset (torch or ``datasets``) or a re-iterable of batches in the
            contract's forms (dicts with image/label/true_label/index, or ``(x, y[, y_true])`` tuples). Map-style
            data is reloaded with ``config.batch_size`` and a seeded order (seed + epoch; the ``authors``
            protocol keeps the data's own order).
        config: The run's settings; ``config.output_dir`` is the run folder.
        test_data: Optional test data in the same forms, for ``test_accuracy`` (against its ``label``).

    Returns:
        The run folder, the per-epoch metrics and the stop reason.

    Raises:
        InputError: Bad sizes (batch larger than the data, batch not divisible by the process count), a run folder
            that holds a different run, or data without labels.

    >>> result = train("mlp", loader, config=preset_config("mlp", "digits", preset="fast"))  # doctest: +SKIP
    """
    from accelerate.utils import set_seed

    accelerator, made_state = _accelerator(config)
    world, main = accelerator.num_processes, accelerator.is_main_process
    if config.batch_size % world:
        raise InputError(f"batch_size={config.batch_size} must be divisible by the {world} processes")
    run_dir = Path(config.output_dir)
    if main:
        if not config.resume:
            for name in ("resume", "resume.old", "resume.tmp", "checkpoints", METRICS_NAME, MARGINS_NAME):
                remove(run_dir / name)
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(config.seed)

    order_seed = None if config.protocol == "authors" else config.seed  # authors: the same order every epoch
    loader, sampler, n_train = make_loader(train_data, batch_size=config.batch_size, shuffle_seed=order_seed,
                                           name="training data")  # fmt: skip
    if not isinstance(loader, DataLoader) and world > 1:
        raise InputError("expected a DataLoader or dataset for multi-process training, got a plain iterable")
    if iter(loader) is loader:
        raise InputError("expected re-iterable training data (a DataLoader or list), got a one-shot iterator")
    eval_bs = max(world, min(config.eval_batch_size, n_train or config.eval_batch_size) // world * world)
    eval_train = make_loader(train_data, batch_size=eval_bs, strict=False)[0]
    eval_test = make_loader(test_data, batch_size=eval_bs, strict=False)[0] if test_data is not None else None
    first = split_batch(next(iter(loader)))
    shape = [int(s) for s in first.x.shape[1:]]
    if isinstance(model, str):
        num_classes = config.num_classes or _classes_from_data(train_data)
        # Seeded again here: iterating a DataLoader draws from the global generator, so the initial weights would
        # otherwise depend on the kind of data source. Now they are those of set_seed(seed) + load_model(spec).
        set_seed(config.seed)
        model = load_model(model, num_classes=num_classes, input_size=shape if len(shape) == 3 else None)
    spec = config.model or model_spec(model)
    init = init_record(model, config.seed)  # what rebuilds the epoch-0 weights (training._init), before any step
    optimizer = make_optimizer(model.parameters(), config.optimizer, lr=config.lr, momentum=config.momentum)
    loaders = [x for x in (loader, eval_train, eval_test) if isinstance(x, DataLoader)]
    model, optimizer, *prepared = accelerator.prepare(model, optimizer, *loaders)
    swap = dict(zip(map(id, loaders), prepared))
    loader, eval_train, eval_test = (swap.get(id(x), x) for x in (loader, eval_train, eval_test))

    def score(data: Any, margins: list[Any] | None = None) -> tuple[float, float | None, float | None]:
        return evaluate(model, data, device=accelerator.device, gather=accelerator.gather_for_metrics,
                        margins=margins)

    history: list[dict[str, Any]] = []
    if main:
        settle_resume(run_dir)
    accelerator.wait_for_everyone()
    resume_dir = run_dir / "resume" if (run_dir / "resume" / STATE_NAME).is_file() else None
    if resume_dir is not None:
        state = json.loads((resume_dir / STATE_NAME).read_text())
        check_same_run(state["config"], config, run_dir)
        history = state["history"]
        if state.get("weights", True):
            accelerator.load_state(str(resume_dir))
        elif not (run_dir / "model.safetensors").is_file():
            raise InputError(f"{run_dir} holds a finished run whose model.safetensors is gone (its resume state "
                             "keeps no weights once memorized); train again with resume=False")
        logger.info("resuming %s after epoch %d", run_dir, state["epoch"])
    meta = {"spec": spec, "shape": shape, "world": world, "realized": None, "init": init}
    if not history:
        meta["realized"] = score(eval_train)[2]
        if main and config.keeps_checkpoint(0):
            save_checkpoint(accelerator, model, run_dir, config, meta, epoch=0, row=None)
    else:
        meta["realized"] = history[-1].get("_realized_rate")
    margin_rows = _resumed_margins(run_dir, history) if config.record_margins else []

    stopped = _stop_reason(history[-1], config) if history else None
    start = history[-1]["epoch"] + 1 if history else 1
    disable = _bars_off(config.progress, main)
    epochs = tqdm(range(start, config.max_epochs + 1), initial=start - 1, total=config.max_epochs, desc="train",
                  disable=True if stopped is not None else disable)  # fmt: skip
    for epoch in epochs if stopped is None else ():
        if hasattr(loader, "set_epoch"):  # Accelerate's loader passes its own epoch counter on to the sampler
            loader.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        lr = config.lr_at(history)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, running = _epoch(model, optimizer, loader, device=accelerator.device, backward=accelerator.backward,
                               gather=accelerator.gather_for_metrics, disable=disable, desc=f"epoch {epoch}")
        record: list[Any] | None = [] if config.record_margins else None
        acc, acc_true, realized = score(eval_train, record)
        if record:
            margin_rows.append((epoch, *_margin_row(record)))
            if main:  # written before the resume state: a rerun cuts it back to the history it resumes
                write_margins(run_dir, [r[0] for r in margin_rows], margin_rows[-1][1], [r[2] for r in margin_rows])
        test_acc = score(eval_test)[0] if eval_test is not None else None
        row = {"epoch": epoch, "loss": loss, "train_accuracy_corrupted": acc, "train_accuracy_true": acc_true,
               "test_accuracy": test_acc, "lr": lr, "train_accuracy_running": running}  # fmt: skip
        history.append({**row, "_realized_rate": realized})
        epochs.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}")
        logger.info("epoch %d: loss %.4f, train acc (given labels) %.4f%s", epoch, loss, acc,
                    "" if test_acc is None else f", test acc {test_acc:.4f}")
        stopped = _stop_reason(history[-1], config)
        if main and (config.keeps_checkpoint(epoch) or stopped):
            save_checkpoint(accelerator, model, run_dir, config, meta, epoch=epoch, row=row)
        if main and stopped:
            save_model(accelerator.unwrap_model(model), run_dir,
                       masc_config=masc_config(config, meta, epoch=epoch, row=row, stopped=stopped))  # fmt: skip
        save_resume(accelerator, run_dir, config, history, weights=stopped != "target")
        if main:
            write_metrics(run_dir, history)
        if stopped:
            break
    epochs.close()
    if main and stopped and not (run_dir / "model.safetensors").is_file():
        # A finished run without its final files (deleted, or max_epochs lowered on a rerun): the resume state
        # holds the weights of its last epoch.
        save_model(accelerator.unwrap_model(model), run_dir,
                   masc_config=masc_config(config, meta, epoch=history[-1]["epoch"], row=history[-1], stopped=stopped))
    if main:
        write_metrics(run_dir, history)
    accelerator.wait_for_everyone()
    rows = [{k: v for k, v in h.items() if not k.startswith("_")} for h in history]
    if made_state:
        _release_state()
    return TrainResult(run_dir=run_dir, history=rows, stopped=stopped or "max_epochs")


# ------------------------------------------------------------------------------------------------- the loop parts
# The process-wide Accelerate state train() made itself and has not released (a run that failed leaves it behind):
# the values it held, and whether train() made the PartialState under it too.
_MADE: dict[str, Any] | None = None


def _accelerator(config: TrainConfig) -> tuple[Any, bool]:
    """An Accelerator for *config*, and whether this call made the process-wide state it stands on.

    Accelerate keeps one state per process; a second Accelerator joins it and cannot change its mixed precision or
    device. A state train() made is released when its run ends (and a failed run's leftover here); a state someone
    else made — the user's own Accelerator — is used as it is when it fits *config*, refused in one line when it
    does not, and never reset under its owner.

    Raises:
        InputError: An Accelerator made elsewhere in this process has other settings than *config*.
    """
    global _MADE
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState, is_initialized
    from accelerate.utils import DataLoaderConfiguration

    if _MADE is not None and is_initialized() and _still_ours():
        _release_state()
    made = not is_initialized()
    if not made:
        state = AcceleratorState()  # joins the present state, changes nothing
        if state.mixed_precision != config.mixed_precision or (config.cpu and state.device.type != "cpu"):
            raise InputError(
                f"expected settings this process's Accelerator can take (mixed_precision={state.mixed_precision!r} "
                f"on {state.device}), got mixed_precision={config.mixed_precision!r}{', cpu=True' * config.cpu}; "
                "train with its settings, or before creating it")
    partial = made and not PartialState._shared_state
    # split_batches: the loader's batch is the global one, divided among the processes.
    accelerator = Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))  # fmt: skip
    if made:
        _MADE = {"values": dict(vars(AcceleratorState())), "partial": partial}
    return accelerator, made


def _still_ours() -> bool:
    """Whether the present state is the very one train() made (same objects, not one rebuilt alike since)."""
    from accelerate.state import AcceleratorState

    now, then = vars(AcceleratorState()), (_MADE or {}).get("values", {})
    return now.keys() == then.keys() and all(now[k] is v for k, v in then.items())


def _release_state() -> None:
    """Clear the state train() made, so that the process is as the run found it (Accelerate has no public call for
    this; it is used on train()'s own state only). A multi-process job keeps its state, and its process group."""
    global _MADE
    from accelerate.state import AcceleratorState, PartialState

    if _MADE is not None and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=_MADE["partial"])
        _MADE = None


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
    return _epoch(model, optimizer, loader, device=device, backward=backward, gather=gather, disable=disable,
                  desc=desc)[0]


def _epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable[Any], *, device: torch.device,
           backward: Callable[[torch.Tensor], Any] | None, gather: Callable[[Any], Any] | None,
           disable: bool | None, desc: str) -> tuple[float, float]:
    """:func:`train_epoch`, also returning the running accuracy: the share of samples whose train-mode prediction,
    made in the forward of their own step (before it), matches the given label — the authors' stop rule."""
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    right = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=disable):
        part = split_batch(batch)
        x, y = part.x.to(device), part.y.to(device)
        logits = model_logits(model(x)).float()  # transformers models return a ModelOutput
        losses = F.cross_entropy(logits, y, reduction="none")
        optimizer.zero_grad(set_to_none=True)
        (backward or torch.Tensor.backward)(losses.mean())
        optimizer.step()
        hits = (logits.detach().argmax(dim=1) == y).long()  # an integer tensor: every backend gathers those
        # gather_for_metrics drops the samples Accelerate repeats to even out the last batch across processes.
        seen, hits = gather((losses.detach(), hits)) if gather is not None else (losses.detach(), hits)
        total += seen.double().sum()
        right += hits.sum()
        count += seen.numel()
    return float(total / max(count, 1)), int(right) / max(count, 1)


def _resumed_margins(run_dir: Path, history: list[dict[str, Any]]) -> list[tuple[int, Any, Any]]:
    """The recorded margins of the epochs in *history*: ``[(epoch, index, margins)]``."""
    saved = read_margins(run_dir) if history else None
    if saved is None:
        if history:
            logger.warning("%s has no %s for its %d finished epochs; margins are recorded from here on", run_dir,
                           MARGINS_NAME, len(history))
        return []
    epoch, index, margins = saved
    done = {row["epoch"] for row in history}
    return [(int(e), index, m) for e, m in zip(epoch.tolist(), margins) if e in done]


def _margin_row(record: list[Any]) -> tuple[Any, Any]:
    """(index, margins) in index order from :func:`evaluate`'s per-batch ``(index, margin)`` tensors."""
    index = torch.cat([i for i, _ in record]).cpu().numpy()
    margins = torch.cat([m for _, m in record]).float().cpu().numpy()  # stored as float32
    order = index.argsort(kind="stable")
    return index[order], margins[order]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any], *, device: torch.device,
             gather: Callable[[Any], Any] | None = None,
             margins: list[Any] | None = None) -> tuple[float, float | None, float | None]:
    """Accuracy against the given labels and against the true labels, and the share of given ≠ true labels.

    Args:
        model: Put in eval mode.
        loader: Batches in the contract's forms.
        device: Where the inputs go.
        gather: Collects a tuple of per-process tensors across processes (Accelerate's ``gather_for_metrics``,
            which also drops the samples it repeated to even out the last batch); None with one process.
        margins: A list to append each batch's ``(index, margin)`` tensors to: the data's ``index`` column (the
            position in the pass without one) and the given-label logit minus the largest other logit (float64).

    Returns:
        ``(accuracy vs given labels, accuracy vs true labels, realized corruption rate)``; the last two are None
        when the batches carry no true labels.

    Raises:
        InputError: The loader gives no batch.
    """
    model.eval()
    right = right_true = differ = count = 0
    has_true = True
    for batch in loader:
        part = split_batch(batch)
        logits = model_logits(model(part.x.to(device)))
        pred = logits.argmax(dim=1)
        y = part.y.to(device)
        if margins is not None:
            index = part.index.to(device) if part.index is not None else None
            margins.append(_margins(logits, y, index, count, gather))
        y_true = part.y_true.to(device) if part.y_true is not None else y
        has_true = has_true and part.y_true is not None
        if gather is not None:
            pred, y, y_true = gather((pred, y, y_true))
        right += int((pred == y).sum())
        right_true += int((pred == y_true).sum())
        differ += int((y != y_true).sum())
        count += int(y.numel())
    if count == 0:
        raise InputError("expected at least one batch of data to evaluate, got none")
    if not has_true:
        return right / count, None, None
    return right / count, right_true / count, differ / count


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


def _stop_reason(row: dict[str, Any], config: TrainConfig) -> str | None:
    """"target" once the protocol's accuracy (:attr:`TrainConfig.stop_metric`) reaches the target, "max_epochs" at
    the last epoch, else None."""
    if row[config.stop_metric] >= config.target_accuracy:
        return "target"
    return "max_epochs" if row["epoch"] >= config.max_epochs else None


def _bars_off(progress: bool, main: bool) -> bool | None:
    """True hides the bars; None lets tqdm hide them when stderr is not a TTY."""
    if not progress or not main or os.environ.get("TQDM_DISABLE", "").lower() in {"1", "true", "yes"}:
        return True
    return None


def _classes_from_data(data: Any) -> int:
    dataset = data.dataset if isinstance(data, DataLoader) else data
    features = getattr(dataset, "features", None)
    label = features.get("label") if features is not None else None
    if label is not None and hasattr(label, "num_classes"):
        return int(label.num_classes)
    raise InputError("expected config.num_classes (or a dataset with a ClassLabel 'label') to build the model")

