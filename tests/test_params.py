"""check_choice, the one validator of a name against a fixed list, and the raise sites that call it.

Every site answers a wrong name the same way, in one line: "<what> must be one of <the names>; got <value>
(<the closest names, or the first few>)". The expected messages are written out by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from masc_probe._params import check_choice, check_probes
from masc_probe.errors import InputError, UnknownNameError


def test_a_valid_name_is_returned() -> None:
    assert check_choice("mode", "eval", ("eval", "train")) == "eval"
    assert check_choice("mapping", "cifar10", {"cifar10": {3: 5}}) == "cifar10"  # a mapping's keys are its names


@pytest.mark.parametrize(("value", "message"), [
    ("evl", "mode must be one of eval, train; got 'evl' (did you mean: eval?)"),
    ("zzz", "mode must be one of eval, train; got 'zzz' (valid: eval, train)"),
    (3, "mode must be one of eval, train; got 3 (valid: eval, train)"),  # not a name at all
    (None, "mode must be one of eval, train; got None (valid: eval, train)"),
])
def test_a_wrong_name_is_one_line_naming_the_valid_ones(value: Any, message: str) -> None:
    with pytest.raises(UnknownNameError) as err:
        check_choice("mode", value, ("eval", "train"))
    assert str(err.value) == message
    assert isinstance(err.value, InputError)  # callers that catch InputError still catch it


def test_other_accepted_forms_are_named_beside_the_list() -> None:
    with pytest.raises(UnknownNameError) as err:
        check_choice("reducer", "tokn", ("flatten", "cls"), also="or 'random:D'")
    assert str(err.value) == "reducer must be one of flatten, cls (or 'random:D'); got 'tokn' (valid: flatten, cls)"


def test_probes_are_checked_one_by_one() -> None:
    assert check_probes(("ncm", "masc", "ncm")) == ("ncm", "masc")
    with pytest.raises(UnknownNameError, match=r"^probe must be one of masc, ncm, linear, velpic, knn, lda, qda; "
                                               r"got 'mascc' \(did you mean: masc\?\)$"):
        check_probes(("ncm", "mascc"))


def _sites() -> list[tuple[str, Callable[[], Any], str]]:
    """(id, a call with one wrong name, the start of the expected message) for every site that calls check_choice."""
    from masc_probe import quality
    from masc_probe.data.corruption import corrupt_labels
    from masc_probe.layers import FeatureTap, LayerReducer
    from masc_probe.layers._reduce import reduce_activation
    from masc_probe.pipeline import relabel_run
    from masc_probe.label_issues import find_label_issues
    from masc_probe.probes import MinimumAngleSubspaceClassifier
    from masc_probe.probes._registry import make_probe
    from masc_probe.runner import ProbeRunner
    from masc_probe.training import TrainConfig, preset_config

    p, y = np.full((2, 2), 0.5), np.array([0, 1])
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    X = np.random.default_rng(0).normal(size=(6, 3))
    return [
        ("ranking", lambda: quality.label_quality_scores(p, y, method="margin"),
         "ranking method must be one of self_confidence, normalized_margin, logit_margin; got 'margin'"),
        ("kind", lambda: quality.calibrated_probabilities(p, y, kind="logit"),
         "score kind must be one of log, shares, similarity; got 'logit'"),
        ("filter", lambda: quality.find_issues(p, y, filter_by="prune"),
         "filter_by must be one of prune_by_noise_rate, "),
        ("optimizer", lambda: TrainConfig(optimizer="adamw"), "optimizer must be one of sgd, adam; got 'adamw'"),
        ("precision", lambda: TrainConfig(mixed_precision="fp8"),
         "mixed_precision must be one of no, fp16, bf16; got 'fp8'"),
        ("protocol", lambda: TrainConfig(protocol="author"), "protocol must be one of clean, authors; got 'author'"),
        ("keep", lambda: TrainConfig(keep_checkpoints="sparse"),
         "keep_checkpoints must be one of all, dense, final; got 'sparse'"),
        ("schedule", lambda: TrainConfig(lr_schedule="cosine"),
         "lr_schedule must be one of constant, plateau; got 'cosine'"),
        ("preset", lambda: preset_config("mlp", "mnist", preset="slow"),
         "training preset must be one of paper, fast; got 'slow'"),
        ("runner protocol", lambda: ProbeRunner(net, ["1"], protocol="dirty"), "protocol must be one of clean, "),
        ("runner labels", lambda: ProbeRunner(net, ["1"], labels="noisy"), "labels must be one of both, "),
        ("make_probe", lambda: make_probe("mac"), "probe must be one of masc, ncm, "),
        ("solver", lambda: MinimumAngleSubspaceClassifier(solver="grm").fit(X, [0, 1, 0, 1, 0, 1]),
         "solver must be one of auto, scatter, gram; got 'grm' (did you mean: gram?)"),
        ("issues", lambda: find_label_issues(net, [], flag="top"), "flag must be one of rank, "),
        ("relabel protocol", lambda: relabel_run("nowhere", protocol="author"),
         "protocol must be one of clean, authors; got 'author'"),
        ("tap method", lambda: FeatureTap(net, ["1"], method="trace"), "method must be one of auto, fx, hooks"),
        ("tap mode", lambda: FeatureTap(net, ["1"], mode="test"), "mode must be one of eval, train; got 'test'"),
        ("reduce", lambda: reduce_activation(torch.zeros(2, 3), "tokn"),
         "reducer must be one of cls, mean, gap, flatten; got 'tokn'"),
        ("reducer", lambda: LayerReducer("tokn"),
         "reducer must be one of flatten, cls, mean, gap, auto (or 'random:D' for a seeded projection); got 'tokn'"),
        ("corruption", lambda: corrupt_labels(y, 0.5, num_classes=2, mode="symetric"),
         "corruption mode must be one of random, symmetric, shuffle, asymmetric, authors; got 'symetric' (did you "
         "mean: "),
        ("mapping", lambda: corrupt_labels(y, 0.5, num_classes=10, mode="asymmetric", mapping="cifar100"),
         "named mapping must be one of cifar10; got 'cifar100'"),
    ]


@pytest.mark.parametrize("site", range(len(_sites())), ids=[s[0] for s in _sites()])
def test_every_site_answers_a_wrong_name_in_the_same_words(site: int) -> None:
    _, call, start = _sites()[site]
    with pytest.raises(UnknownNameError) as err:
        call()
    text = str(err.value)
    assert text.startswith(start) and "\n" not in text, text
