"""Choosing a layer and a subspace size without the images that judge the choice, the same way for every network.

The test images are split once, stratified by class, by a recorded seed, into a *choosing* part and an *evaluation*
part. On the choosing part each network — the trained one, the same network at its initial weights, the raw input,
any other control — picks its (layer, subspace size) from its MASC profile (one fit, every size) by accuracy
against labels a user would have:

- ``"noisy"`` (default): the choosing part's labels corrupted by the run's own recipe (mode and rate) with a
  recorded seed. Under class-conditional noise whose transition matrix is diagonally dominant, a noisy validation
  set ranks classifiers as a clean one would (Chen et al., AAAI 2021, arXiv 2012.04193); a uniform re-draw at any
  p < 1 is such noise, an asymmetric map need not be, and the record says which holds.
- ``"clean"``: the choosing part's true labels (the paper's clean-validation setting).

Never the training rows: a memorizer's features carry the labels it memorized there, so a choice made on them falls
on the most memorized layer (tests/test_select.py shows it on a small memorizer).

Ties go to the earlier layer, then to the earlier size of the profile (fractions ascending, then counts). The
choices are then compared on the evaluation part, paired image by image (``report._compare``); the test-set
maximum over the evaluation part stays available as the *oracle*, named so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from masc_probe._choices import SELECT_RULES
from masc_probe.errors import InputError
TRAINED, INPUT = "trained", "input"


def check_select(rule: Any, split: Any, seed: Any) -> tuple[str, float, int]:
    """Validate the selection settings: a rule name, a choosing fraction in (0, 1), a non-negative int seed."""
    from masc_probe._params import check_choice

    rule = check_choice("select", rule, SELECT_RULES)
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0.0 < float(split) < 1.0:
        raise InputError(f"select_split must be a fraction in (0, 1) of the test images used for choosing; got "
                         f"{split!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise InputError(f"select_seed must be an int >= 0; got {seed!r}")
    return rule, float(split), int(seed)


def split_parts(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the choosing and the evaluation part: per class, a seeded permutation of its positions, the
    first round(fraction · n_c) to choosing. Both sorted."""
    rng = np.random.default_rng(seed)
    choose: list[np.ndarray] = []
    for cls in np.unique(y):
        pos = np.flatnonzero(y == cls)
        pos = pos[rng.permutation(len(pos))]
        choose.append(pos[: int(round(fraction * len(pos)))])
    chosen = np.sort(np.concatenate(choose)) if choose else np.zeros(0, np.int64)
    mask = np.zeros(len(y), dtype=bool)
    mask[chosen] = True
    return chosen, np.flatnonzero(~mask)


def _condition(kind: str, mode: str | None, rate: float | None, k: int) -> tuple[bool | None, str]:
    """Whether the labels' noise is known to be diagonally dominant (True, False, None: not known), in a sentence."""
    if kind == "clean":
        return True, "clean labels: no condition needed"
    if kind == "given":
        return None, "the test set's own labels: whether their noise is diagonally dominant is not known"
    p = float(rate or 0.0)
    if mode in ("random", "authors"):  # the authors' draw is a uniform re-draw too
        diag, off = 1 - p + p / k, p / k
    elif mode == "symmetric":
        diag, off = 1 - p, p / max(k - 1, 1)
    elif mode == "shuffle":
        diag, off = 1 - p + p / k, p / k  # a permutation of a p-subset: about a uniform re-draw for balanced classes
    else:
        return None, (f"{mode} noise at p = {p:g}: its transition matrix need not be diagonally dominant, so the noisy "
                "choice is not known to rank as a clean one would")
    holds = diag > off
    return holds, (f"{mode} noise at p = {p:g} over {k} classes: {diag:.3f} on the diagonal against {off:.3f} off it, "
            + ("diagonally dominant, so the noisy choice ranks as a clean one would (Chen et al. 2021)" if holds
               else "not diagonally dominant: the noisy choice is not known to rank as a clean one would"))


