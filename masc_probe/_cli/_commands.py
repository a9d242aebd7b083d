"""The ``masc-probe`` subcommands: each turns the parsed flags into the arguments of ONE library call, then shows
what it returned (:mod:`._summary`).

A flag left out is None and is not passed (:func:`_given`): the library's default applies, so the CLI has no
defaults of its own (tests/test_cli_defaults.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from masc_probe._cli._summary import say, show_issues, show_layers, show_relabel, show_report, show_training


def _given(**kwargs: Any) -> dict[str, Any]:
    """The keyword arguments a user gave a value (None: a flag left out, whose default is the library's)."""
    return {key: value for key, value in kwargs.items() if value is not None}


def _probing(ns: argparse.Namespace) -> dict[str, Any]:
    # --n-components fixes MASC's subspace size for the choice too: only the layer is then chosen.
    return {"layers": ns.layers, "probes": ns.probes, "labels": ns.labels, "n_components": ns.n_components,
            "max_memory": ns.max_memory, "reducer": ns.reducer, "controls": ns.controls, "select": ns.select,
            "select_split": ns.select_split, "select_seed": ns.select_seed, "select_crossfit": ns.select_crossfit,
            "select_size": ns.n_components}


def _data(ns: argparse.Namespace) -> dict[str, Any]:
    return {"image_column": ns.image_column, "label_column": ns.label_column}


def _subset(ns: argparse.Namespace) -> dict[str, Any]:
    return {"max_train_samples": ns.max_train_samples, "max_eval_samples": ns.max_eval_samples}


def _training(ns: argparse.Namespace) -> dict[str, Any]:
    return {"model": ns.model, "dataset": ns.dataset, "corrupt": ns.corrupt,
            "corrupt_mode": ns.corrupt_mode, "seed": ns.seed,
            "preset": ns.preset, "max_epochs": ns.max_epochs, "batch_size": ns.batch_size,
            "mixed_precision": ns.mixed_precision, "device": ns.device, "revision": ns.revision,
            "output_dir": ns.output_dir, "progress": not ns.quiet, "protocol": ns.protocol,
            "keep_checkpoints": ns.keep_checkpoints, "record_margins": ns.record_margins,
            "eval_every": ns.eval_every, "compile": ns.compile, **_data(ns), **_subset(ns)}


def cmd_run(ns: argparse.Namespace) -> int:
    """``masc-probe [run]``: train → probe → report (→ push)."""
    from masc_probe.pipeline import run_experiment

    result = run_experiment(**_given(**_training(ns), **_probing(ns), push_to_hub=ns.push_to_hub,
                                     save_probes=ns.save_probes))
    show_report(result, quiet=ns.quiet)
    if result.pushed:
        say(f"pushed to {result.pushed}", quiet=False)
    return 0


def cmd_train(ns: argparse.Namespace) -> int:
    """``masc-probe train``: train until memorized (rerun to resume)."""
    from masc_probe.pipeline import train_model

    show_training(train_model(**_given(**_training(ns))), quiet=ns.quiet)
    return 0


def cmd_probe(ns: argparse.Namespace) -> int:
    """``masc-probe probe SOURCE``: probe a run folder, hf-hub: model or model spec."""
    from masc_probe.pipeline import probe_source

    result = probe_source(ns.source, **_given(
        dataset=ns.dataset, corrupt=ns.corrupt, corrupt_mode=ns.corrupt_mode, seed=ns.seed,
        all_checkpoints=ns.all_checkpoints, batch_size=ns.batch_size, device=ns.device, revision=ns.revision,
        pretrained=ns.pretrained, output_dir=ns.output_dir, progress=not ns.quiet, protocol=ns.protocol,
        save_probes=ns.save_probes, **_probing(ns), **_data(ns), **_subset(ns)))
    show_report(result, quiet=ns.quiet)
    return 0


def cmd_layers(ns: argparse.Namespace) -> int:
    """``masc-probe layers --model SPEC [--all]``: the module-level layer names (every tappable value with
    ``--all``); * marks those probed by default."""
    from masc_probe.pipeline import layer_table

    show_layers(layer_table(ns.model, num_classes=ns.num_classes, in_chans=ns.in_chans, input_size=ns.input_size,
                            revision=ns.revision, nodes=ns.all), nodes=ns.all)
    return 0


def cmd_relabel(ns: argparse.Namespace) -> int:
    """``masc-probe relabel RUN_DIR``: the paper's relabeling experiment (plus the oracle bound with --oracle)."""
    from masc_probe.pipeline import relabel_run

    results = relabel_run(ns.run_dir, **_given(
        dataset=ns.dataset, corrupt=ns.corrupt, corrupt_mode=ns.corrupt_mode, seed=ns.seed, oracle=ns.oracle,
        layers=ns.layers, max_epochs=ns.max_epochs, batch_size=ns.batch_size, device=ns.device,
        output_dir=ns.output_dir, progress=not ns.quiet, protocol=ns.protocol, detector=ns.detector,
        ceiling=ns.ceiling, select=ns.select, select_seed=ns.select_seed, **_data(ns)))
    show_relabel(results, quiet=ns.quiet)
    return 0


def cmd_label_issues(ns: argparse.Namespace) -> int:
    """``masc-probe label-issues RUN|MODEL``: the suspect labels, most suspect first, and how they were found."""
    from masc_probe.pipeline import label_issues_run

    issues, out = label_issues_run(ns.source, **_given(
        dataset=ns.dataset, corrupt=ns.corrupt, corrupt_mode=ns.corrupt_mode, seed=ns.seed,
        layers=ns.layers, probes=ns.probes, folds=ns.folds, threshold=ns.threshold, method=ns.method,
        n_components=ns.n_components, max_memory=ns.max_memory, device=ns.device, batch_size=ns.batch_size,
        image_column=ns.image_column, label_column=ns.label_column, revision=ns.revision, output_dir=ns.output_dir,
        progress=not ns.quiet, gallery=ns.gallery, ranking=ns.ranking, flag=ns.flag,
        reducer=ns.reducer, select=ns.select, select_seed=ns.select_seed))  # fmt: skip
    show_issues(issues, out, quiet=ns.quiet, gallery=ns.gallery != 0)
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    """``masc-probe report RUN_DIR``: the run folder's one-page report, report.html."""
    from masc_probe.report import write_run_html

    say(f"wrote {write_run_html(ns.run_dir)}", quiet=ns.quiet, path=Path(ns.run_dir) / "report.html")
    return 0


def cmd_push(ns: argparse.Namespace) -> int:
    """``masc-probe push RUN_DIR --repo user/name [--private] [--with-probes] [--dry-run [DIR]]``."""
    from masc_probe.hub import push_run

    dry = None if ns.dry_run is None else (ns.dry_run or str(Path(ns.run_dir) / "hub-dry-run"))
    where = push_run(ns.run_dir, ns.repo, private=ns.private, revision=ns.revision, dry_run_dir=dry,
                     with_probes=ns.with_probes)
    message = f"dry run: the files a push would upload are in {where}" if dry is not None else f"pushed: {where}"
    say(message, quiet=ns.quiet, path=where)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "train": cmd_train, "probe": cmd_probe, "layers": cmd_layers, "relabel": cmd_relabel,
    "label-issues": cmd_label_issues, "push": cmd_push, "report": cmd_report}
