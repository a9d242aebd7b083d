"""Paired comparisons against controls, and the sentences a report, a card and the CLI derive from them.

A comparison pairs one probe on the trained network with the same probe on a control (the network at its initial
weights, the raw input, a model the user passed), scored on the same test images. With ``b`` the images only the
trained side gets right and ``c`` those only the control gets right (out of ``n``), the difference is ``(b − c) / n``.
Its 95% interval is Tango's score interval for a paired difference of proportions (Tango, Stat. Med. 1998): the set
of differences Δ whose score statistic, with the other cell probabilities at their maximum likelihood under Δ, stays
within ±1.96. Unlike an interval conditional on the discordant count, it stays valid when no image tells the two
apart (b = c = 0 gives an interval around 0 that shrinks with n, never [0, 0]). The p-value is the exact McNemar
test (two-sided binomial test of b out of b + c at 1/2). The one word a comparison carries — *added*, *removed*, *no
difference* — needs both: the p-value below 5% and the interval on that side of 0. The p-value is taken in the
per-layer table (exploration, about one test per layer, probe and
label set) after Holm's adjustment within each control (``apply_holm``), in the selected comparison unadjusted (one
pre-registered test per control).

Every sentence below is built from these numbers, never written as fixed text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from masc_probe._choices import PROBE_TEXT
from masc_probe.errors import InputError
from masc_probe.report._format import fmt, size_text

METHOD = "Tango score interval; exact McNemar p-value"
VERDICTS = ("added", "no difference", "removed")
_LEVEL = 0.95
_Z95 = 1.959963984540054  # two-sided 95% normal quantile
_LABELS_TEXT = {"corrupted": "corrupted-label subspaces", "true": "true-label subspaces",
                "label": "training-label subspaces"}
_PROBE_TEXT = {name: text for name, (text, _) in PROBE_TEXT.items()}  # how a sentence names a probe


def wilson_interval(accuracy: float, n: int, *, z: float = _Z95) -> list[float]:
    """Wilson score interval of a proportion.

    Args:
        accuracy: Observed proportion of successes, in [0, 1].
        n: Number of trials (> 0).
        z: Normal quantile; the default gives a two-sided 95% interval.

    Returns:
        ``[low, high]``, clipped to [0, 1].

    Raises:
        InputError: If *n* is not positive or *accuracy* is outside [0, 1].

    >>> [round(v, 4) for v in wilson_interval(0.5, 100)]
    [0.4038, 0.5962]
    """
    if n <= 0:
        raise InputError(f"a Wilson interval needs n > 0 trials, got n={n}")
    if not 0.0 <= accuracy <= 1.0:
        raise InputError(f"accuracy must lie in [0, 1], got {accuracy}")
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (accuracy + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n))
    low = 0.0 if accuracy == 0.0 else max(0.0, center - half)  # exact at the edges, where rounding would leak
    high = 1.0 if accuracy == 1.0 else min(1.0, center + half)
    return [low, high]


def _tango_score(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic at difference *delta*: (b − c − nΔ) / sqrt(n (2 q + Δ(1 − Δ))), q the restricted
    maximum-likelihood probability of the control-only cell given Δ (the positive root of 2n q² + B q + C = 0)."""
    big_b = -b - c + (2 * n - b + c) * delta
    big_c = -c * delta * (1 - delta)
    q = (math.sqrt(max(big_b * big_b - 8 * n * big_c, 0.0)) - big_b) / (4 * n)
    var = n * (2 * q + delta * (1 - delta))
    top = b - c - n * delta
    if var <= 0:
        return math.copysign(math.inf, top) if top else 0.0
    return top / math.sqrt(var)


