"""``masc-probe``: flags in, one library call out.

``masc-probe`` alone runs the embedded default (the paper's MLP on scikit-learn's real digits with 80% of the labels
corrupted); ``masc-probe --model timm/resnet18 --dataset cifar10 --corrupt 0.8`` runs train → probe → report on
anything else. Subcommands run the parts: ``run``, ``train``, ``probe``, ``layers``, ``relabel``, ``label-issues``,
``push``, ``report``.

Every error ends the program with one line on stderr (``MASC_PROBE_DEBUG=1`` adds the traceback) and an exit code:
2 for a usage error (a bad flag, value or name), 1 for anything else (the Hub, I/O, the model itself); nothing is
left half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from masc_probe._version import __version__
from masc_probe._params import (
    DEFAULT_N_COMPONENTS,
    check_folds,
    check_max_memory,
    check_n_components,
    check_probes,
    parse_number,
)
from masc_probe._choices import (
    CHECKPOINT_POLICIES,
    CONTROLS,
    CORRUPTION_MODES,
    DEFAULT_PROBES,
    ISSUE_FLAGS,
    ISSUE_PROBES,
    ISSUE_RANKINGS,
    MIXED_PRECISION,
    PIPELINE_LABELS,
    PIPELINE_PRESETS,
    PROBE_NAMES,
    PROTOCOLS,
    REDUCERS,
    SELECT_RULES,
)

SUBCOMMANDS = ("run", "train", "probe", "layers", "relabel", "label-issues", "push", "report")
_EXIT_USAGE = 2  # a bad flag, value or name: the user can fix the command
_EXIT_FAILURE = 1  # anything else: the Hub, the disk, the model's own forward, a bug


class _UsageError(Exception):
    """A bad flag or value found by the parser."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``masc-probe: error: …``) and exit code 2."""

    def error(self, message: str) -> NoReturn:  # argparse prints usage + message over several lines by default
        raise _UsageError(message)


# ----------------------------------------------------------------------------------------------- value parsers
def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1], got {text!r}")
    return value


def _reducer(text: str) -> str | dict[str, str]:
    """``NAME`` for every layer, or ``LAYER=NAME,LAYER=NAME`` per layer (NAME one of REDUCERS, or random:D)."""
    pairs = [part.partition("=") for part in text.split(",")] if "=" in text else [("", "", text)]
    for layer, eq, name in pairs:
        if (eq and not layer) or not (name in REDUCERS or (name.startswith("random:") and name[7:].isdigit()
                                                          and not eq)):
            raise argparse.ArgumentTypeError(f"expected {'|'.join(REDUCERS)} or LAYER=NAME,…, got {text!r}")
    return pairs[0][2] if not pairs[0][1] else {layer: name for layer, _, name in pairs}


def _checked(check: Callable[[Any], Any], parse: Callable[[str], Any] = str) -> Callable[[str], Any]:
    """A flag's value through the library's own validator (masc_probe._params), its error as argparse's one line."""

    def convert(text: str) -> Any:
        try:
            return check(parse(text))
        except ValueError as exc:  # InputError is a ValueError
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = check.__name__.removeprefix("check_")  # argparse names the type in some messages
    return convert


_n_components = _checked(check_n_components, parse_number)
_memory = _checked(check_max_memory)
_folds = _checked(check_folds, parse_number)


def _open_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _controls(text: str) -> tuple[str, ...]:
    names = () if text.strip() == "none" else _names(text)
    if any(name not in CONTROLS for name in names):
        raise argparse.ArgumentTypeError(f"expected controls among {','.join(CONTROLS)} or none, got {text!r}")
    return names


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return names


_probes = _checked(check_probes, _names)


