"""The files of a run folder, each written so that a kill at any instant leaves a folder a rerun can continue from.

``checkpoints/epoch-NNNN/`` are drawn whole in a temporary folder and renamed into place; ``resume/`` (Accelerate's
state plus ``trainer.json``) is rotated through ``resume.tmp/`` and ``resume.old/`` so that either the old or the new
state is complete on disk; ``metrics.jsonl`` is rewritten from the resume state's history; ``margins.safetensors``
(``record_margins``) is rewritten after each epoch, before the resume state, and cut back to the resumed history on
a rerun; ``config.json`` carries the run's metadata under its ``"masc_probe"`` key (:func:`masc_config`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from masc_probe import _atomic
from masc_probe.errors import InputError
from masc_probe.models import save_model
from masc_probe.training._config import TrainConfig

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
MARGINS_NAME = "margins.safetensors"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
STATE_NAME = "trainer.json"
# Fields that may change between a run and its resumption without changing what it computes.
_RESUMABLE_CHANGES = {"progress", "resume", "output_dir", "eval_batch_size", "max_epochs", "checkpoint_every",
                      "checkpoint_dense_until", "keep_checkpoints", "corruption", "preprocessing", "dataset",
                      "cpu", "eval_every"}  # fmt: skip


def masc_config(config: TrainConfig, meta: dict[str, Any], *, epoch: int, row: dict[str, Any] | None,
                stopped: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The ``"masc_probe"`` section of a saved model's ``config.json``: the run's metadata."""
    shape = meta["shape"]
    corruption = dict(config.corruption or {})
    if corruption or meta["realized"]:
        corruption = {"mode": None, "rate": None, "seed": None, **corruption, "realized_rate": meta["realized"]}
    drop = {"model", "dataset", "output_dir", "progress", "resume", "corruption", "preprocessing", "cpu", "subset"}
    training = {k: v for k, v in config.to_dict().items() if k not in drop}
    training["num_processes"] = meta["world"]
    if stopped:
        training["stopped"] = stopped
    out: dict[str, Any] = {
        "model": meta["spec"],
        "in_chans": shape[0] if len(shape) == 3 else None,
        "input_size": shape,
        "dataset": config.dataset,
        "corruption": corruption or None,
        "preprocessing": dict(config.preprocessing) if config.preprocessing is not None else None,
        "training": training,
        "epoch": epoch,
    }
    if config.subset is not None:  # {"max_train_samples", "max_eval_samples", "seed"}: the samples it trained on
        out["subset"] = dict(config.subset)
    if meta.get("init"):  # {"seed", "init_sha256"}: what rebuilds the run's initial weights (training._init)
        out["init"] = meta["init"]
    if config.num_classes is not None:
        out["num_classes"] = config.num_classes
    if row is not None:
        out["metrics"] = {k: v for k, v in row.items() if not k.startswith("_")}
    return out


def save_checkpoint(accelerator: Any, model: nn.Module, run_dir: Path, config: TrainConfig, meta: dict[str, Any],
                    *, epoch: int, row: dict[str, Any] | None) -> None:  # fmt: skip
    """Write ``checkpoints/epoch-NNNN/`` whole into a temporary folder, then rename it into place."""
    final = checkpoint_dir(run_dir, epoch)
    tmp = final.with_name(f".{final.name}.tmp")
    remove(tmp)
    save_model(accelerator.unwrap_model(model), tmp, masc_config=masc_config(config, meta, epoch=epoch, row=row))
    remove(final)
    _atomic.publish(tmp, final)


def save_resume(accelerator: Any, run_dir: Path, config: TrainConfig, history: list[dict[str, Any]], *,
                weights: bool = True) -> None:  # fmt: skip
    """Rewrite ``resume/`` so that at every instant either the old or the new state is complete on disk.

    ``weights=False`` (a memorized run: nothing left to train) keeps only ``trainer.json``, the history and config
    a rerun reads to return the finished run; Accelerate's state (weights, optimizer, RNGs: three times the model's
    size under Adam) is dropped.
    """
    tmp, final, old = run_dir / "resume.tmp", run_dir / "resume", run_dir / "resume.old"
    if accelerator.is_main_process:
        remove(tmp)
    accelerator.wait_for_everyone()
    if weights:
        accelerator.save_state(str(tmp), safe_serialization=True)
    elif accelerator.is_main_process:
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"epoch": history[-1]["epoch"], "history": history, "config": config.to_dict(), "weights": weights}
        # trainer.json is written last (and atomically): a folder with it is a complete state.
        _atomic.write_text(tmp / STATE_NAME, json.dumps(state, indent=1))
        if final.exists():
            remove(old)
            _atomic.rename(final, old)
        _atomic.rename(tmp, final)
        remove(old)
    accelerator.wait_for_everyone()