def tango_interval(b: int, c: int, n: int, *, level: float = _LEVEL) -> list[float]:
    """Tango's score interval of the paired difference (b − c)/n: {Δ : |score(Δ)| ≤ z}, by bisection (the score
    decreases in Δ)."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    est = (b - c) / n

    def solve(lo: float, hi: float, target: float) -> float:
        # score(lo) >= target >= score(hi)
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _tango_score(b, c, n, mid) > target else (lo, mid)
        return (lo + hi) / 2

    low = -1.0 if _tango_score(b, c, n, -1.0) <= z else solve(-1.0, est, z)
    high = 1.0 if _tango_score(b, c, n, 1.0) >= -z else solve(est, 1.0, -z)
    return [low, high]


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b out of the b + c discordant images against 1/2 (1.0 with none)."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(b, b + c, 0.5).pvalue)


def _verdict(ci: Sequence[float], p: float, alpha: float) -> str:
    """*added* / *removed* when the test rejects at *alpha* and the interval lies on that side of 0 (both must
    agree), else *no difference*."""
    if p < alpha and ci[0] > 0:
        return "added"
    if p < alpha and ci[1] < 0:
        return "removed"
    return "no difference"


def paired_difference(b: int, c: int, n: int, *, level: float = _LEVEL) -> dict[str, Any]:
    """The paired difference of two accuracies on the same *n* test images, its interval, p-value and verdict.

    Args:
        b: Images the first classifier (the trained network's probe) gets right and the second (the control's) wrong.
        c: Images the second gets right and the first wrong.
        n: Images both were scored on (b + c <= n).
        level: Coverage of the interval; the verdict tests at 1 − level.

    Returns:
        ``{"difference", "ci": [low, high], "method", "p_value", "verdict", "discordant": [b, c]}``.

    Raises:
        InputError: Counts that are negative, or more discordant images than images.

    >>> paired_difference(30, 10, 100)["verdict"]
    'added'
    """
    b, c, n = int(b), int(c), int(n)
    if min(b, c) < 0 or n < 1 or b + c > n:
        raise InputError(f"expected discordant counts 0 <= b + c <= n with n >= 1, got b={b}, c={c}, n={n}")
    p = mcnemar_p(b, c)
    ci = tango_interval(b, c, n, level=level)
    return {"difference": (b - c) / n, "ci": ci, "method": METHOD, "p_value": p,
            "verdict": _verdict(ci, p, 1.0 - level), "discordant": [b, c]}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    m, running, out = len(p_values), 0.0, [1.0] * len(p_values)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


def apply_holm(comparisons: list[dict[str, Any]], *, alpha: float = 1.0 - _LEVEL) -> None:
    """Set ``p_holm`` and a Holm-adjusted ``verdict`` on every comparison that has a ``p_value``, within each
    control (and epoch): the per-layer table draws one test per layer, probe and label set."""
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for comp in comparisons:
        if "p_value" in comp:
            groups.setdefault((comp.get("control"), comp.get("epoch")), []).append(comp)
    for family in groups.values():
        for comp, adjusted in zip(family, holm([c["p_value"] for c in family]), strict=True):
            comp["p_holm"] = adjusted
            comp["verdict"] = _verdict(comp["ci"], adjusted, alpha)


def find(comparisons: Sequence[Mapping[str, Any]], layer: str, probe: str, labels: str,
         control: str) -> Mapping[str, Any] | None:
    """The comparison of one (layer, probe, label set) with one control, or None."""
    for comp in comparisons:
        if (comp.get("layer"), comp.get("probe"), comp.get("labels"), comp.get("control")) == (layer, probe, labels,
                                                                                               control):
            return comp
    return None


def _num(value: float) -> str:
    return fmt(value)


def _signed(value: float) -> str:
    return fmt(value, signed=True)


def interval_text(comp: Mapping[str, Any]) -> str:
    """``−0.069, 95% CI −0.102 to −0.036`` for a comparison."""
    low, high = comp["ci"]
    return f"{_signed(comp['difference'])}, 95% CI {_signed(low)} to {_signed(high)}"


def series_text(probe: str, labels: str) -> str:
    """``MASC (corrupted-label subspaces)``."""
    name = _PROBE_TEXT.get(probe, probe)
    return f"{name} ({_LABELS_TEXT.get(labels, labels + ' labels')})"


def control_text(name: str, info: Mapping[str, Any] | None) -> str:
    """How a sentence names a model control: the network at its initial weights, or the user's model."""
    info = info or {}
    source = info.get("source")
    if name == "init" and source == "run epoch 0":
        return "the same network at its initial weights (the run's epoch 0)"
    if name == "init" and source == "re-initialized copy":
        seed = info.get("seed")
        return "the same architecture re-initialized" + (f" (seed {seed})" if seed is not None else "")
    if name == "init":
        return "the same network at its initial weights"
    return f"the control model `{name}`"


_VERDICT_TEXT = {
    "added": "training added to what {probe} reads at this layer",
    "removed": "training removed what {probe} reads at this layer",
    "no difference": "no difference from the untrained network at this test size",
}
_INPUT_TEXT = {
    "added": "the layer reads more than the pixels",
    "removed": "the layer reads less than the pixels",
    "no difference": "no difference from the pixels at this test size",
}
_OTHER_TEXT = {
    "added": "the trained network reads more here",
    "removed": "the trained network reads less here",
    "no difference": "no difference at this test size",
}


