"""The ``masc-probe`` argument parser: every subcommand and its flags, each flag's help naming the library's
default. A flag left out is None: the library's own default applies (tests/test_cli_defaults.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from masc_probe._choices import (
    CHECKPOINT_POLICIES,
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
from masc_probe._cli import _values as values
from masc_probe._params import DEFAULT_N_COMPONENTS
from masc_probe._version import __version__

SUBCOMMANDS = ("run", "train", "probe", "layers", "relabel", "label-issues", "push", "report")
DESCRIPTION = """\
``masc-probe`` alone runs the embedded default (the paper's MLP on scikit-learn's real digits with 80% of the labels
corrupted); ``masc-probe --model timm/resnet18 --dataset cifar10 --corrupt 0.8`` runs train → probe → report on
anything else. Subcommands run the parts: ``run``, ``train``, ``probe``, ``layers``, ``relabel``, ``label-issues``,
``push``, ``report``."""


class UsageError(Exception):
    """A bad flag or value found by the parser."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``masc-probe: error: …``) and exit code 2."""

    def error(self, message: str) -> NoReturn:  # argparse prints usage + message over several lines by default
        raise UsageError(message)


def _add_data(p: argparse.ArgumentParser, *, corrupt_default: float | None) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help="built-in (digits, mnist-5k), Hub name (mnist, fashion_mnist, cifar10, cifar100, "
                        "tiny-imagenet, or any user/name), or a local folder/file (default: digits; for a run "
                        "folder, the dataset it was trained on)")
    g.add_argument("--corrupt", type=values.fraction, default=None, metavar="P",
                   help="label corruption rate of the training split" +
                        (f" (default {corrupt_default})" if corrupt_default is not None else ""))
    g.add_argument("--corrupt-mode", default=None, choices=CORRUPTION_MODES,
                   help="how labels are corrupted (default random, as the paper)")
    g.add_argument("--seed", type=values.non_negative_int, default=None, help="seed of corruption, init and order (0)")
    g.add_argument("--image-column", default=None, help="image column of a Hub or parquet dataset")
    g.add_argument("--label-column", default=None, help="label column of a Hub or parquet dataset")
    g.add_argument("--batch-size", type=values.positive_int, default=None, help="batch size (default: the preset's)")


