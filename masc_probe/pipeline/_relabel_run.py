"""``masc-probe relabel`` on a run folder or ``hf-hub:`` memorizer: :func:`relabel_run` loads the data the run was
trained on and runs the paper's relabeling experiment (:mod:`masc_probe.pipeline.relabel`) on it, with the oracle
bound beside it on request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from masc_probe._choices import PROTOCOLS
from masc_probe._params import check_choice
from masc_probe.errors import InputError
from masc_probe.pipeline._inputs import check_device, default_run_dir, load_run_data, resolve_source

__all__ = ["relabel_run"]


def relabel_run(run_dir: str | os.PathLike[str], *, dataset: str | None = None, corrupt: float | None = None,
                corrupt_mode: str | None = None, seed: int | None = None, oracle: bool = False,
                layers: Sequence[str] | None = None, max_epochs: int = 30, batch_size: int | None = None,
                device: str | None = None, image_column: str | None = None, label_column: str | None = None,
                output_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                protocol: str = "clean", detector: str = "masc", ceiling: bool = False, select: str = "noisy",
                select_seed: int = 0) -> list[Any]:
    """The paper's relabeling experiment on a run folder, on the data it was trained on (see
    :func:`masc_probe.pipeline.relabel.relabel`); with *oracle*, the true-label-subspace bound as well, labelled as
    such.

    Args:
        run_dir: A run folder (or ``hf-hub:`` repo) with its config.
        dataset, corrupt, corrupt_mode, seed, image_column, label_column: The data (default: the run's own).
        oracle: Also run the oracle bound (written to ``relabel-oracle/``).
        layers: Candidate layers for the best MASC layer (default: the model's probe points).
        max_epochs: Fine-tuning epochs at most.
        batch_size: Fine-tuning batch size (default: the run's).
        device, progress: As in :func:`run_experiment`.
        output_dir: Folder of the experiment's files (default ``<run>/relabel``); the oracle's go beside it.
        protocol: ``clean`` (each training sample labelled by subspaces fitted on the other half, ``cross_fit=2``)
            or ``authors`` (subspaces fitted on the whole training set, ``cross_fit=1``, as the authors did).
        detector: ``masc`` (the paper's) or ``issues`` (find_label_issues' chosen layer x probe; clean protocol).
        ceiling: Also fine-tune on the true labels (the accuracy a perfect detector would give).
        select, select_seed: The labels the layer is chosen against on the test set's 20% part (``noisy``: re-drawn
            by the run's recipe with *select_seed*; ``clean``: the true ones), as in ``relabel``.

    Returns:
        ``[RelabelResult]``, then the oracle's when asked.

    Raises:
        InputError: A missing run folder, or a bad value. DataUnavailableError: the data cannot be read here.
    """
    from masc_probe.pipeline.relabel import relabel

    check_choice("protocol", protocol, PROTOCOLS)
    src = resolve_source(run_dir, dataset=dataset, corrupt=corrupt, corrupt_mode=corrupt_mode, seed=seed,
                         revision=None, all_checkpoints=False)
    if src.kind == "spec":
        raise InputError(f"expected a trained model (run folder or hf-hub: repo) to relabel, got the spec {run_dir!r}")
    check_device(device)
    data = load_run_data(src.dataset, corrupt=src.corrupt, mode=src.mode, seed=src.seed, image_column=image_column,
                         label_column=label_column, normalize=src.normalize, input_size=src.input_size,
                         in_chans=src.in_chans)
    if output_dir is None and src.kind == "hub":  # relabel() would default to a folder named after the repo spec
        output_dir = default_run_dir(f"relabel-{src.text}", src.dataset, src.corrupt, src.mode, src.seed)
    results = []
    for bound in (False, True) if oracle else (False,):
        out = None
        if output_dir is not None:
            out = Path(output_dir) if not bound else Path(output_dir).with_name(Path(output_dir).name + "-oracle")
        results.append(relabel(run_dir, data.train, data.test, seed=src.seed, oracle=bound, output_dir=out,
                               layers=list(layers) if layers is not None else None, max_epochs=max_epochs,
                               batch_size=batch_size, device=device, progress=progress,
                               cross_fit=1 if protocol == "authors" else 2, detector=detector,
                               ceiling=ceiling and not bound, select=select, select_seed=select_seed))
    return results