def sentence(report: Any, probe: str, labels: str, *, include_input: bool = False) -> str | None:
    """One sentence on a series: the trained network's best hidden layer, each control there, what that says.

    Args:
        report: A :class:`~masc_probe.report.ProbeReport` with ``comparisons``.
        probe, labels: The series.
        include_input: Let the raw input compete for the best layer (it is a control by default).

    Returns:
        The sentence, or None when the report holds no comparison for the series' best layer.
    """
    try:
        best = report.best_layer(probe, labels, include_input=include_input)
    except InputError:
        return None
    layer, acc = best["layer"], best["test_accuracy"]
    comps = report.comparisons
    controls = report.controls
    parts = []
    name = _PROBE_TEXT.get(probe, probe)
    for control, info in controls.items():
        comp = find(comps, layer, probe, labels, control)
        if comp is None:
            continue
        if control == "input":
            parts.append(f"the raw input reads {_num(comp['control_accuracy'])} (`{layer}` − input: "
                         f"{interval_text(comp)}): {_INPUT_TEXT[comp['verdict']]}")
            continue
        words = (_VERDICT_TEXT if control == "init" else _OTHER_TEXT)[comp["verdict"]].format(probe=name)
        text = (f"{control_text(control, info)} reads {_num(comp['control_accuracy'])} there "
                f"({interval_text(comp)}): {words}")
        try:
            other = report.best_layer(probe, labels, control=control)
        except InputError:
            other = None
        if other is not None and other["layer"] != layer and other["test_accuracy"] > comp["control_accuracy"]:
            text += f" (its best hidden layer is `{other['layer']}` at {_num(other['test_accuracy'])})"
        parts.append(text)
    if not parts:
        return None
    n = next((c.get("n") for c in comps if c.get("n")), None)
    lead = f"{series_text(probe, labels)} reads {_num(acc)} at `{layer}` of the trained network"
    tail = f" (paired on the same {n} test images)" if n else ""
    return f"{lead}; " + "; ".join(parts) + f"{tail}."


def headline(report: Any, *, include_input: bool = False) -> list[str]:
    """The sentences that lead a report, a card and the CLI summary: MASC's series (every series of the first
    probe when MASC was not run), each compared with every control; empty without comparisons."""
    if not report.series:
        return []
    series = [s for s in report.series if s[0] == "masc"] or [s for s in report.series if s[0] == report.series[0][0]]
    order = {"corrupted": 0, "true": 1, "label": 2}
    series.sort(key=lambda s: order.get(s[1], 3))
    out = []
    for probe, labels in series:
        text = sentence(report, probe, labels, include_input=include_input)
        if text:
            out.append(text)
    return out


def _choice_labels_text(block: Mapping[str, Any]) -> str:
    rec = block.get("labels") or {}
    kind = rec.get("kind")
    if kind == "noisy":
        text = (f"labels re-drawn as the training labels were ({rec.get('mode')}, p = {rec.get('rate'):g}, seed "
                f"{rec.get('seed')})")
    elif kind == "clean":
        text = "their true labels"
    else:
        text = "their own labels"
    return f"chosen on {block['n_choose']} test images against {text}"


def _p_text(p: float) -> str:
    text = fmt(p, p=True)
    return text if text.startswith("<") else f"= {text}"


def selection_headline(report: Any) -> list[str]:
    """One sentence per MASC label set from the report's ``selection``: the trained network's choice, read on the
    evaluation images, against each control at its own choice; then the rule's condition when it is not known to
    hold."""
    block = report.selection or {}
    choices = {(c["network"], c["labels"]): c for c in block.get("choices", [])}
    comps = block.get("comparisons", [])
    order = {"corrupted": 0, "true": 1, "label": 2}
    out = []
    for labels in sorted({c["labels"] for c in comps}, key=lambda s: order.get(s, 3)):
        mine = choices.get(("trained", labels))
        if mine is None:
            continue
        parts = []
        for comp in (c for c in comps if c["labels"] == labels):
            control = comp["control"]
            where = (f"its own choice ({size_text(comp['control_size'])})" if control == "input" else
                     f"its own choice (`{comp['control_layer']}`, {size_text(comp['control_size'])})")
            name = ("the raw input" if control == "input" else
                    control_text(control, report.controls.get(control)))
            words = (_INPUT_TEXT if control == "input" else _VERDICT_TEXT if control == "init" else
                     _OTHER_TEXT)[comp["verdict"]].format(probe="MASC")
            parts.append(f"{name}, at {where}, reads {_num(comp['control_accuracy'])} "
                         f"({interval_text(comp)}, p {_p_text(comp['p_value'])}): {words}")
        lead = (f"{series_text('masc', labels)} of the trained network, {_choice_labels_text(block)}, reads "
                f"{_num(mine['evaluation_accuracy'])} at `{mine['layer']}` ({size_text(mine['size'])}) on the other "
                f"{block['n_eval']} test images")
        out.append(lead + ("; " + "; ".join(parts) if parts else "") + ".")
    rec = block.get("labels") or {}
    if out and rec.get("condition_holds") is not True:
        out.append(f"The choice's labels: {rec.get('condition')}.")
    return out
