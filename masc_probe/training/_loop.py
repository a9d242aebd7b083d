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

The data a run reads, and where it is held, is ``training._data``'s; the Accelerate state it stands on is
``training._accelerate``'s. On a CUDA device DataLoader batches are pinned and copied without blocking, and
convolutional networks run channels_last.
``config.mixed_precision`` and ``config.compile`` are recorded options, off by default: they change the numbers.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from masc_probe.errors import InputError
from masc_probe.models import load_model, model_spec, save_model
from masc_probe.training._accelerate import make_accelerator, release_state
from masc_probe.training._config import TrainConfig, reaches
from masc_probe.training._cost import CostClock
from masc_probe.training._data import classes_from_data, run_data
from masc_probe.training._init import init_record
from masc_probe.training._run_folder import (
    MARGINS_NAME,
    METRICS_NAME,
    STATE_NAME,
    check_same_run,
    masc_config,
    remove,
    resumed_margins,
    save_checkpoint,
    save_resume,
    settle_resume,
    write_margins,
    write_metrics,
)
from masc_probe.training._passes import Tally, evaluate, realized_rate, scan, skip_pass, stop_pass
from masc_probe.training._steps import epoch_steps, make_optimizer

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "train"]

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
            protocol keeps the data's own order); a list of batches is taken as it is, in its own order. Data
            known to be the same every epoch is decoded once and held as tensors (``training._data``).
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
    accelerator, made_state = make_accelerator(config)
    try:
        run = _Run(accelerator, model, train_data, config=config, test_data=test_data)
        stopped = run.resume()
        if stopped is None:
            stopped = run.epochs()
        return run.finish(stopped)
    finally:  # a run that fails or is interrupted releases the state it made, too
        if made_state:
            release_state()


