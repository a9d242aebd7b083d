"""``masc-probe label-issues``: :func:`~masc_probe.label_issues.find_label_issues` on a run folder, an
``hf-hub:`` repo or a model spec, on the data it was trained on (or another), with the files written atomically.

A run folder supplies its dataset, corruption and preprocessing (``config.json``) and, when it was trained with
``record_margins``, its training margins for AUM. The test split, which the network never trained on, chooses the
layer and probe (``select=``) against the labels the report's rule gives it (``select``: by default re-drawn by the
run's own corruption recipe with a recorded seed, as a user with noisy data would have them; ``clean``: the true
ones), recorded as ``choosing_labels`` in ``label_issues.json``. Never the training rows: the network memorized their
labels, and a choice made on them falls on its most memorized layer.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from masc_probe import _atomic
from masc_probe._choices import ISSUE_PROBES
from masc_probe._params import DEFAULT_N_COMPONENTS, check_folds
from masc_probe.errors import InputError
from masc_probe.label_issues import LabelIssues, find_label_issues
from masc_probe.label_issues._choose import check_choice_rule
from masc_probe.label_issues._find import CSV_NAME, JSON_NAME
from masc_probe.label_issues._gallery import GALLERY_NAME, gallery_summary, write_gallery
from masc_probe.pipeline._inputs import check_device, default_run_dir, load_run_data, resolve_source
from masc_probe.report import write_run_html
from masc_probe.report._files import ISSUES_DIR

logger = logging.getLogger(__name__)

__all__ = ["label_issues_run"]

OUTPUT_FOLDER = ISSUES_DIR  # the run folder's file names are defined once, in report._files


def label_issues_run(source: str | os.PathLike[str], *, dataset: str | None = None, corrupt: float | None = None,
                     corrupt_mode: str | None = None, seed: int | None = None, layers: Sequence[str] | None = None,
                     probes: Sequence[str] = ISSUE_PROBES, folds: int = 2,
                     threshold: float | None = None, method: str = "probe",
                     n_components: float | int = DEFAULT_N_COMPONENTS,
                     max_memory: int | None = None, device: str | None = None, batch_size: int | None = None,
                     image_column: str | None = None, label_column: str | None = None, revision: str | None = None,
                     output_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                     gallery: int = 32, ranking: str = "auto", flag: str = "rank",
                     reducer: str | None = None, select: str = "noisy",
                     select_seed: int = 0) -> tuple[LabelIssues, Path]:  # fmt: skip
    """Find the training samples whose given labels are likely wrong, from the layers of *source*.

    Args:
        source: A run folder (``masc-probe train`` / ``run``), ``hf-hub:<user>/<repo>``, or a model spec.
        dataset, corrupt, corrupt_mode, seed, image_column, label_column: The data (default: the run's own; a
            model spec needs *dataset*).
        layers, probes, folds, threshold, n_components, max_memory, device, ranking, flag, reducer: As in
            :func:`find_label_issues`.
        method: ``probe`` (default) or ``aum``: rank by the run's training margins (a run trained with
            ``record_margins``). AUM is scored beside the probe whenever the margins exist and fit the data.
        batch_size: Batch of the forward pass (default 256).
        revision: Hub revision of an ``hf-hub:`` model.
        output_dir: Where ``label_issues.csv`` and ``label_issues.json`` go (default ``<run>/label-issues``, or
            ``runs/label-issues-<source>-…`` for a model spec or other data).
        progress: Progress bars.
        gallery: Also draw the top *gallery* suspects as ``label_issues.png`` (0: none); the summary's ``gallery``
            key says which were shown and, with true labels, how many were truly mislabeled. On a run folder's own
            data its ``report.html`` is rewritten to show them.
        select, select_seed: The test split's labels the layer x probe is chosen against (``noisy``: re-drawn by
            the run's corruption recipe with *select_seed*; ``clean``: the true ones), as
            :func:`find_label_issues`' ``select_rule`` and ``select_seed``.

    Returns:
        The :class:`LabelIssues` and the output folder.

    Raises:
        InputError: Folds < 2 or more folds than samples of a class, data without labels, a run folder without a
            model, ``method="aum"`` without margins for this data.
        UnknownNameError, DataUnavailableError, HubError: As loading the model or the data raises them.
    """
    check_folds(folds)
    if method not in ("probe", "aum"):
        raise InputError(f"expected method 'probe' or 'aum', got {method!r}")
    if isinstance(gallery, bool) or not isinstance(gallery, int) or gallery < 0:
        raise InputError(f"expected gallery to be an int >= 0 (samples shown; 0 for none), got {gallery!r}")
    check_device(device)
    check_choice_rule(select, select_seed)
    src = resolve_source(source, dataset=dataset, corrupt=corrupt, corrupt_mode=corrupt_mode, seed=seed,
                         revision=revision, all_checkpoints=False)
    if src.kind == "folder" and not (Path(src.text) / "model.safetensors").is_file():
        raise InputError(f"expected a run folder with a trained model (model.safetensors) at {src.text}, found "
                         "none; finish its training first (rerun `masc-probe train` with the same folder)")
    data = load_run_data(src.dataset, corrupt=src.corrupt, mode=src.mode, seed=src.seed, image_column=image_column,
                         label_column=label_column, normalize=src.normalize, input_size=src.input_size,
                         in_chans=src.in_chans)
    _check_class_counts(data.train, folds)
    margins = _run_margins(src, method)
    model = src.load(src.model_path, data=data, pretrained=False, revision=revision)
    issues = find_label_issues(model, data.train, layers=layers, probes=probes, folds=folds, seed=src.seed,
                               threshold=threshold, max_memory=max_memory, device=device, progress=progress,
                               margins=margins, select=data.test, n_components=n_components,
                               batch_size=batch_size or 256, method=method, ranking=ranking, flag=flag,
                               reducer=reducer, corruption_mode=src.mode if src.corrupt else None,
                               select_rule=select, select_seed=select_seed)  # fmt: skip
    out = Path(output_dir) if output_dir is not None else _default_output(src)
    summary = {"source": str(source), "dataset": src.dataset, "corruption": data.corruption,
               **issues.summary()}
    out.mkdir(parents=True, exist_ok=True)
    issues.write_csv(out / CSV_NAME)
    if gallery:
        write_gallery(issues, data.train, out / GALLERY_NAME, k=gallery)
        summary["gallery"] = gallery_summary(issues, gallery)
    else:
        (out / GALLERY_NAME).unlink(missing_ok=True)  # an older gallery would no longer match these issues
    _atomic.write_text(out / JSON_NAME, json.dumps(summary, indent=2) + "\n")
    if src.kind == "folder" and out == _default_output(src) and (Path(src.text) / "report.json").is_file():
        write_run_html(src.text)  # the run's page shows what was just found
    return issues, out


def _default_output(src: Any) -> Path:
    if src.kind == "folder" and src.own_data:
        return Path(src.text) / OUTPUT_FOLDER
    name = Path(src.text.rstrip("/\\")).name if src.kind == "folder" else src.text
    return default_run_dir(f"label-issues-{name}", src.dataset, src.corrupt, src.mode, src.seed)


def _check_class_counts(train: Any, folds: int) -> None:
    """Refuse more folds than samples of a class before the forward pass (find_label_issues checks it again)."""
    try:
        labels = np.asarray(train["label"]).reshape(-1)
    except (KeyError, TypeError, ValueError):
        return  # no label column here: find_label_issues says so in its own words
    if labels.size == 0:
        return
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < folds:
        raise InputError(f"expected at least folds={folds} samples of every class, got {int(counts.min())} of "
                         f"class {int(classes[np.argmin(counts)])}")


def _run_margins(src: Any, method: str) -> dict[int, float] | None:
    """The run's AUM per sample index (mean margin over its recorded epochs), when it has margins for this data."""
    from masc_probe.training._run_folder import read_margins

    saved = read_margins(src.text) if src.kind == "folder" else None
    if saved is not None and not src.own_data:
        logger.warning("label issues: %s's margins belong to its own training labels, not to this data; AUM left out",
                       src.text)
        saved = None
    if saved is None:
        if method == "aum":
            raise InputError(f"expected margins.safetensors in {src.text} for method aum (train with "
                             "--record-margins / record_margins=True on the run's own data), found none")
        return None
    epoch, index, margins = saved
    if len(epoch) == 0:
        if method == "aum":
            raise InputError(f"expected at least one epoch of margins in {src.text}, got none")
        return None
    return dict(zip(index.tolist(), margins.astype(np.float64).mean(axis=0).tolist()))
