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
over the epoch. Every metrics row records the running accuracy; the eval pass's accuracies (given and true labels)
and the test accuracy are recorded after every ``config.eval_every``-th epoch and the last. Between those, the pass
over the training data is the stop rule's own (``_passes.stop_pass``): it counts only until it is certain that the
target is out of reach (and which side of ``lr_decay_after`` the accuracy lies on, where the plateau schedule asks),
so the run stops at the same epoch with the same weights as with a complete pass every epoch, and its row records
None for what it did not count (tests/test_train_speed_rule.py; benchmarks/RESULTS.md, issue 22).

``config.record_margins`` also keeps, from a complete eval pass over the training data after every epoch, every
sample's margin (given-label logit minus the largest other) in ``margins.safetensors``: the training record AUM
needs (:func:`masc_probe.find_label_issues`, ``masc-probe label-issues --method aum``).

On a CUDA device, tensor data that fits in a quarter of its memory is moved there once, larger tensor data is
pinned, DataLoader batches are pinned and copied without blocking, and convolutional networks run channels_last.
``config.mixed_precision`` and ``config.compile`` are recorded options, off by default: they change the numbers.
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

from masc_probe.data._batches import TensorBatches, make_loader, split_batch
from masc_probe.errors import InputError
from masc_probe.models import load_model, model_logits, model_spec, save_model
from masc_probe.training._config import TrainConfig, reaches
from masc_probe.training._cost import CostClock
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
from masc_probe.training._passes import Tally, evaluate, realized_rate, scan, skip_pass, stop_pass

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

    Example::

        result = train("mlp", loader, config=preset_config("mlp", "digits", preset="fast"))
    """
    accelerator, made_state = _accelerator(config)
    try:
        return _train(accelerator, model, train_data, config=config, test_data=test_data)
    finally:  # a run that fails or is interrupted releases the state it made, too
        if made_state:
            _release_state()


def _train(accelerator: Any, model: nn.Module | str, train_data: Any, *, config: TrainConfig,
           test_data: Any) -> TrainResult:
    """:func:`train`'s run on *accelerator*."""
    from accelerate.utils import set_seed

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

    train_data, test_data = _placed(train_data, accelerator.device), _placed(test_data, accelerator.device)
    order_seed = None if config.protocol == "authors" else config.seed  # authors: the same order every epoch
    loader, sampler, n_train = make_loader(train_data, batch_size=config.batch_size, shuffle_seed=order_seed,
                                           name="training data")  # fmt: skip
    if not isinstance(loader, DataLoader) and world > 1:
        raise InputError("expected a DataLoader or dataset for multi-process training, got a plain iterable")
    if iter(loader) is loader:
        raise InputError("expected re-iterable training data (a DataLoader or list), got a one-shot iterator")
    eval_bs = max(world, min(config.eval_batch_size, n_train or config.eval_batch_size) // world * world)
    eval_train = make_loader(train_data, batch_size=eval_bs, strict=False)[0]
    # The stop rule's pass mostly ends after its first batch or few: smaller batches let it end sooner.
    stop_train = make_loader(train_data, batch_size=max(world, eval_bs // 4 // world * world), strict=False)[0]
    eval_test = make_loader(test_data, batch_size=eval_bs, strict=False)[0] if test_data is not None else None
    first = split_batch(next(iter(loader)))
    shape = [int(s) for s in first.x.shape[1:]]
    given_spec = isinstance(model, str)
    if given_spec:
        num_classes = config.num_classes or _classes_from_data(train_data)
        # Seeded again here: iterating a DataLoader draws from the global generator, so the initial weights would
        # otherwise depend on the kind of data source. Now they are those of set_seed(seed) + load_model(spec).
        set_seed(config.seed)
        model = load_model(model, num_classes=num_classes, input_size=shape if len(shape) == 3 else None)
    spec = config.model or model_spec(model)
    if config.model and not given_spec:
        _check_spec(model, config.model)
    init = init_record(model, config.seed)  # what rebuilds the epoch-0 weights (training._init), before any step
    fmt = _memory_format(model, accelerator.device)
    if fmt is not None:
        model = model.to(memory_format=fmt)
    optimizer = make_optimizer(model.parameters(), config.optimizer, lr=config.lr, momentum=config.momentum)
    loaders = [x for x in (loader, eval_train, stop_train, eval_test) if isinstance(x, DataLoader)]
    if accelerator.device.type == "cuda":
        for x in loaders:  # batches pinned by the loader, copied without blocking (Accelerate's non_blocking)
            x.pin_memory = True
    model, optimizer, *prepared = accelerator.prepare(model, optimizer, *loaders)
    swap = dict(zip(map(id, loaders), prepared))
    loader, eval_train, stop_train, eval_test = (swap.get(id(x), x) for x in (loader, eval_train, stop_train,
                                                                            eval_test))
    # The forward passes run through torch.compile with config.compile; the module itself is what is saved.
    forward = torch.compile(model) if config.compile else model
    gather = accelerator.gather_for_metrics if world > 1 else None  # one process: nothing to gather, every step
    passes = {"device": accelerator.device, "gather": gather, "memory_format": fmt}

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
        meta["realized"] = realized_rate(eval_train, gather=gather)  # from the labels alone: no forward pass
        if main and config.keeps_checkpoint(0):
            save_checkpoint(accelerator, model, run_dir, config, meta, epoch=0, row=None)
    else:
        meta["realized"] = history[-1].get("_realized_rate")
    margin_rows = _resumed_margins(run_dir, history) if config.record_margins else []

    stopped = _stop_reason(history[-1], config) if history else None
    if stopped == "max_epochs" and history[-1].get("train_accuracy_corrupted", 0.0) is None:
        # Closed by a lower max_epochs after an epoch that was not evaluated in full: the resume state holds that
        # epoch's weights, so its row is completed now (the final row is always complete).
        tally = scan(forward, eval_train, **passes)
        test_acc = evaluate(forward, eval_test, **passes)[0] if eval_test is not None else None
        history[-1] = {**history[-1], **_accuracies(tally), "test_accuracy": test_acc}
        history[-1].pop("_train_accuracy_bounds", None)
        save_resume(accelerator, run_dir, config, history)
    start = history[-1]["epoch"] + 1 if history else 1
    disable = _bars_off(config.progress, main)
    clock = CostClock(steps_per_epoch=len(loader) if hasattr(loader, "__len__") else None, first_epoch=start,
                      max_epochs=config.max_epochs, device=accelerator.device, n_train=n_train,
                      enabled=main and stopped is None)
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
        clock.start_epoch()
        loss, running = _epoch(model, optimizer, loader, device=accelerator.device, backward=accelerator.backward,
                               gather=gather, disable=disable, desc=f"epoch {epoch}", forward=forward,
                               memory_format=fmt, on_step=clock.step)
        # A complete pass over the training data every eval_every epochs, on the last, on the authors' stop epoch
        # and whenever margins are recorded; else the stop rule's own pass, which ends once it is answered.
        full = (config.record_margins or epoch % config.eval_every == 0 or epoch >= config.max_epochs
                or (config.stop_metric == "train_accuracy_running" and running >= config.target_accuracy))
        record: list[Any] | None = [] if config.record_margins else None
        if full:
            tally = scan(forward, eval_train, margins=record, total=n_train, **passes)
        else:
            stop, other = config.accuracy_thresholds(history, loss)
            tally = stop_pass(forward, stop_train, total=n_train, stop=stop, other=other, **passes)
        if record:
            margin_rows.append((epoch, *_margin_row(record)))
            if main:  # written before the resume state: a rerun cuts it back to the history it resumes
                write_margins(run_dir, [r[0] for r in margin_rows], margin_rows[-1][1], [r[2] for r in margin_rows])
        row = {"epoch": epoch, "loss": loss, **_accuracies(tally), "test_accuracy": None, "lr": lr,
               "train_accuracy_running": running}  # fmt: skip
        stopped = _stop_reason({**row, **_bounds(tally)}, config)
        if eval_test is not None and (full or stopped):
            row["test_accuracy"] = evaluate(forward, eval_test, **passes)[0]
        elif eval_test is not None:
            skip_pass(eval_test)
        history.append({**row, "_realized_rate": meta["realized"], **_bounds(tally)})
        acc = row["train_accuracy_corrupted"]
        shown = ("train acc (given labels)", acc) if acc is not None else ("running acc (given labels)", running)
        epochs.set_postfix(loss=f"{loss:.3f}", acc=f"{shown[1]:.3f}")
        logger.info("epoch %d: loss %.4f, %s %.4f%s", epoch, loss, *shown,
                    "" if row["test_accuracy"] is None else f", test acc {row['test_accuracy']:.4f}")
        if main and (config.keeps_checkpoint(epoch) or stopped):
            save_checkpoint(accelerator, model, run_dir, config, meta, epoch=epoch, row=row)
        if main and stopped:
            save_model(accelerator.unwrap_model(model), run_dir,
                       masc_config=masc_config(config, meta, epoch=epoch, row=row, stopped=stopped))  # fmt: skip
        save_resume(accelerator, run_dir, config, history, weights=stopped != "target")
        if main:
            write_metrics(run_dir, history)
        clock.end_epoch(epoch)  # the cost of the run, said after its first epoch (training._cost)
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
    return TrainResult(run_dir=run_dir, history=rows, stopped=stopped or "max_epochs")


# ------------------------------------------------------------------------------------------------- the loop parts
# The process-wide Accelerate state train() made itself and has not released (train() releases it in a finally; a
# state left all the same is released by the next run): the values it held, and whether train() made the
# PartialState under it too.
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
    # split_batches: the loader's batch is the global one, divided among the processes. non_blocking: batches the
    # loader pinned are copied to a CUDA device without blocking.
    accelerator = Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision,
                              dataloader_config=DataLoaderConfiguration(split_batches=True, non_blocking=True))
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


def _stop_reason(row: dict[str, Any], config: TrainConfig) -> str | None:
    """"target" once the protocol's accuracy (:attr:`TrainConfig.stop_metric`) reaches the target, "max_epochs" at
    the last epoch, else None."""
    if reaches(row, config.stop_metric, config.target_accuracy):
        return "target"
    return "max_epochs" if row["epoch"] >= config.max_epochs else None


def _accuracies(tally: Tally) -> dict[str, float | None]:
    """A metrics row's accuracies from a pass over the training data: None for those it did not complete."""
    acc, acc_true, _ = tally.accuracies() if tally.complete else (None, None, None)
    return {"train_accuracy_corrupted": acc, "train_accuracy_true": acc_true}


def _bounds(tally: Tally) -> dict[str, list[float]]:
    """The private row key that answers the rules' questions about a pass that ended early (config.reaches)."""
    return {} if tally.complete else {"_train_accuracy_bounds": list(tally.bounds())}


def _memory_format(model: nn.Module, device: torch.device) -> torch.memory_format | None:
    """channels_last for a convolutional network on a CUDA device (its convolutions' fast layout), else None."""
    if device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return torch.channels_last
    return None


def _placed(data: Any, device: torch.device) -> Any:
    """Data held as tensors on the CPU, for a CUDA device: moved there when it takes at most a quarter of the
    device's memory (no copy per batch), else pinned (copies without blocking). Anything else as it is: a
    DataLoader's batches are pinned by the loader and copied by Accelerate."""
    if not isinstance(data, TensorBatches) or device.type != "cuda" or data.x.device.type != "cpu":
        return data
    tensors = (data.x, data.y, data.y_true, data.index)
    size = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    fits = size <= torch.cuda.get_device_properties(device).total_memory // 4
    x, y, y_true, index = (None if t is None else t.to(device) if fits else t.pin_memory() for t in tensors)
    return TensorBatches(x, y, y_true, index, batch_size=data.batch_size, shuffle_seed=data.shuffle_seed)


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


def _check_spec(model: nn.Module, spec: str) -> None:
    """Refuse a config whose ``model`` names another architecture than the module given: config.json would record
    it, and the run folder would not reload (its weights do not fit that architecture)."""
    from masc_probe.models import PAPER_MODELS

    try:
        actual = model_spec(model)
    except InputError:
        return  # a module no spec rebuilds: the config's name is all the folder can record
    # Paper models only: a timm spec may carry a pretrained tag ("timm/resnet18.a1_in1k") its module does not.
    if actual in PAPER_MODELS and actual != spec:
        raise InputError(f"config.model is {spec!r} but the model given is {actual!r}; pass "
                         f"config.model={actual!r} (or None to take it from the model)")
