"""What :mod:`masc_probe.pipeline` checks and loads before it writes anything: data, probe sources, option values."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from masc_probe._choices import HUB_PREFIX, TIMM_PREFIX
from masc_probe.errors import InputError
from masc_probe.training import run_checkpoints



# ------------------------------------------------------------------------------------------------------- checks
def default_run_dir(model: str, dataset: str, corrupt: float, corrupt_mode: str, seed: int) -> Path:
    """``runs/<model>-<dataset>-p<rate>-<mode>-s<seed>``, safe as a folder name (a dataset path gives its last part).

    >>> default_run_dir("timm/resnet18", "../data/mnist/", 0.8, "random", 0).as_posix()
    'runs/timm-resnet18-mnist-p0.8-random-s0'
    """
    data = Path(os.fspath(dataset).rstrip("/\\")).name or "data"
    return Path("runs") / _safe(f"{model}-{data}-p{corrupt:g}-{corrupt_mode}-s{seed}")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


def check_device(device: str | None) -> None:
    """Refuse a device string torch cannot parse, or an accelerator this machine lacks.

    Raises:
        InputError: The device is malformed or absent.
    """
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"expected a device such as cpu, cuda or cuda:1, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"expected an available device, got {device!r} but torch sees no CUDA device here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"expected a CUDA index below {torch.cuda.device_count()}, got {device!r}")


# --------------------------------------------------------------------------------------------------------- data
@dataclass
class RunData:
    """The train and test splits of one dataset, with what the pipeline needs to know about them."""

    train: Any  # datasets.Dataset from load_data, labels corrupted
    test: Any
    info: dict[str, Any]  # describe_data(train)
    test_info: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images as the model sees them."""
        c, h, w = (int(v) for v in self.info["preprocessing"]["input_size"])
        return c, h, w

    @property
    def n_train(self) -> int:
        return int(self.info["num_rows"])

    @property
    def corrupted(self) -> bool:
        return float(self.info["corruption"]["rate"]) > 0

    @property
    def seed(self) -> int:
        return int(self.info["corruption"]["seed"])

    @property
    def corruption_spec(self) -> dict[str, Any] | None:
        """``{"mode", "rate", "seed"}`` as given to the corruption (None for clean labels)."""
        c = self.info["corruption"]
        return {k: c[k] for k in ("mode", "rate", "seed")} if self.corrupted else None

    @property
    def corruption(self) -> dict[str, Any] | None:
        """The report's ``corruption``: mode, rate, seed and the realized share of changed labels."""
        from masc_probe.data.corruption import report_corruption

        return report_corruption(self.info["corruption"])

    @property
    def record(self) -> dict[str, Any]:
        """A short account of the data for the report's top level (``subset`` only for a split taken in part)."""
        keys = ("spec", "name", "source", "location", "num_rows", "num_classes", "fingerprint", "preprocessing",
                "subset")
        return {"train": {k: self.info.get(k) for k in keys if k in self.info or k != "subset"},
                "test": {k: self.test_info.get(k) for k in keys
                         if k != "preprocessing" and (k in self.test_info or k != "subset")}}

    @property
    def subset(self) -> dict[str, Any] | None:
        """``{"max_train_samples", "max_eval_samples", "seed"}`` when a split was taken in part, else None: what
        config.json records, so that a resumed run and a probe of its folder take the same samples."""
        train, test = self.info.get("subset"), self.test_info.get("subset")
        if train is None and test is None:
            return None
        return {"max_train_samples": train and train["max_samples"], "max_eval_samples": test and test["max_samples"],
                "seed": (train or test)["seed"]}