def choosing_labels(y: np.ndarray, rule: str, corruption: Mapping[str, Any] | None, num_classes: int,
                    seed: int, index: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The labels the choice is made against, and their record (kind, recipe, seed, realized rate, condition)."""
    from masc_probe.data.corruption import corrupt_labels

    if rule == "clean":
        return y, _record({"kind": "clean"}, _condition("clean", None, None, num_classes))
    corruption = dict(corruption or {})
    rate, mode = corruption.get("rate"), corruption.get("mode")
    if not rate or mode is None:
        return y, _record({"kind": "given"}, _condition("given", None, None, num_classes))
    kwargs: dict[str, Any] = {}
    mode = "random" if mode == "authors" else mode  # the authors' fixed draw over a dataset: the same re-draw law
    if mode == "asymmetric":
        if corruption.get("mapping") is None:  # the class map is not in the record: the recipe cannot be replayed
            return y, _record({"kind": "clean", "fallback": "asymmetric corruption without its class map"},
                              (None, f"the asymmetric recipe (p = {float(rate):g}) records no class map, so the "
                                     "choice used the clean labels, not labels a user with noisy data would have"))
        kwargs["mapping"] = corruption["mapping"]
    noisy = corrupt_labels(y, float(rate), num_classes=num_classes, mode=mode, seed=seed, indices=index, **kwargs)
    record = {"kind": "noisy", "mode": mode, "rate": float(rate), "seed": seed,
              "realized_rate": float(np.mean(noisy != y)) if len(y) else 0.0}
    return noisy, _record(record, _condition("noisy", mode, float(rate), num_classes))


def _record(record: dict[str, Any], condition: tuple[bool | None, str]) -> dict[str, Any]:
    return {**record, "condition_holds": condition[0], "condition": condition[1]}


def _argmax(scores: Sequence[float]) -> int:
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


def _decide(profiles: Mapping[tuple[str, str, str], Any], y: np.ndarray, choose: np.ndarray, evaluate: np.ndarray,
            noisy: np.ndarray, networks: list[str], label_sets: list[str],
            fixed_size: float | int | None) -> dict[str, Any]:
    """Each network's choice on *choose* (against *noisy*), judged on *evaluate*; the comparisons, oracle, 0.99 rule."""
    from masc_probe.report._compare import paired_difference

    choices, oracle, paper, picked = [], [], [], {}
    truth = y[evaluate]
    for labels in label_sets:
        for network in networks:
            cands = [(layer, size, preds[j]) for (net, layer, lab), (sizes, preds, _) in profiles.items()
                     if net == network and lab == labels for j, size in enumerate(sizes)]
            if not cands:
                continue
            allowed = [c for c in cands if fixed_size is None or c[1] == fixed_size]
            if not allowed:
                raise InputError(f"the subspace size {fixed_size!r} is not in the profile")
            on_choose = [float(np.mean(c[2][choose] == noisy)) for c in allowed]
            best = allowed[_argmax(on_choose)]
            picked[(network, labels)] = best
            choices.append({"network": network, "labels": labels, "layer": best[0], "size": best[1],
                            "choosing_accuracy": max(on_choose),
                            "evaluation_accuracy": float(np.mean(best[2][evaluate] == truth))})
            on_eval = [float(np.mean(c[2][evaluate] == truth)) for c in cands]
            top = cands[_argmax(on_eval)]
            oracle.append({"network": network, "labels": labels, "layer": top[0], "size": top[1],
                           "accuracy": max(on_eval)})
            rule_cands = [c for c in cands if c[1] == 0.99]
            if rule_cands:
                at = rule_cands[_argmax([float(np.mean(c[2][choose] == noisy)) for c in rule_cands])]
                paper.append({"network": network, "labels": labels, "layer": at[0], "size": 0.99,
                              "evaluation_accuracy": float(np.mean(at[2][evaluate] == truth))})
    comparisons = []
    for labels in label_sets:
        mine = picked.get((TRAINED, labels))
        if mine is None:
            continue
        right = mine[2][evaluate] == truth
        for network in networks:
            other = picked.get((network, labels))
            if network == TRAINED or other is None:
                continue
            theirs = other[2][evaluate] == truth
            b, c = int(np.sum(right & ~theirs)), int(np.sum(~right & theirs))
            comparisons.append({"labels": labels, "control": network, "trained_layer": mine[0],
                                "trained_size": mine[1], "control_layer": other[0], "control_size": other[1],
                                "trained": float(right.mean()), "control_accuracy": float(theirs.mean()),
                                **paired_difference(b, c, len(evaluate)), "n": int(len(evaluate))})
    return {"choices": choices, "comparisons": comparisons, "oracle": oracle, "paper_rule": paper}


def select(profiles: Mapping[tuple[str, str, str], tuple[list[Any], np.ndarray, list[list[int]]]], y: np.ndarray,
           index: np.ndarray, *, rule: str, split: float, seed: int, corruption: Mapping[str, Any] | None,
           num_classes: int, fixed_size: float | int | None = None,
           crossfit: bool = False) -> tuple[list[dict[str, Any]], dict | None]:
    """The profile rows and the selection block of a report.

    Args:
        profiles: ``(network, layer, labels) -> (sizes, predictions (S, n), k per size)``, every network's MASC
            profile on the same n test images, in layer order.
        y: (n,) true test labels. index: (n,) the images' stable indices (they key the noisy labels and the parts).
        rule: ``"noisy"``, ``"clean"`` or ``"none"`` (profile only).
        split: Fraction of the images (per class) in the choosing part. seed: Seed of the split and noisy labels.
        corruption: The run's recipe (``mode``, ``rate``) for ``"noisy"``.
        num_classes: K.
        fixed_size: Choose only the layer, at this size (``--n-components`` given).
        crossfit: Also choose on the evaluation part and judge on the choosing part (``crossfit`` in the block:
            the swapped choices and comparisons, and per comparison the mean of the two differences).

    Returns:
        ``(profile rows, selection block or None)``; see docs/architecture.md, "Report format".
    """
    rows = []
    for (network, layer, labels), (sizes, preds, ks) in profiles.items():
        for size, pred, k in zip(sizes, preds, ks, strict=True):
            rows.append({"layer": layer, "labels": labels, "control": None if network in (TRAINED, INPUT) else network,
                         "size": size, "accuracy": float(np.mean(pred == y)), "k": [int(v) for v in k]})
    if rule == "none" or not profiles:
        return rows, None
    order = np.argsort(index, kind="stable")  # the parts depend on the images, not on the order they came in
    y_sorted, index_sorted = y[order], index[order]
    choose_s, eval_s = split_parts(y_sorted, split, seed)
    choose, evaluate = order[choose_s], order[eval_s]
    noisy, record = choosing_labels(y_sorted[choose_s], rule, corruption, num_classes, seed, index_sorted[choose_s])
    label_sets = list(dict.fromkeys(k[2] for k in profiles))
    seen = list(dict.fromkeys(k[0] for k in profiles))  # the trained network first, the raw input last
    networks = [n for n in seen if n == TRAINED] + [n for n in seen if n not in (TRAINED, INPUT)] + \
        [n for n in seen if n == INPUT]
    decided = _decide(profiles, y, choose, evaluate, noisy, networks, label_sets, fixed_size)
    block = {"rule": rule, "split": split, "seed": seed, "fixed_size": fixed_size, "labels": record,
             "condition": record["condition"], "n_choose": int(len(choose)), "n_eval": int(len(evaluate)),
             "choosing_index": [int(i) for i in index[choose]], "evaluation_index": [int(i) for i in index[evaluate]],
             **decided}
    if crossfit:
        other_noisy, _ = choosing_labels(y_sorted[eval_s], rule, corruption, num_classes, seed, index_sorted[eval_s])
        swapped = _decide(profiles, y, evaluate, choose, other_noisy, networks, label_sets, fixed_size)
        mean = []
        for first, second in zip(decided["comparisons"], swapped["comparisons"], strict=True):
            mean.append({"labels": first["labels"], "control": first["control"],
                         "trained": (first["trained"] + second["trained"]) / 2,
                         "control_accuracy": (first["control_accuracy"] + second["control_accuracy"]) / 2,
                         "difference": (first["difference"] + second["difference"]) / 2})
        block["crossfit"] = {"choices": swapped["choices"], "comparisons": swapped["comparisons"], "mean": mean}
    return rows, block
