"""Training configuration: the frozen :class:`TrainConfig` and the named presets (the paper's and a fast one)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from masc_probe._choices import CHECKPOINT_POLICIES, MIXED_PRECISION, OPTIMIZERS, PRESETS, PROTOCOLS
from masc_probe._params import check_choice
from masc_probe.errors import InputError, UnknownNameError, closest

LR_SCHEDULES = ("constant", "plateau")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Unknown keys are errors (:meth:`from_dict`).

    >>> TrainConfig(optimizer="adam", lr=1e-3, batch_size=128).max_epochs
    500
    """

    model: str | None = None  # spec recorded in config.json (and built by train() when it is given a string)
    dataset: str | None = None  # dataset spec, recorded for provenance only
    num_classes: int | None = None  # needed only when train() builds the model from a spec
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    # "plateau": multiply the learning rate by lr_decay whenever the epoch's training loss has not fallen below
    # (1 - lr_min_delta) times its best for lr_patience epochs, never below lr * lr_floor. At a constant rate the
    # last percent of memorization does not come (benchmarks/RESULTS.md). The loss, not the accuracy, is watched:
    # on small data accuracy moves in steps of 1/n and one unstable epoch made an accuracy rule decay to nothing.
    # The rate of each epoch is a function of the metrics history, so a resumed run continues with the rate the
    # uninterrupted one would have used.
    lr_schedule: Literal["constant", "plateau"] = "constant"
    lr_decay: float = 0.5
    lr_patience: int = 5
    lr_min_delta: float = 0.01
    lr_floor: float = 0.01
    # Plateaus count only once train accuracy on the given labels has reached lr_decay_after: before memorizing
    # starts, a network sits for tens of epochs near what the true labels give (0.26 at p=0.8) with a slowly falling
    # loss, and decaying there stopped a CNN on Fashion-MNIST from memorizing at all (benchmarks/RESULTS.md).
    lr_decay_after: float = 0.9
    batch_size: int = 128  # the *global* batch: each of W processes gets batch_size / W samples
    eval_batch_size: int = 512  # batch of the evaluation passes (train and test accuracy); no effect on weights
    max_epochs: int = 500
    target_accuracy: float = 1.0  # stop once train accuracy on the (corrupted) given labels reaches this
    seed: int = 0  # model init (when built here), shuffling (seed + epoch) and every RNG
    # "clean": a new seeded order every epoch, and the stop rule reads an eval-mode pass over the training data after
    # the epoch. "authors" (the MASC authors' code): the data's own order every epoch, and the stop rule reads the
    # running accuracy — train-mode predictions of each batch before its step, summed over the epoch.
    protocol: Literal["clean", "authors"] = "clean"
    # The test pass, and a complete pass over the training data (both accuracies), run after every eval_every-th
    # epoch and after the last; between them the pass over the training data is the stop rule's own, which ends as
    # soon as it is certain that the target is out of reach (and, for the plateau schedule, which side of
    # lr_decay_after the accuracy lies on): same stop epoch, same weights, a fraction of the compute. Those rows
    # record None for the accuracies they did not complete. No effect on the weights (a skipped pass leaves the
    # random stream where the pass would have), so it may change when a run resumes.
    eval_every: int = 10
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # changes the numbers: recorded, off by default
    compile: bool = False  # torch.compile the forward passes; changes the numbers: recorded, off by default
    cpu: bool = False  # train on the CPU even when an accelerator is present
    # Kept checkpoints/epoch-NNNN besides the final one, which is always kept: "all" epochs; "dense": epochs 0, 2, …,
    # checkpoint_dense_until (the follow-up paper's dense early phase), then every checkpoint_every-th epoch
    # (checkpoint_every=0 keeps only the dense phase; checkpoint_dense_until=-1 skips it); "final": none other.
    # Each checkpoint is a copy of the weights (21 MB for the MLP on digits): probing training dynamics
    # (probe --all-checkpoints) needs "dense" or "all" at training time.
    keep_checkpoints: Literal["all", "dense", "final"] = "dense"
    checkpoint_dense_until: int = 20
    checkpoint_every: int = 5
    # Record every training sample's margin (given-label logit minus the largest other logit) after each epoch, from
    # the eval-mode pass over the training data the stop rule already makes, into margins.safetensors (AUM, Pleiss
    # et al. 2020: the mean over epochs ranks mislabeled samples first). Pleiss et al. take the logits of each
    # sample's training step instead; after the epoch is what a checkpoint of that epoch gives back exactly.
    record_margins: bool = False
    output_dir: str = "runs/run"  # the run folder; rerunning with the same folder resumes
    resume: bool = True  # False starts over, deleting the folder's previous checkpoints and resume state
    progress: bool = True  # progress bars (also off when stderr is not a TTY or TQDM_DISABLE is set)
    # Provenance written into config.json's "masc_probe" key: {"mode", "rate", "seed"} of the label corruption
    # (the realized rate is measured from the batches) and the normalization the data went through.
    corruption: Mapping[str, Any] | None = None
    preprocessing: Mapping[str, Any] | None = field(default_factory=lambda: {"mean": [0.5], "std": [0.5]})
    # The stratified subset the data was cut to ({"max_train_samples", "max_eval_samples", "seed"}; None: whole
    # splits): recorded in config.json, and a resume with another subset is refused like one with other data.
    subset: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        check_choice("protocol", self.protocol, PROTOCOLS)
        check_choice("keep_checkpoints", self.keep_checkpoints, CHECKPOINT_POLICIES)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if not (isinstance(self.lr_decay, (int, float)) and 0 < self.lr_decay <= 1):
            raise InputError(f"expected 0 < lr_decay <= 1, got {self.lr_decay!r}")
        if not (isinstance(self.lr_min_delta, (int, float)) and 0 <= self.lr_min_delta < 1):
            raise InputError(f"expected 0 <= lr_min_delta < 1, got {self.lr_min_delta!r}")
        if not (isinstance(self.lr_decay_after, (int, float)) and 0 <= self.lr_decay_after <= 1):
            raise InputError(f"expected 0 <= lr_decay_after <= 1, got {self.lr_decay_after!r}")
        if not (isinstance(self.lr_floor, (int, float)) and 0 < self.lr_floor <= 1):
            raise InputError(f"expected 0 < lr_floor <= 1, got {self.lr_floor!r}")
        _check_int(self.lr_patience, "lr_patience", low=1)
        _check_int(self.max_epochs, "max_epochs", low=1)
        _check_int(self.batch_size, "batch_size", low=1)
        _check_int(self.eval_batch_size, "eval_batch_size", low=1)
        _check_int(self.eval_every, "eval_every", low=1)
        _check_int(self.seed, "seed", low=0)
        _check_int(self.checkpoint_dense_until, "checkpoint_dense_until", low=-1)
        _check_int(self.checkpoint_every, "checkpoint_every", low=0)
        if self.num_classes is not None:
            _check_int(self.num_classes, "num_classes", low=2)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"expected lr > 0, got {self.lr!r}")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise InputError(f"expected 0 <= momentum < 1, got {self.momentum!r}")
        if not (isinstance(self.target_accuracy, (int, float)) and 0 < self.target_accuracy <= 1):
            raise InputError(f"expected 0 < target_accuracy <= 1, got {self.target_accuracy!r}")
        for name in ("record_margins", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"expected {name} to be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise InputError(f"expected output_dir to be a non-empty path string, got {self.output_dir!r}")

    def lr_at(self, history: list[dict[str, Any]]) -> float:
        """The learning rate of the epoch after *history* (metrics rows with ``loss`` and, for the plateau rule's
        start, ``train_accuracy_corrupted``)."""
        lr = float(self.lr)
        if self.lr_schedule == "constant":
            return lr
        best, since = math.inf, 0
        for row in history:
            if row["loss"] < best * (1 - self.lr_min_delta):
                best, since = row["loss"], 0
                continue
            if not reaches(row, "train_accuracy_corrupted", self.lr_decay_after):
                continue
            since += 1
            if since >= self.lr_patience:
                lr, since = max(lr * self.lr_decay, self.lr * self.lr_floor), 0
        return lr

    def accuracy_thresholds(self, history: list[dict[str, Any]], loss: float) -> tuple[list[float], list[float]]:
        """What the rules will ask of the eval-pass accuracy of the epoch after *history*, whose training loss was
        *loss*: ``(stop, other)`` thresholds, where the stop rule asks "at least ``target_accuracy``?" (clean
        protocol) and the plateau schedule "at least ``lr_decay_after``?" when *loss* is no improvement (the only
        rows :meth:`lr_at` reads the accuracy of)."""
        stop = [float(self.target_accuracy)] if self.stop_metric == "train_accuracy_corrupted" else []
        if self.lr_schedule != "plateau":
            return stop, []
        best = math.inf
        for row in history:
            if row["loss"] < best * (1 - self.lr_min_delta):
                best = row["loss"]
        return stop, ([] if loss < best * (1 - self.lr_min_delta) else [float(self.lr_decay_after)])

    def keeps_checkpoint(self, epoch: int) -> bool:
        """Whether *epoch* (0 = before training) is kept under ``checkpoints/`` (the final one always is)."""
        if self.keep_checkpoints != "dense":
            return self.keep_checkpoints == "all"
        if epoch <= self.checkpoint_dense_until:
            return epoch % 2 == 0
        return self.checkpoint_every > 0 and epoch % self.checkpoint_every == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (mappings copied into plain dicts)."""
        out = dataclasses.asdict(self)
        for key in ("corruption", "preprocessing", "subset"):
            if out[key] is not None:
                out[key] = dict(out[key])
        return out

    @property
    def stop_metric(self) -> str:
        """The metrics key the stop rule reads: the eval pass's accuracy, or (authors) the running accuracy."""
        return "train_accuracy_running" if self.protocol == "authors" else "train_accuracy_corrupted"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (a YAML/JSON file, CLI flags).

        Raises:
            UnknownNameError: A key is not a field.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise UnknownNameError(f"unknown training option {key!r}; " + closest(str(key), names))
        return cls(**dict(values))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with *changes* (validated like :meth:`from_dict`)."""
        return TrainConfig.from_dict({**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **changes})


def reaches(row: Mapping[str, Any], key: str, threshold: float) -> bool:
    """Whether the metric *key* of a metrics row is at least *threshold*. A pass over the training data that ended
    early leaves the accuracy None and its bounds in ``_train_accuracy_bounds`` (``[lo, hi]``: the share known
    right, and one minus the share known wrong), which answer every question the pass was asked; a key the row
    lacks (rows older than the key) counts as 1.0.

    Raises:
        ValueError: The bounds do not answer (a rule asked what the pass was not asked: a bug, not bad input).
    """
    value = row.get(key, 1.0)
    if value is not None:
        return value >= threshold
    lo, hi = row["_train_accuracy_bounds"]
    if lo >= threshold or hi < threshold:
        return lo >= threshold
    raise ValueError(f"epoch {row.get('epoch')}: {key} lies in [{lo}, {hi}], which does not answer >= {threshold}")


def _check_int(value: Any, name: str, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"expected {name} to be an int >= {low}, got {value!r}")


# The authors' settings per architecture (from the MASC paper's code), with per-dataset exceptions. Their released
# code picks the batch by dataset (`test_loading` in MASC/cnn_create.py): 128 for MNIST, Fashion-MNIST and CIFAR-100,
# 32 for CIFAR-10, 500 for Tiny ImageNet.
_PAPER_OPTIM: dict[str, dict[str, Any]] = {
    "mlp": {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "batch_size": 128},
    "cnn": {"optimizer": "adam", "lr": 2e-4, "batch_size": 128},
    "alexnet": {"optimizer": "adam", "lr": 1e-4, "batch_size": 128},
    "resnet18-cifar": {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "batch_size": 32},
}
_PAPER_EXCEPTIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("cnn", "cifar10"): {"batch_size": 32},
    ("mlp", "cifar10"): {"batch_size": 32},
    ("alexnet", "tiny-imagenet"): {"batch_size": 500},  # and unnormalized pixels (PAPER_NORMALIZATION)
}
# The authors normalized with mean 0.5, std 0.5 everywhere except AlexNet on Tiny ImageNet (ToTensor only).
PAPER_NORMALIZATION: dict[tuple[str, str], tuple[tuple[float, ...], tuple[float, ...]]] = {
    ("alexnet", "tiny-imagenet"): ((0.0,), (1.0,)),
}
# Stop targets: train accuracy on the corrupted labels at which the authors called a network memorized.
_TARGETS = {"cifar10": 1.0, "mnist": 0.999, "tiny-imagenet": 0.999, "fashion-mnist": 0.991, "cifar100": 0.991}
_DATASET_FAMILY = {
    "mnist": "mnist", "mnist-5k": "mnist", "ylecun/mnist": "mnist",
    "fmnist": "fashion-mnist", "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
    "zalando-datasets/fashion_mnist": "fashion-mnist",
    "cifar10": "cifar10", "cifar-10": "cifar10", "uoft-cs/cifar10": "cifar10",
    "cifar100": "cifar100", "cifar-100": "cifar100", "uoft-cs/cifar100": "cifar100",
    "tiny-imagenet": "tiny-imagenet", "tinyimagenet": "tiny-imagenet", "zh-plus/tiny-imagenet": "tiny-imagenet",
}  # fmt: skip
# Adam at 3e-4, batch 128, with a decay at the plateau: on MNIST at p=0.8, lr 1e-3 stalls near 0.26 (what learning
# the true labels gives) for tens of epochs, while 3e-4 starts memorizing within 15; at a constant rate the last
# percent does not come (benchmarks/RESULTS.md, "Memorizing at scale").
_FAST = {"optimizer": "adam", "lr": 3e-4, "batch_size": 128, "lr_schedule": "plateau"}


def preset_config(model: str, dataset: str | None = None, *, preset: str = "paper", **overrides: Any) -> TrainConfig:
    """The named preset for *model* on *dataset*, with *overrides* applied.

    ``"paper"`` gives the authors' optimizer, lr and batch size for the paper's architectures (timm models and
    other specs get the fast settings) and their stop target for the paper's datasets (1.0 elsewhere).
    ``"fast"`` gives Adam lr 3e-4, batch 128, with the rate halved at each plateau of the training loss
    (``lr_schedule="plateau"``): it memorizes far sooner than the paper's optimizers.

    Args:
        model: Model spec (``"mlp"``, ``"cnn"``, ``"alexnet"``, ``"resnet18-cifar"``, ``"timm/…"``, …).
        dataset: Dataset spec; decides the stop target (and the batch of 32 on CIFAR-10).
        preset: ``"paper"`` or ``"fast"``.
        **overrides: Any :class:`TrainConfig` field.

    Raises:
        UnknownNameError: Unknown preset or option name.

    >>> preset_config("cnn", "cifar10").batch_size
    32
    >>> preset_config("mlp", "mnist", preset="fast").target_accuracy
    0.999
    """
    check_choice("training preset", preset, PRESETS)
    family = _DATASET_FAMILY.get((dataset or "").lower())
    values: dict[str, Any] = {"model": model, "dataset": dataset, "target_accuracy": _TARGETS.get(family or "", 1.0)}
    if preset == "paper" and model in _PAPER_OPTIM:
        values.update(_PAPER_OPTIM[model])
        values.update(_PAPER_EXCEPTIONS.get((model, family or ""), {}))
    else:
        values.update(_FAST)
    values.update(overrides)
    return TrainConfig.from_dict(values)


def paper_normalization(model: str, dataset: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` the authors normalized *model*'s inputs on *dataset* with, where it is not the usual
    (0.5, 0.5): ``((0.0,), (1.0,))`` — pixels in [0, 1] — for AlexNet on Tiny ImageNet; else None. A local folder
    is known by its name (``…/tiny-imagenet``).

    >>> paper_normalization("alexnet", "zh-plus/tiny-imagenet")
    ((0.0,), (1.0,))
    """
    text = (dataset or "").rstrip("/\\").lower()
    family = _DATASET_FAMILY.get(text) or _DATASET_FAMILY.get(text.replace("\\", "/").rsplit("/", 1)[-1], "")
    return PAPER_NORMALIZATION.get((model, family))