def load_run_data(dataset: str | os.PathLike[str], *, corrupt: float, mode: str, seed: int,
                  image_column: str | None = None, label_column: str | None = None, revision: str | None = None,
                  normalize: tuple[Any, Any] | None = None, input_size: Any = None,
                  in_chans: int | None = None, max_train_samples: int | None = None,
                  max_eval_samples: int | None = None) -> RunData:
    """Load the train split (corrupted) and the test split (never corrupted) of *dataset*, each cut to a stratified
    subset drawn by *seed* when *max_train_samples* / *max_eval_samples* are given.

    Raises:
        InputError, UnknownNameError, DataUnavailableError: As :func:`masc_probe.load_data` raises them.
    """
    from masc_probe.data import describe_data, load_data
    from masc_probe.data._subset import subset_data
    from masc_probe.errors import DataUnavailableError

    common: dict[str, Any] = {"image_column": image_column, "label_column": label_column, "revision": revision,
                              "input_size": input_size, "in_chans": in_chans}
    if normalize is not None:
        common["normalize"] = normalize
    try:
        train = load_data(dataset, split="train", corrupt=corrupt, mode=mode, seed=seed, **common)
    except DataUnavailableError as err:
        # Unreachable Hub data (no network, offline mode unset) gets the same way out as offline mode does.
        if "Hub" not in str(err) or "local copy" in str(err):
            raise
        raise DataUnavailableError(f"{err}; to use a local copy, point --dataset at a parquet file, an image folder, "
                                   "a save_to_disk folder or an MNIST idx folder") from None
    train = subset_data(train, max_train_samples, seed=seed)
    info = describe_data(train)
    # The test split must decode to the same classes and shape as the training split.
    common.setdefault("num_classes", info["num_classes"])
    test = subset_data(load_data(dataset, split="test", **common), max_eval_samples, seed=seed)
    test_info = describe_data(test)
    if test_info["preprocessing"]["input_size"] != info["preprocessing"]["input_size"]:
        raise InputError(f"expected test images of the training shape {info['preprocessing']['input_size']}, got "
                         f"{test_info['preprocessing']['input_size']} in {dataset}")
    return RunData(train=train, test=test, info=info, test_info=test_info)


# ------------------------------------------------------------------------------------------------ probe sources
@dataclass
class ProbeSource:
    """A resolved ``probe`` source: where its weights are, and the data settings it implies."""

    kind: str  # "folder" (run or checkpoint folder), "hub" or "spec"
    text: str
    model_path: str
    model_name: str | None
    dataset: str
    corrupt: float
    mode: str
    seed: int
    own_data: bool  # the data is the one the model was trained on (then its folder may receive the report)
    normalize: tuple[Any, Any] | None = None
    input_size: list[int] | None = None
    in_chans: int | None = None
    checkpoints: list[tuple[int, str]] = field(default_factory=list)
    subset: dict[str, Any] | None = None  # the run's own subset (config.json): its samples, when probed on its data

    def subset_sizes(self, max_train_samples: int | None, max_eval_samples: int | None) -> dict[str, int | None]:
        """The subset sizes to load: those asked for, else (on the run's own data) the run's own."""
        own = (self.subset or {}) if self.own_data else {}
        return {"max_train_samples": max_train_samples if max_train_samples is not None
                else own.get("max_train_samples"),
                "max_eval_samples": max_eval_samples if max_eval_samples is not None else own.get("max_eval_samples")}

    def load(self, path: str, *, data: RunData, pretrained: bool, revision: str | None) -> Any:
        """Build or load the model at *path* (a checkpoint of this source)."""
        from masc_probe.models import load_model

        if self.kind == "spec":
            from accelerate.utils import set_seed

            set_seed(self.seed)  # a freshly built model's weights then follow the seed
            return load_model(path, num_classes=data.num_classes, in_chans=data.shape[0], input_size=data.shape,
                              pretrained=pretrained, revision=revision)
        return load_model(path, revision=revision if self.kind == "hub" else None)

    def default_output(self, all_checkpoints: bool) -> Path:
        """The run folder itself on its own data (``dynamics/`` inside it for all checkpoints), else ``runs/…``."""
        if self.kind == "folder" and all_checkpoints:
            return Path(self.text) / "dynamics"
        if self.kind == "folder" and self.own_data:
            return Path(self.text)
        name = Path(self.text.rstrip("/\\")).name if self.kind == "folder" else self.text
        return default_run_dir(f"probe-{name}", self.dataset, self.corrupt, self.mode, self.seed)


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.startswith((".", "~"))