class _Run:
    """One call of :func:`train`, by stages: prepared here (folder, seed, data, model, optimizer, Accelerate's
    ``prepare``), then :meth:`resume`, :meth:`epochs` (each :meth:`epoch` is steps, a pass, a row, the files) and
    :meth:`finish`."""

    def __init__(self, accelerator: Any, model: nn.Module | str, train_data: Any, *, config: TrainConfig,
                 test_data: Any) -> None:
        from accelerate.utils import set_seed

        self.accelerator, self.config = accelerator, config
        self.world, self.main = accelerator.num_processes, accelerator.is_main_process
        if config.batch_size % self.world:
            raise InputError(f"batch_size={config.batch_size} must be divisible by the {self.world} processes")
        self.run_dir = run_dir = Path(config.output_dir)
        if self.main:
            if not config.resume:
                for name in ("resume", "resume.old", "resume.tmp", "checkpoints", METRICS_NAME, MARGINS_NAME):
                    remove(run_dir / name)
            run_dir.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        set_seed(config.seed)
        self.data = data = run_data(train_data, test_data, config=config, world=self.world, device=accelerator.device)
        given_spec = isinstance(model, str)
        if given_spec:
            num_classes = config.num_classes or classes_from_data(train_data)
            # Seeded again here: iterating a DataLoader draws from the global generator, so the initial weights
            # would otherwise depend on the kind of data source. Now they are those of set_seed(seed) + load_model.
            set_seed(config.seed)
            model = load_model(model, num_classes=num_classes, input_size=data.shape if len(data.shape) == 3 else None)
        spec = config.model or model_spec(model)
        if config.model and not given_spec:
            _check_spec(model, config.model)
        init = init_record(model, config.seed)  # what rebuilds the epoch-0 weights (training._init), before any step
        self.fmt = _memory_format(model, accelerator.device)
        if self.fmt is not None:
            model = model.to(memory_format=self.fmt)
        optimizer = make_optimizer(model.parameters(), config.optimizer, lr=config.lr, momentum=config.momentum)
        self.model, self.optimizer = self._prepared(model, optimizer)
        # The forward passes run through torch.compile with config.compile; the module itself is what is saved.
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.gather = accelerator.gather_for_metrics if self.world > 1 else None  # one process: nothing to gather
        self.passes = {"device": accelerator.device, "gather": self.gather, "memory_format": self.fmt}
        self.meta: dict[str, Any] = {"spec": spec, "shape": data.shape, "world": self.world, "realized": None,
                                     "init": init}
        self.history: list[dict[str, Any]] = []
        self.margin_rows: list[tuple[int, Any, Any]] = []
        self.disable = _bars_off(config.progress, self.main)

    def _prepared(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        """Accelerate's ``prepare`` of the model, the optimizer and the DataLoaders among the run's loaders."""
        data, names = self.data, ("loader", "eval_train", "stop_train", "eval_test")
        loaders = {name: getattr(data, name) for name in names if isinstance(getattr(data, name), DataLoader)}
        if self.accelerator.device.type == "cuda":
            for x in loaders.values():  # batches pinned by the loader, copied without blocking (non_blocking)
                x.pin_memory = True
        model, optimizer, *prepared = self.accelerator.prepare(model, optimizer, *loaders.values())
        for name, loader in zip(loaders, prepared):
            setattr(data, name, loader)
        return model, optimizer

    def resume(self) -> str | None:
        """Continue from the folder's resume state when it holds one (else record the realized corruption rate and
        checkpoint 0); the stop reason of a run that had already ended, else None."""
        accelerator, config, run_dir = self.accelerator, self.config, self.run_dir
        if self.main:
            settle_resume(run_dir)
        accelerator.wait_for_everyone()
        if (run_dir / "resume" / STATE_NAME).is_file():
            state = json.loads((run_dir / "resume" / STATE_NAME).read_text())
            check_same_run(state["config"], config, run_dir)
            self.history = state["history"]
            if state.get("weights", True):
                accelerator.load_state(str(run_dir / "resume"))
            elif not (run_dir / "model.safetensors").is_file():
                raise InputError(f"{run_dir} holds a finished run whose model.safetensors is gone (its resume state "
                                 "keeps no weights once memorized); train again with resume=False")
            logger.info("resuming %s after epoch %d", run_dir, state["epoch"])
        history = self.history
        if not history:
            self.meta["realized"] = realized_rate(self.data.eval_train, gather=self.gather)  # from the labels alone
            if self.main and config.keeps_checkpoint(0):
                save_checkpoint(accelerator, self.model, run_dir, config, self.meta, epoch=0, row=None)
        else:
            self.meta["realized"] = history[-1].get("_realized_rate")
        self.margin_rows = resumed_margins(run_dir, history) if config.record_margins else []
        stopped = _stop_reason(history[-1], config) if history else None
        if stopped == "max_epochs" and history[-1].get("train_accuracy_corrupted", 0.0) is None:
            # Closed by a lower max_epochs after an epoch that was not evaluated in full: the resume state holds
            # that epoch's weights, so its row is completed now (the final row is always complete).
            tally = scan(self.forward, self.data.eval_train, **self.passes)
            test = self.data.eval_test
            test_acc = evaluate(self.forward, test, **self.passes)[0] if test is not None else None
            history[-1] = {**history[-1], **_accuracies(tally), "test_accuracy": test_acc}
            history[-1].pop("_train_accuracy_bounds", None)
            save_resume(accelerator, run_dir, config, history)
        return stopped

    def epochs(self) -> str:
        """Train epoch after epoch until the run stops; the stop reason."""
        config, loader = self.config, self.data.loader
        start = self.history[-1]["epoch"] + 1 if self.history else 1
        self.clock = CostClock(steps_per_epoch=len(loader) if hasattr(loader, "__len__") else None,
                               first_epoch=start, max_epochs=config.max_epochs, device=self.accelerator.device,
                               n_train=self.data.n_train, enabled=self.main)  # fmt: skip
        self.bar = tqdm(range(start, config.max_epochs + 1), initial=start - 1, total=config.max_epochs,
                        desc="train", disable=self.disable)  # fmt: skip
        stopped = None
        for epoch in self.bar:
            stopped = self.epoch(epoch)
            if stopped:
                break
        self.bar.close()
        return stopped or "max_epochs"

    def epoch(self, epoch: int) -> str | None:
        """One epoch: the steps, a pass over the training data, the metrics row and the run folder's files; the
        stop reason once the run stops here, else None."""
        config, data, passes, history = self.config, self.data, self.passes, self.history
        if hasattr(data.loader, "set_epoch"):  # Accelerate's loader passes its own epoch counter on to the sampler
            data.loader.set_epoch(epoch)
        if data.sampler is not None:
            data.sampler.set_epoch(epoch)
        lr = config.lr_at(history)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.clock.start_epoch()
        loss, running = epoch_steps(self.model, self.optimizer, data.loader, device=self.accelerator.device,
                               backward=self.accelerator.backward, gather=self.gather, disable=self.disable,
                               desc=f"epoch {epoch}", forward=self.forward, memory_format=self.fmt,
                               on_step=self.clock.step)  # fmt: skip
        # A complete pass over the training data every eval_every epochs, on the last, on the authors' stop epoch
        # and whenever margins are recorded; else the stop rule's own pass, which ends once it is answered.
        full = (config.record_margins or epoch % config.eval_every == 0 or epoch >= config.max_epochs
                or (config.stop_metric == "train_accuracy_running" and running >= config.target_accuracy))
        record: list[Any] | None = [] if config.record_margins else None
        if full:
            tally = scan(self.forward, data.eval_train, margins=record, total=data.n_train, **passes)
        else:
            stop, other = config.accuracy_thresholds(history, loss)
            tally = stop_pass(self.forward, data.stop_train, total=data.n_train, stop=stop, other=other, **passes)
        if record:
            self.margin_rows.append((epoch, *_margin_row(record)))
            if self.main:  # written before the resume state: a rerun cuts it back to the history it resumes
                rows = self.margin_rows
                write_margins(self.run_dir, [r[0] for r in rows], rows[-1][1], [r[2] for r in rows])
        row = {"epoch": epoch, "loss": loss, **_accuracies(tally), "test_accuracy": None, "lr": lr,
               "train_accuracy_running": running}  # fmt: skip
        stopped = _stop_reason({**row, **_bounds(tally)}, config)
        if data.eval_test is not None and (full or stopped):
            row["test_accuracy"] = evaluate(self.forward, data.eval_test, **passes)[0]
        elif data.eval_test is not None:
            skip_pass(data.eval_test)
        history.append({**row, "_realized_rate": self.meta["realized"], **_bounds(tally)})
        self._log(epoch, row)
        self._save(epoch, row, stopped)
        self.clock.end_epoch(epoch)  # the cost of the run, said after its first epoch (training._cost)
        return stopped

    def _log(self, epoch: int, row: dict[str, Any]) -> None:
        acc, running = row["train_accuracy_corrupted"], row["train_accuracy_running"]
        shown = ("train acc (given labels)", acc) if acc is not None else ("running acc (given labels)", running)
        self.bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{shown[1]:.3f}")
        logger.info("epoch %d: loss %.4f, %s %.4f%s", epoch, row["loss"], *shown,
                    "" if row["test_accuracy"] is None else f", test acc {row['test_accuracy']:.4f}")

    def _save(self, epoch: int, row: dict[str, Any], stopped: str | None) -> None:
        """The epoch's files: its checkpoint (by the policy, and the last), the final model, the resume state and
        metrics.jsonl."""
        accelerator, config, run_dir = self.accelerator, self.config, self.run_dir
        if self.main and (config.keeps_checkpoint(epoch) or stopped):
            save_checkpoint(accelerator, self.model, run_dir, config, self.meta, epoch=epoch, row=row)
        if self.main and stopped:
            save_model(accelerator.unwrap_model(self.model), run_dir,
                       masc_config=masc_config(config, self.meta, epoch=epoch, row=row, stopped=stopped))
        save_resume(accelerator, run_dir, config, self.history, weights=stopped != "target")
        if self.main:
            write_metrics(run_dir, self.history)

    def finish(self, stopped: str) -> TrainResult:
        """The final files of a run that ended, and what it did."""
        history, run_dir = self.history, self.run_dir
        if self.main and not (run_dir / "model.safetensors").is_file():
            # A finished run without its final files (deleted, or max_epochs lowered on a rerun): the resume state
            # holds the weights of its last epoch.
            save_model(self.accelerator.unwrap_model(self.model), run_dir,
                       masc_config=masc_config(self.config, self.meta, epoch=history[-1]["epoch"], row=history[-1],
                                               stopped=stopped))  # fmt: skip
        if self.main:
            write_metrics(run_dir, history)
        self.accelerator.wait_for_everyone()
        rows = [{k: v for k, v in h.items() if not k.startswith("_")} for h in history]
        return TrainResult(run_dir=run_dir, history=rows, stopped=stopped)


# ------------------------------------------------------------------------------------------------- the loop parts
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


def _bars_off(progress: bool, main: bool) -> bool | None:
    """True hides the bars; None lets tqdm hide them when stderr is not a TTY."""
    if not progress or not main or os.environ.get("TQDM_DISABLE", "").lower() in {"1", "true", "yes"}:
        return True
    return None


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
