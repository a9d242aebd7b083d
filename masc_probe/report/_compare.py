"""Paired comparisons against controls, and the sentences a report, a card and the CLI derive from them.

A comparison pairs one probe on the trained network with the same probe on a control (the network at its initial
weights, the raw input, a model the user passed) at the same layer, scored on the same test images. With ``b`` the
images only the trained side gets right and ``c`` those only the control gets right (out of ``n``), the difference
is ``(b − c) / n``. Its 95% interval is exact McNemar's: given the ``m = b + c`` discordant images, ``b`` is
Binomial(m, π), the difference is ``m (2π − 1) / n``, and the Clopper–Pearson interval of π maps onto an interval
of the difference. It excludes 0 exactly when the two-sided exact McNemar test rejects at the 5% level, which is what
the one word says: *added* (the whole interval above 0), *removed* (below 0), *no difference*.

Every sentence below is built from these numbers, never written as fixed text: where the control reads more, the
sentence says training removed what the probe reads; where the interval covers 0, it says there is no difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from masc_probe.errors import InputError

METHOD = "exact McNemar (Clopper-Pearson interval of the discordant split)"
VERDICTS = ("added", "no difference", "removed")
_LEVEL = 0.95
_LABELS_TEXT = {"corrupted": "corrupted-label subspaces", "true": "true-label subspaces",
                "label": "training-label subspaces"}
_PROBE_TEXT = {"masc": "MASC", "ncm": "nearest class mean", "linear": "the linear probe", "velpic": "VeLPIC",
               "knn": "kNN", "lda": "LDA", "qda": "QDA"}


def paired_difference(b: int, c: int, n: int, *, level: float = _LEVEL) -> dict[str, Any]:
    """The paired difference of two accuracies on the same *n* test images, its exact interval and its verdict.

    Args:
        b: Images the first classifier (the trained network's probe) gets right and the second (the control's) wrong.
        c: Images the second gets right and the first wrong.
        n: Images both were scored on (b + c <= n).
        level: Coverage of the interval.

    Returns:
        ``{"difference", "ci": [low, high], "method", "verdict", "discordant": [b, c]}``.

    Raises:
        InputError: Counts that are negative, or more discordant images than images.

    >>> paired_difference(30, 10, 100)["verdict"]
    'added'
    """
    b, c, n = int(b), int(c), int(n)
    if min(b, c) < 0 or n < 1 or b + c > n:
        raise InputError(f"expected discordant counts 0 <= b + c <= n with n >= 1, got b={b}, c={c}, n={n}")
    from scipy.stats import beta

    m = b + c
    alpha = 1.0 - level
    if m == 0:
        low = high = 0.0  # no image tells the two apart: they agree everywhere
    else:
        p_low = 0.0 if b == 0 else float(beta.ppf(alpha / 2, b, m - b + 1))
        p_high = 1.0 if b == m else float(beta.ppf(1 - alpha / 2, b + 1, m - b))
        low, high = m * (2 * p_low - 1) / n, m * (2 * p_high - 1) / n
    verdict = "added" if low > 0 else "removed" if high < 0 else "no difference"
    return {"difference": (b - c) / n, "ci": [low, high], "method": METHOD, "verdict": verdict,
            "discordant": [b, c]}


def find(comparisons: Sequence[Mapping[str, Any]], layer: str, probe: str, labels: str,
         control: str) -> Mapping[str, Any] | None:
    """The comparison of one (layer, probe, label set) with one control, or None."""
    for comp in comparisons:
        if (comp.get("layer"), comp.get("probe"), comp.get("labels"), comp.get("control")) == (layer, probe, labels,
                                                                                               control):
            return comp
    return None


def _num(value: float) -> str:
    return f"{value:.3f}"


def _signed(value: float) -> str:
    return f"{value:+.3f}".replace("-", "−")


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