def resolve_source(source: str | os.PathLike[str], *, dataset: str | None, corrupt: float | None,
                   corrupt_mode: str | None, seed: int | None, revision: str | None,
                   all_checkpoints: bool) -> ProbeSource:
    """Resolve *source* and fill the data settings from its saved config where the caller left them out.

    Raises:
        InputError: A missing folder, no dataset for a model spec, ``all_checkpoints`` on something without
            checkpoints.
        UnknownNameError: The source is no model spec, folder or hub repo.
    """
    from masc_probe.models import PAPER_MODELS, load_model, read_config

    text = os.fspath(source)
    checkpoints: list[tuple[int, str]] = []
    if text.startswith(HUB_PREFIX):
        # A model published by others (a transformers or timm repo) has no masc_probe section: dataset= then says
        # what to probe it on.
        kind, saved = "hub", read_config(text, revision=revision, required=False)
    elif text in PAPER_MODELS or text.startswith(TIMM_PREFIX):
        kind, saved = "spec", {}
    elif Path(text).expanduser().is_dir():
        kind, folder = "folder", Path(text).expanduser()
        checkpoints = [(epoch, str(path)) for epoch, path in run_checkpoints(folder)]
        if (folder / "config.json").is_file():
            saved = read_config(folder, required=False)
        elif all_checkpoints and checkpoints:
            saved = read_config(checkpoints[-1][1])  # a run still training: its checkpoints say what it is
        else:
            raise InputError(f"expected a run or checkpoint folder with config.json at {text}, found none"
                             + ("; its checkpoints can be probed with all_checkpoints/--all-checkpoints"
                                if checkpoints else ""))
    elif _looks_like_path(text):
        hint = f" (a Hub model is {HUB_PREFIX}{text})" if re.fullmatch(r"[\w.-]+/[\w.-]+", text) else ""
        raise InputError(f"expected a run folder at {text}, found no such folder{hint}")
    else:
        load_model(text)  # not a valid spec: raises the error that lists the valid forms
        raise InputError(f"expected a model spec, run folder or hf-hub:<user>/<repo>, got {text!r}")
    if all_checkpoints and not checkpoints:
        raise InputError(f"expected a run folder with checkpoints/epoch-NNNN folders for all_checkpoints, got {text}")

    saved_corruption = saved.get("corruption") or {}
    own = {"dataset": saved.get("dataset"), "corrupt": float(saved_corruption.get("rate") or 0.0),
           "mode": saved_corruption.get("mode") or "random",
           "seed": int(saved_corruption.get("seed") if saved_corruption.get("seed") is not None
                       else (saved.get("training") or {}).get("seed", 0))}
    asked = {"dataset": dataset, "corrupt": corrupt, "mode": corrupt_mode, "seed": seed}
    chosen = {k: asked[k] if asked[k] is not None else own[k] for k in own}
    if chosen["dataset"] is None:
        what = "a model spec" if kind == "spec" else f"{text}, whose config names no dataset,"
        raise InputError(f"expected a dataset to probe {what} on (dataset= / --dataset), got none")
    prep = saved.get("preprocessing") or {}
    normalize = None
    if prep.get("mean") is not None and prep.get("normalization") != "paper":
        normalize = (prep["mean"], prep["std"])
    return ProbeSource(
        kind=kind, text=text, model_path=text, model_name=saved.get("model") or (text if kind == "spec" else None),
        dataset=str(chosen["dataset"]), corrupt=float(chosen["corrupt"]), mode=str(chosen["mode"]),
        seed=int(chosen["seed"]), own_data=kind != "spec" and chosen == own,
        normalize=normalize, input_size=saved.get("input_size"), in_chans=saved.get("in_chans"),
        checkpoints=checkpoints, subset=saved.get("subset"),
    )