def settle_resume(run_dir: Path) -> None:
    """Leave the newest complete state in resume/ and nothing in resume.tmp/ or resume.old/.

    A kill during :func:`save_resume` can leave the newest state in resume.tmp/ (complete once its trainer.json
    exists) and the one before in resume/ or resume.old/.
    """
    best: tuple[int, Path] | None = None
    for name in ("resume", "resume.tmp", "resume.old"):
        try:
            epoch = int(json.loads((run_dir / name / STATE_NAME).read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if best is None or epoch > best[0]:
            best = (epoch, run_dir / name)
    if best is not None and best[1].name != "resume":
        remove(run_dir / "resume")
        _atomic.rename(best[1], run_dir / "resume")
    for name in ("resume.tmp", "resume.old"):
        remove(run_dir / name)


def checkpoint_dir(run_dir: Path, epoch: int) -> Path:
    """Where the checkpoint of *epoch* is kept: ``checkpoints/epoch-NNNN``."""
    return run_dir / "checkpoints" / f"epoch-{epoch:04d}"


def run_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``[(epoch, folder)]`` of the complete ``checkpoints/epoch-NNNN`` folders of a run folder, by epoch.

    A checkpoint folder is renamed into place whole (:func:`save_checkpoint`), so a folder of that name is complete;
    its ``config.json`` is checked all the same (``load_model`` needs it).
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _EPOCH_DIR.match(p.name)) and (p / "config.json").is_file()]
    return sorted(found)


def check_same_run(saved: dict[str, Any], config: TrainConfig, run_dir: Path) -> None:
    """Refuse to resume a run folder that holds a run with other settings than *config*.

    A field the saved config lacks was added to :class:`TrainConfig` after the run started; it counts as its
    default, which is what the code that wrote the run did (a new field's default must keep the old behaviour).
    """
    now = config.to_dict()
    defaults = TrainConfig().to_dict()
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    diff = sorted(k for k in set(saved) | set(now) if k not in _RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if diff:
        raise InputError(
            f"{run_dir} holds a run with other settings ({', '.join(f'{k}={saved.get(k)!r}' for k in diff)}); "
            f"use another output_dir or resume=False to start over"
        )


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl is derived from the resume state's history, so a rewrite can never lose or repeat an epoch."""
    lines = [json.dumps({k: v for k, v in row.items() if not k.startswith("_")}) for row in history]
    _atomic.write_text(run_dir / METRICS_NAME, "".join(line + "\n" for line in lines))


def write_margins(run_dir: Path, epochs: list[int], index: np.ndarray, margins: list[np.ndarray]) -> Path:
    """Rewrite ``margins.safetensors`` (atomically): ``margins`` (epochs, N) float32, row e the margins after
    ``epoch[e]``, column j those of the sample whose ``index`` is ``index[j]``."""
    from safetensors.numpy import save_file

    tensors = {"epoch": np.asarray(epochs, dtype=np.int64), "index": np.ascontiguousarray(index, dtype=np.int64),
               "margins": np.ascontiguousarray(np.stack(margins) if margins else np.zeros((0, len(index))),
                                               dtype=np.float32)}
    return _atomic.write_with(run_dir / MARGINS_NAME, lambda tmp: save_file(tensors, str(tmp)))


def read_margins(run_dir: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(epoch (E,), index (N,), margins (E, N))`` from a run folder's ``margins.safetensors``; None without one.

    Raises:
        InputError: The file is not a margins file (missing tensors, shapes that do not fit together).
    """
    from safetensors.numpy import load_file

    path = Path(run_dir) / MARGINS_NAME
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        epoch, index, margins = tensors["epoch"], tensors["index"], tensors["margins"]
    except (KeyError, OSError, ValueError) as err:
        raise InputError(f"expected {path} to hold epoch, index and margins tensors, got {err}") from None
    if margins.shape != (len(epoch), len(index)):
        raise InputError(f"expected margins of shape ({len(epoch)}, {len(index)}) in {path}, got {margins.shape}")
    return epoch, index, margins


def resumed_margins(run_dir: Path, history: list[dict[str, Any]]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The recorded margins of the epochs in *history* (a resumed run's): ``[(epoch, index, margins)]``."""
    saved = read_margins(run_dir) if history else None
    if saved is None:
        if history:
            logger.warning("%s has no %s for its %d finished epochs; margins are recorded from here on", run_dir,
                           MARGINS_NAME, len(history))
        return []
    epoch, index, margins = saved
    done = {row["epoch"] for row in history}
    return [(int(e), index, m) for e, m in zip(epoch.tolist(), margins) if e in done]


def remove(path: Path) -> None:
    """Delete a file or a folder tree, if present."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()




_settle_resume = settle_resume  # the name tests/test_training.py imports