# ---------------------------------------------------------------------------------------------------- the parser
def _add_data(p: argparse.ArgumentParser, *, corrupt_default: float | None) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help="built-in (digits, mnist-5k), Hub name (mnist, fashion_mnist, cifar10, cifar100, "
                        "tiny-imagenet, or any user/name), or a local folder/file (default: digits; for a run "
                        "folder, the dataset it was trained on)")
    g.add_argument("--corrupt", type=_fraction, default=None, metavar="P",
                   help="label corruption rate of the training split" +
                        (f" (default {corrupt_default})" if corrupt_default is not None else ""))
    g.add_argument("--corrupt-mode", default=None, choices=CORRUPTION_MODES,
                   help="how labels are corrupted (default random, as the paper)")
    g.add_argument("--seed", type=_non_negative_int, default=None, help="seed of corruption, init and order (0)")
    g.add_argument("--image-column", default=None, help="image column of a Hub or parquet dataset")
    g.add_argument("--label-column", default=None, help="label column of a Hub or parquet dataset")
    g.add_argument("--batch-size", type=_positive_int, default=None, help="batch size (default: the preset's)")


def _add_subset(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("subset (as the Hugging Face example scripts)")
    g.add_argument("--max-train-samples", type=_positive_int, default=None, metavar="N",
                   help="train and probe on a stratified subset of N training samples (drawn by --seed, recorded "
                        "in the report and the card): try a big dataset first")
    g.add_argument("--max-eval-samples", type=_positive_int, default=None, metavar="N",
                   help="score on a stratified subset of N test samples (drawn by --seed, recorded)")


def _add_probe(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("probing")
    g.add_argument("--layers", type=_names, default=None, metavar="A,B,…",
                   help="layers to probe (names from `masc-probe layers`; default: the model's probe points)")
    g.add_argument("--probes", type=_probes, default=None, metavar="P,…",
                   help=f"probes: {', '.join(PROBE_NAMES)} (default {','.join(DEFAULT_PROBES)})")
    g.add_argument("--labels", choices=PIPELINE_LABELS, default=None,
                   help="label sets to fit subspaces on (default both)")
    g.add_argument("--n-components", type=_n_components, default=None, metavar="T|K",
                   help=f"MASC subspace size: variance fraction in (0,1) or a count (default {DEFAULT_N_COMPONENTS})")
    g.add_argument("--max-memory", type=_memory, default=None, metavar="SIZE",
                   help="memory budget of the probes, e.g. 4GB (decides the exact solver per layer)")
    g.add_argument("--reducer", type=_reducer, default=None, metavar="NAME|LAYER=NAME,…",
                   help="how a layer's value becomes rows: flatten (default, the paper's), cls or mean (token maps "
                        "(B,T,D)), gap (conv maps), auto (cls for transformer blocks, flatten elsewhere); one for "
                        "every layer but the input, or per layer as LAYER=NAME,…")
    g.add_argument("--select", choices=SELECT_RULES, default=None,
                   help="how each network (trained, init, input) chooses its layer and MASC subspace size on a "
                        "choosing part of the test images: noisy (labels re-drawn by the run's recipe, default), "
                        "clean (true labels) or none; the headline compares the choices on the other part")
    g.add_argument("--select-split", type=_open_fraction, default=None, metavar="FRACTION",
                   help="share of the test images, per class, in the choosing part (default 0.5)")
    g.add_argument("--select-seed", type=_non_negative_int, default=None, metavar="N",
                   help="seed of the split and of the noisy labels (default 0; recorded in the report)")
    g.add_argument("--select-crossfit", action="store_true", default=None,
                   help="also choose on the evaluation part and judge on the choosing part (recorded beside)")
    g.add_argument("--controls", type=_controls, default=None, metavar="init,input|none",
                   help="what each layer is compared with on the same test images: init (the same network at its "
                        "initial weights; a run's own epoch 0) and input (the raw input); default both, none to skip")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, … (default: cuda when available)")
    p.add_argument("--revision", default=None, help="Hub revision of an hf-hub: model")
    p.add_argument("--output-dir", default=None, metavar="DIR", help="where results go (default runs/<name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no table")
    p.add_argument("--verbose", action="store_true", help="also the library's internal plan and details (DEBUG)")


def _add_protocol(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help=f"clean (default) or authors: the MASC authors' {what}; recorded in the report")


def _add_train(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--preset", choices=PIPELINE_PRESETS, default=None,
                   help="optimizer/lr/batch preset: paper (the authors'), fast (Adam 3e-4, batch 128, lr halved at "
                        "loss plateaus), auto = fast on built-in data under the clean protocol, paper otherwise")
    g.add_argument("--max-epochs", type=_positive_int, default=None, help="stop after this many epochs (500)")
    g.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=None,
                   help="bf16 or fp16 autocast (faster on a GPU; changes the numbers, so recorded; default no)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the network (faster on a GPU after a compile; changes the numbers, recorded)")
    g.add_argument("--eval-every", type=_positive_int, default=None, metavar="K",
                   help="test accuracy, and training accuracy on both label sets, after every K-th epoch and the "
                        "last (default 10); the stop rule checks every epoch either way")
    g.add_argument("--keep-checkpoints", choices=CHECKPOINT_POLICIES, default=None,
                   help="checkpoints/epoch-NNNN to keep (default final: the last epoch only), dense (epochs 0, 2, "
                        "…, 20, then every 5th) or all; `probe --all-checkpoints` reads them")
    g.add_argument("--record-margins", action="store_true",
                   help="keep every training sample's margin after each epoch (margins.safetensors): the record "
                        "`label-issues --method aum` ranks by")


def build_parser() -> argparse.ArgumentParser:
    """The ``masc-probe`` argument parser (``run`` is the default subcommand)."""
    parser = _Parser(prog="masc-probe", description=__doc__.split("\n\n")[1],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"masc-probe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="train until memorized, probe every layer, write the report (default)")
    run.add_argument("--model", default=None, help="mlp, cnn, alexnet, resnet18-cifar, timm/<name> (default mlp)")
    _add_data(run, corrupt_default=0.8)
    _add_subset(run)
    _add_train(run)
    _add_probe(run)
    _add_common(run)
    _add_protocol(run, "fixed order, running-accuracy stop rule and train-mode extraction")
    run.add_argument("--push-to-hub", default=None, metavar="USER/NAME", help="publish the run when done")
    run.add_argument("--save-probes", action="store_true",
                     help="keep the fitted probes in RUN/probes (safetensors + JSON); a push then publishes them")

    train = sub.add_parser("train", help="train a model until it memorizes corrupted labels")
    train.add_argument("--model", default=None, help="model spec (default mlp)")
    _add_data(train, corrupt_default=0.8)
    _add_subset(train)
    _add_train(train)
    _add_common(train)
    _add_protocol(train, "fixed order and running-accuracy stop rule")

    probe = sub.add_parser("probe", help="probe a model spec, run folder or hf-hub: model")
    probe.add_argument("source", help="run folder, hf-hub:<user>/<repo>, timm/<name>, or a paper model name")
    _add_data(probe, corrupt_default=None)
    _add_subset(probe)
    _add_probe(probe)
    _add_common(probe)
    _add_protocol(probe, "extraction: train mode, one image at a time")
    probe.add_argument("--all-checkpoints", action="store_true",
                       help="probe every kept checkpoint of a run folder (a report with an epoch axis)")
    probe.add_argument("--pretrained", action="store_true",
                       help="timm/<name> only: start from timm's pretrained weights (downloads them)")
    probe.add_argument("--save-probes", action="store_true",
                       help="keep the fitted probes in OUTPUT_DIR/probes (safetensors + JSON) for `push --with-probes`")

    layers = sub.add_parser("layers", help="list the layer names a model can be probed at")
    layers.add_argument("--model", required=True, help="model spec or run folder")
    layers.add_argument("--revision", default=None, help="Hub revision of an hf-hub: model")
    layers.add_argument("--num-classes", type=_positive_int, default=10)
    layers.add_argument("--in-chans", type=_positive_int, default=None)
    layers.add_argument("--input-size", type=_positive_int, default=None, help="image height = width")
    layers.add_argument("--all", action="store_true",
                        help="also list torch.fx nodes that are not modules (getattr, getitem, functions, …)")

    relabel = sub.add_parser("relabel", help="suggest true labels for the training set from the best MASC layer")
    relabel.add_argument("run_dir", help="a run folder written by `masc-probe run` or `train`")
    _add_data(relabel, corrupt_default=None)
    _add_common(relabel)
    relabel.add_argument("--oracle", action="store_true",
                         help="also report the bound with true-label subspaces (leaks the answer; labelled so)")
    relabel.add_argument("--max-epochs", type=_positive_int, default=None, help="fine-tuning epochs (default 30)")
    relabel.add_argument("--layers", type=_names, default=None, metavar="A,B,…",
                         help="candidate layers for the best MASC layer (default: the model's probe points)")
    relabel.add_argument("--detector", choices=("masc", "issues"), default=None,
                         help="masc: the paper's best MASC layer (default); issues: label-issues' chosen layer x "
                              "probe (masc, ncm, lda)")
    relabel.add_argument("--ceiling", action="store_true",
                         help="also fine-tune on the true labels (the ceiling a perfect detector would reach)")
    relabel.add_argument("--select", choices=("noisy", "clean"), default=None,
                         help="the labels the layer is chosen against on the test set's 20%% part: noisy (re-drawn "
                              "by the run's recipe, default) or clean (true labels); recorded in relabel.json")
    relabel.add_argument("--select-seed", type=_non_negative_int, default=None, metavar="N",
                         help="seed of the noisy labels (default 0)")
    _add_protocol(relabel, "relabeling with subspaces fitted on the whole training set")

    issues = sub.add_parser("label-issues", help="rank the training samples whose labels are likely wrong, from the "
                                                 "layers of a trained model (scored against the truth when known)")
    issues.add_argument("source", metavar="RUN|MODEL",
                        help="run folder (its data, corruption and margins), hf-hub:<user>/<repo>, or a model spec")
    _add_data(issues, corrupt_default=None)
    issues.add_argument("--layers", type=_names, default=None, metavar="A,B,…",
                        help="candidate layers (default: the model's probe points)")
    issues.add_argument("--probes", type=_probes, default=None, metavar="P,…",
                        help=f"candidate probes (default {','.join(ISSUE_PROBES)}; qda is slow on wide layers); the "
                             "best layer x "
                             "probe on the test split is chosen")
    issues.add_argument("--folds", type=_folds, default=None, help="folds K: each sample is scored by probes fitted on "
                                                               "the other K-1 (default 2)")
    issues.add_argument("--threshold", type=float, default=None,
                        help="flag the samples whose ranking score is below this (instead of --flag)")
    issues.add_argument("--method", choices=("probe", "aum"), default=None,
                        help="rank by the chosen probe (default) or by AUM (a run trained with --record-margins)")
    issues.add_argument("--ranking", choices=("auto", *ISSUE_RANKINGS), default=None,
                        help="how the chosen probe's probabilities rank the samples (default auto: chosen on the "
                             "test split, where a share of the labels is re-drawn at random)")
    issues.add_argument("--flag", choices=ISSUE_FLAGS, default=None,
                        help="which samples are flagged (default rank, the estimated share of wrong labels' worth of "
                             "the lowest-ranked; or a confident-learning filter)")
    issues.add_argument("--reducer", choices=REDUCERS, default=None,
                        help="how a layer's value becomes rows: flatten (default), cls, mean, gap or auto")
    issues.add_argument("--n-components", type=_n_components, default=None, metavar="T|K",
                        help=f"MASC threshold (default {DEFAULT_N_COMPONENTS})")
    issues.add_argument("--max-memory", type=_memory, default=None, metavar="SIZE", help="memory budget, e.g. 4GB")
    issues.add_argument("--out", "--output-dir", dest="output_dir", default=None, metavar="DIR",
                        help="where label_issues.csv, .json and .png go (default RUN/label-issues)")
    issues.add_argument("--device", default=None, help="cpu, cuda, cuda:1, …")
    issues.add_argument("--revision", default=None, help="Hub revision of an hf-hub: model")
    issues.add_argument("--quiet", action="store_true", help="no progress bars, no summary")
    issues.add_argument("--gallery", type=_non_negative_int, default=None, metavar="K",
                        help="draw the K most suspect samples as label_issues.png (default 32; 0 for none)")
    issues.add_argument("--select", choices=("noisy", "clean"), default=None,
                        help="the test split's labels the layer x probe is chosen against: noisy (re-drawn by the "
                             "run's recipe, default) or clean (true labels); recorded in label_issues.json")
    issues.add_argument("--select-seed", type=_non_negative_int, default=None, metavar="N",
                        help="seed of the noisy labels (default 0)")

    push = sub.add_parser("push", help="publish a run folder with its report and card in one commit")
    push.add_argument("run_dir", help="the run folder")
    push.add_argument("--repo", required=True, metavar="USER/NAME", help="target Hub repo")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", default=None, help="branch to commit to (default main)")
    push.add_argument("--with-probes", action="store_true",
                      help="also publish the fitted probes of RUN_DIR/probes under masc/probes/ (same commit)")
    push.add_argument("--dry-run", nargs="?", const="", default=None, metavar="DIR",
                      help="write the files that would be pushed into DIR (default RUN_DIR/hub-dry-run); "
                           "upload nothing")
    push.add_argument("--quiet", action="store_true")

    page = sub.add_parser("report", help="(re)write a run folder's report.html from its report.json, plots and "
                                         "label issues")
    page.add_argument("run_dir", help="a run folder (or any folder with report.json)")
    page.add_argument("--quiet", action="store_true")
    return parser


def _normalize_argv(argv: Sequence[str]) -> list[str]:
    """``masc-probe [flags]`` means ``masc-probe run [flags]``; a first word that is no command is refused.

    Raises:
        _UsageError: The first argument is a word (not a flag) that names no subcommand.
    """
    args = list(argv)
    if args and not args[0].startswith("-") and args[0] not in SUBCOMMANDS:
        import difflib

        near = difflib.get_close_matches(args[0], SUBCOMMANDS, n=1, cutoff=0.6)
        raise _UsageError(f"unknown command {args[0]!r}; " + (f"did you mean {near[0]!r}?" if near else
                                                              f"commands: {', '.join(SUBCOMMANDS)}"))
    if not args or (args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help", "--version")):
        args.insert(0, "run")
    return args


# ---------------------------------------------------------------------------------------------------- the commands
# Each handler turns the parsed flags into the arguments of ONE library call, then prints what it returned. A flag
# left out is None and is not passed (_given): the library's default applies, so the CLI has no defaults of its own
# (tests/test_cli_defaults.py).
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


def _training(ns: argparse.Namespace) -> dict[str, Any]:
    return {"model": ns.model, "dataset": ns.dataset, "corrupt": ns.corrupt,
            "corrupt_mode": ns.corrupt_mode, "seed": ns.seed,
            "preset": ns.preset, "max_epochs": ns.max_epochs, "batch_size": ns.batch_size,
            "mixed_precision": ns.mixed_precision, "device": ns.device, "revision": ns.revision,
            "output_dir": ns.output_dir, "progress": not ns.quiet, "protocol": ns.protocol,
            "keep_checkpoints": ns.keep_checkpoints, "record_margins": ns.record_margins,
            "eval_every": ns.eval_every, "compile": ns.compile, **_data(ns), **_subset(ns)}


def _subset(ns: argparse.Namespace) -> dict[str, Any]:
    return {"max_train_samples": ns.max_train_samples, "max_eval_samples": ns.max_eval_samples}


def cmd_run(ns: argparse.Namespace) -> int:
    """``masc-probe [run]``: train → probe → report (→ push)."""
    from masc_probe.pipeline import run_experiment

    result = run_experiment(**_given(**_training(ns), **_probing(ns), push_to_hub=ns.push_to_hub,
                                     save_probes=ns.save_probes))
    _show_report(result, quiet=ns.quiet)
    if result.pushed:
        _say(f"pushed to {result.pushed}", quiet=False)
    return 0


def cmd_train(ns: argparse.Namespace) -> int:
    """``masc-probe train``: train until memorized (rerun to resume)."""
    from masc_probe.pipeline import train_model

    result = train_model(**_given(**_training(ns)))
    history = result.training.history
    if history and not ns.quiet:
        last = history[-1]
        print(f"epoch {last['epoch']} ({result.training.stopped}): train accuracy on the given labels "
              f"{last['train_accuracy_corrupted']:.4f}, test accuracy {_num(last.get('test_accuracy'))}")
    _say(f"run folder: {result.output_dir}", quiet=ns.quiet, path=result.output_dir)
    return 0


def cmd_probe(ns: argparse.Namespace) -> int:
    """``masc-probe probe SOURCE``: probe a run folder, hf-hub: model or model spec."""
    from masc_probe.pipeline import probe_source

    result = probe_source(ns.source, **_given(
        dataset=ns.dataset, corrupt=ns.corrupt, corrupt_mode=ns.corrupt_mode, seed=ns.seed,
        all_checkpoints=ns.all_checkpoints, batch_size=ns.batch_size, device=ns.device, revision=ns.revision,
        pretrained=ns.pretrained, output_dir=ns.output_dir, progress=not ns.quiet, protocol=ns.protocol,
        save_probes=ns.save_probes, **_probing(ns), **_data(ns), **_subset(ns)))
    _show_report(result, quiet=ns.quiet)
    return 0


def cmd_layers(ns: argparse.Namespace) -> int:
    """``masc-probe layers --model SPEC [--all]``: the module-level layer names (every tappable value with
    ``--all``); * marks those probed by default."""
    from masc_probe.pipeline import layer_table

    table = layer_table(ns.model, num_classes=ns.num_classes, in_chans=ns.in_chans, input_size=ns.input_size,
                        revision=ns.revision, nodes=ns.all)
    for name, default in table:
        print(f"{'*' if default else ' '} {name}")
    more = "" if ns.all else "; --all also lists the torch.fx nodes between modules"
    print(f"(* probed by default: {sum(d for _, d in table)} of {len(table)} layers; choose others with --layers"
          f"{more})")
    return 0


def cmd_relabel(ns: argparse.Namespace) -> int:
    """``masc-probe relabel RUN_DIR``: the paper's relabeling experiment (plus the oracle bound with --oracle)."""
    from masc_probe.pipeline import relabel_run

    results = relabel_run(ns.run_dir, **_given(
        dataset=ns.dataset, corrupt=ns.corrupt, corrupt_mode=ns.corrupt_mode, seed=ns.seed, oracle=ns.oracle,
        layers=ns.layers, max_epochs=ns.max_epochs, batch_size=ns.batch_size, device=ns.device,
        output_dir=ns.output_dir, progress=not ns.quiet, protocol=ns.protocol, detector=ns.detector,
        ceiling=ns.ceiling, select=ns.select, select_seed=ns.select_seed, **_data(ns)))
    for r in results:
        if not ns.quiet:
            kind = ("ORACLE BOUND (true-label subspaces, leaks the answer)" if r.oracle
                    else f"relabeling by {r.probe}" if r.detector == "issues" else "MASC relabeling")
            print(f"{kind}: layer {r.layer} (chosen against {_chosen_by(r.choosing_labels)}), {r.n_changed} of "
                  f"{r.n_train} labels changed, repaired "
                  f"{_num(r.repaired)}, broken {_num(r.broken)}; accuracy on the held-out 80% of the test set "
                  f"{r.accuracy_before:.4f} -> {r.accuracy_after:.4f} (best fine-tuning epoch {r.best_epoch})"
                  + (f"; on the true labels (ceiling) {r.accuracy_ceiling:.4f}" if r.accuracy_ceiling is not None
                     else ""))
        _say(f"wrote {Path(r.output_dir) / 'relabel.csv'} and relabel.json", quiet=ns.quiet, path=r.output_dir)
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
    if not ns.quiet:
        s = issues.summary()
        up = s["runner_up"]
        print(f"chosen: {s['probe']} at {s['layer']} ({s['criterion']} accuracy "
              f"{_num(s['select_accuracy'] if s['criterion'] == 'select' else s['heldout_accuracy'])}"
              + (f" against {_chosen_by(s['choosing_labels'])})" if s["choosing_labels"] else ")")
              + (f"; runner-up {up['probe']} at {up['layer']}" if up else ""))
        print(f"estimated share of wrong labels {s['noise_rate']:.4f} (confident joint); {s['n_flagged']} of "
              f"{s['n_samples']} flagged ({s['flag']}; ranked by "
              + (f"{s['ranking']})" if s["method"] == "probe" else "AUM)"))
        for name, m in (s["metrics"] or {}).items():
            print(f"  against the true labels, {name}: AUROC {_num(m['auroc'])}, AP {_num(m['average_precision'])}, "
                  f"precision {m['precision']:.4f}, recall {m['recall']:.4f}, F1 {m['f1']:.4f}, lift top 1% "
                  f"{_num(m['lift_top_1pct'])}, top 5% {_num(m['lift_top_5pct'])}")
    _say(f"wrote {out / 'label_issues.csv'}, label_issues.json" + (", label_issues.png" if ns.gallery != 0 else ""),
         quiet=ns.quiet, path=out)
    return 0


def _chosen_by(record: dict[str, Any] | None) -> str:
    """Which labels a layer was chosen against, in words (label issues' and relabel's ``choosing_labels``)."""
    if record and record.get("kind") == "clean":
        return "the true labels" + (f" ({record['fallback']})" if record.get("fallback") else "")
    if record and record.get("kind") == "noisy":
        return (f"labels re-drawn by the run's recipe ({record['mode']}, p = {record['rate']:g}, seed "
                f"{record['seed']}, realized {record['realized_rate']:.3f})")
    return "the labels as given"


def cmd_report(ns: argparse.Namespace) -> int:
    """``masc-probe report RUN_DIR``: the run folder's one-page report, report.html."""
    from masc_probe.report import write_run_html

    _say(f"wrote {write_run_html(ns.run_dir)}", quiet=ns.quiet, path=Path(ns.run_dir) / "report.html")
    return 0


def cmd_push(ns: argparse.Namespace) -> int:
    """``masc-probe push RUN_DIR --repo user/name [--private] [--with-probes] [--dry-run [DIR]]``."""
    from masc_probe.hub import push_run

    dry = None if ns.dry_run is None else (ns.dry_run or str(Path(ns.run_dir) / "hub-dry-run"))
    where = push_run(ns.run_dir, ns.repo, private=ns.private, revision=ns.revision, dry_run_dir=dry,
                     with_probes=ns.with_probes)
    message = f"dry run: the files a push would upload are in {where}" if dry is not None else f"pushed: {where}"
    _say(message, quiet=ns.quiet, path=where)
    return 0


def _show_report(result: Any, *, quiet: bool) -> None:
    """The report's summary (headline first, then the trained network's layer table) and where the files are (only
    the output folder with --quiet)."""
    if not quiet:
        from masc_probe.report import summary_text

        summary = summary_text(result.report)
        print(summary)
        for name, path in result.files.items():
            print(f"  {name:<26} {path}")
        for line in _notes(result.report, summary):
            print(line)
    _say(f"results in {result.output_dir}", quiet=quiet, path=result.output_dir)


def _notes(report: Any, summary: str) -> list[str]:
    """The report's own sentences on what it could not do (a control left out, the model's accuracy missing) that
    its summary does not say already."""
    extra = getattr(report, "extra", {}) or {}
    lines = [str(why) for why in (extra.get("controls_skipped") or {}).values()]
    if extra.get("model_test_accuracy_note"):
        lines.append(f"Model's own test accuracy: {extra['model_test_accuracy_note']}.")
    return [line for line in lines if line.rstrip(".") not in summary]


def _say(message: str, *, quiet: bool, path: Any = None) -> None:
    # --quiet keeps stdout to the one thing a script wants: where the results are.
    print(path if quiet and path is not None else message)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


_COMMANDS = {"run": cmd_run, "train": cmd_train, "probe": cmd_probe, "layers": cmd_layers, "relabel": cmd_relabel,
             "label-issues": cmd_label_issues, "push": cmd_push, "report": cmd_report}


def _dispatch(ns: argparse.Namespace) -> int:
    return int(_COMMANDS[ns.command](ns) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``masc-probe`` console script; returns the exit code."""
    parser = build_parser()
    try:
        ns = parser.parse_args(_normalize_argv(sys.argv[1:] if argv is None else argv))
    except _UsageError as exc:
        _fail(str(exc))
        return _EXIT_USAGE
    with _console(quiet=bool(getattr(ns, "quiet", False)), verbose=bool(getattr(ns, "verbose", False))):
        return _run_guarded(ns)


_CHATTY = ("huggingface_hub", "datasets")  # retry notices and cache chatter; their failures reach us as exceptions


@contextlib.contextmanager
def _console(*, quiet: bool, verbose: bool = False) -> Iterator[None]:
    """Route messages for one command: our progress lines to stdout, warnings and the error alone to stderr.

    Keeping stderr for problems makes a failure exactly one line there. The handlers are bound to this call's
    streams and removed afterwards, so in-process calls (tests, notebooks) never write to a stale stream.
    """
    ours = logging.getLogger("masc_probe")
    fmt = logging.Formatter("%(message)s")
    out, err = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(fmt)
        ours.addHandler(handler)
    saved = {name: logging.getLogger(name).level for name in ("masc_probe", *_CHATTY)}
    propagate = ours.propagate
    ours.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    ours.propagate = False
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with _library_bars_off() if quiet else contextlib.nullcontext():
            yield
    finally:
        for handler in (out, err):
            ours.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        ours.propagate = propagate


@contextlib.contextmanager
def _library_bars_off() -> Iterator[None]:
    """--quiet: huggingface_hub's and datasets' progress bars off through their own switches, restored afterwards
    (the process environment is left alone; our own bars are off through progress=False)."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from huggingface_hub.utils import disable_progress_bars as hub_bars_off

    were_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        with hub_bars_off():
            yield
    finally:
        if not were_off:
            enable_progress_bars()


def _run_guarded(ns: Any) -> int:
    from masc_probe.errors import InputError, MascProbeError

    try:
        return _dispatch(ns)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume training from the last finished epoch")
        return 130
    except Exception as exc:  # one line; with MASC_PROBE_DEBUG=1 the traceback (and its causes) before it
        debug = os.environ.get("MASC_PROBE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
        if debug:
            import traceback

            traceback.print_exc(file=sys.stderr)
        if isinstance(exc, MascProbeError):
            _fail(str(exc))
        else:  # an unexpected failure: its type too
            _fail(f"{type(exc).__name__}: {_first_line(str(exc))}"
                  + ("" if debug else " (set MASC_PROBE_DEBUG=1 for the traceback)"))
        return _EXIT_USAGE if isinstance(exc, InputError) else _EXIT_FAILURE


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _fail(message: str) -> None:
    print(f"masc-probe: error: {_first_line(message)}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