def _add_subset(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("subset (as the Hugging Face example scripts)")
    g.add_argument("--max-train-samples", type=values.positive_int, default=None, metavar="N",
                   help="train and probe on a stratified subset of N training samples (drawn by --seed, recorded "
                        "in the report and the card): try a big dataset first")
    g.add_argument("--max-eval-samples", type=values.positive_int, default=None, metavar="N",
                   help="score on a stratified subset of N test samples (drawn by --seed, recorded)")


def _add_size_and_memory(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--n-components`` (MASC's subspace size) and ``--max-memory`` (the probes' budget)."""
    p.add_argument("--n-components", type=values.n_components, default=None, metavar="T|K",
                   help=f"MASC subspace size: variance fraction in (0,1) or a count (default {DEFAULT_N_COMPONENTS})")
    p.add_argument("--max-memory", type=values.memory, default=None, metavar="SIZE",
                   help="memory budget of the probes, e.g. 4GB (decides the exact solver per layer)")


def _add_probe(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("probing")
    g.add_argument("--layers", type=values.names, default=None, metavar="A,B,…",
                   help="layers to probe (names from `masc-probe layers`; default: the model's probe points)")
    g.add_argument("--probes", type=values.probes, default=None, metavar="P,…",
                   help=f"probes: {', '.join(PROBE_NAMES)} (default {','.join(DEFAULT_PROBES)})")
    g.add_argument("--labels", choices=PIPELINE_LABELS, default=None,
                   help="label sets to fit subspaces on (default both)")
    _add_size_and_memory(g)
    g.add_argument("--reducer", type=values.reducer, default=None, metavar="NAME|LAYER=NAME,…",
                   help="how a layer's value becomes rows: flatten (default, the paper's), cls or mean (token maps "
                        "(B,T,D)), gap (conv maps), auto (cls for transformer blocks, flatten elsewhere); one for "
                        "every layer but the input, or per layer as LAYER=NAME,…")
    g.add_argument("--select", choices=SELECT_RULES, default=None,
                   help="how each network (trained, init, input) chooses its layer and MASC subspace size on a "
                        "choosing part of the test images: noisy (labels re-drawn by the run's recipe, default), "
                        "clean (true labels) or none; the headline compares the choices on the other part")
    g.add_argument("--select-split", type=values.open_fraction, default=None, metavar="FRACTION",
                   help="share of the test images, per class, in the choosing part (default 0.5)")
    g.add_argument("--select-seed", type=values.non_negative_int, default=None, metavar="N",
                   help="seed of the split and of the noisy labels (default 0; recorded in the report)")
    g.add_argument("--select-crossfit", action="store_true", default=None,
                   help="also choose on the evaluation part and judge on the choosing part (recorded beside)")
    g.add_argument("--controls", type=values.controls, default=None, metavar="init,input|none",
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
    g.add_argument("--max-epochs", type=values.positive_int, default=None, help="stop after this many epochs (500)")
    g.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=None,
                   help="bf16 or fp16 autocast (faster on a GPU; changes the numbers, so recorded; default no)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the network (faster on a GPU after a compile; changes the numbers, recorded)")
    g.add_argument("--eval-every", type=values.positive_int, default=None, metavar="K",
                   help="test accuracy, and training accuracy on both label sets, after every K-th epoch and the "
                        "last (default 10); the stop rule checks every epoch either way")
    g.add_argument("--keep-checkpoints", choices=CHECKPOINT_POLICIES, default=None,
                   help="checkpoints/epoch-NNNN to keep (default final: the last epoch only), dense (epochs 0, 2, "
                        "…, 20, then every 5th) or all; `probe --all-checkpoints` reads them")
    g.add_argument("--record-margins", action="store_true",
                   help="keep every training sample's margin after each epoch (margins.safetensors): the record "
                        "`label-issues --method aum` ranks by")


def _add_choice_labels(p: argparse.ArgumentParser, what: str, recorded_in: str) -> None:
    """``--select noisy|clean`` and ``--select-seed``: the labels *what* (a clause), recorded in *recorded_in*."""
    p.add_argument("--select", choices=("noisy", "clean"), default=None,
                   help=f"the labels {what}: noisy (re-drawn by the run's recipe, default) or clean (true labels); "
                        f"recorded in {recorded_in}")
    p.add_argument("--select-seed", type=values.non_negative_int, default=None, metavar="N",
                   help="seed of the noisy labels (default 0)")


def build_parser() -> argparse.ArgumentParser:
    """The ``masc-probe`` argument parser (``run`` is the default subcommand)."""
    parser = Parser(prog="masc-probe", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"masc-probe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

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
    layers.add_argument("--num-classes", type=values.positive_int, default=10)
    layers.add_argument("--in-chans", type=values.positive_int, default=None)
    layers.add_argument("--input-size", type=values.positive_int, default=None, help="image height = width")
    layers.add_argument("--all", action="store_true",
                        help="also list torch.fx nodes that are not modules (getattr, getitem, functions, …)")

    relabel = sub.add_parser("relabel", help="suggest true labels for the training set from the best MASC layer")
    relabel.add_argument("run_dir", help="a run folder written by `masc-probe run` or `train`")
    _add_data(relabel, corrupt_default=None)
    _add_common(relabel)
    relabel.add_argument("--oracle", action="store_true",
                         help="also report the bound with true-label subspaces (leaks the answer; labelled so)")
    relabel.add_argument("--max-epochs", type=values.positive_int, default=None, help="fine-tuning epochs (default 30)")
    relabel.add_argument("--layers", type=values.names, default=None, metavar="A,B,…",
                         help="candidate layers for the best MASC layer (default: the model's probe points)")
    relabel.add_argument("--detector", choices=("masc", "issues"), default=None,
                         help="masc: the paper's best MASC layer (default); issues: label-issues' chosen layer x "
                              "probe (masc, ncm, lda)")
    relabel.add_argument("--ceiling", action="store_true",
                         help="also fine-tune on the true labels (the ceiling a perfect detector would reach)")
    _add_choice_labels(relabel, "the layer is chosen against on the test set's 20%% part", "relabel.json")
    _add_protocol(relabel, "relabeling with subspaces fitted on the whole training set")

    issues = sub.add_parser("label-issues", help="rank the training samples whose labels are likely wrong, from the "
                                                 "layers of a trained model (scored against the truth when known)")
    issues.add_argument("source", metavar="RUN|MODEL",
                        help="run folder (its data, corruption and margins), hf-hub:<user>/<repo>, or a model spec")
    _add_data(issues, corrupt_default=None)
    issues.add_argument("--layers", type=values.names, default=None, metavar="A,B,…",
                        help="candidate layers (default: the model's probe points)")
    issues.add_argument("--probes", type=values.probes, default=None, metavar="P,…",
                        help=f"candidate probes (default {','.join(ISSUE_PROBES)}; qda is slow on wide layers); the "
                             "best layer x "
                             "probe on the test split is chosen")
    issues.add_argument("--folds", type=values.folds, default=None,
                        help="folds K: each sample is scored by probes fitted on the other K-1 (default 2)")
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
    _add_size_and_memory(issues)
    issues.add_argument("--out", "--output-dir", dest="output_dir", default=None, metavar="DIR",
                        help="where label_issues.csv, .json and .png go (default RUN/label-issues)")
    issues.add_argument("--device", default=None, help="cpu, cuda, cuda:1, …")
    issues.add_argument("--revision", default=None, help="Hub revision of an hf-hub: model")
    issues.add_argument("--quiet", action="store_true", help="no progress bars, no summary")
    issues.add_argument("--gallery", type=values.non_negative_int, default=None, metavar="K",
                        help="draw the K most suspect samples as label_issues.png (default 32; 0 for none)")
    _add_choice_labels(issues, "the layer x probe is chosen against on the test split", "label_issues.json")

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


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """``masc-probe [flags]`` means ``masc-probe run [flags]``; a first word that is no command is refused.

    Raises:
        UsageError: The first argument is a word (not a flag) that names no subcommand.
    """
    args = list(argv)
    if args and not args[0].startswith("-") and args[0] not in SUBCOMMANDS:
        import difflib

        near = difflib.get_close_matches(args[0], SUBCOMMANDS, n=1, cutoff=0.6)
        raise UsageError(f"unknown command {args[0]!r}; " + (f"did you mean {near[0]!r}?" if near else
                                                              f"commands: {', '.join(SUBCOMMANDS)}"))
    if not args or (args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help", "--version")):
        args.insert(0, "run")
    return args
