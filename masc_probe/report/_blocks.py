"""report.json's ``selection`` and ``profile`` blocks, read into the parts of a report's view (``_view``): the choice
of layer and subspace size made without the evaluation images, its paired comparisons, the paper's fixed size and the
oracle (by that name); MASC accuracy across subspace sizes. A row without its keys is a one-line error."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from masc_probe.errors import InputError
from masc_probe.report._format import fmt, size_order


@dataclass(frozen=True)
class Choice:
    network: str
    labels: str
    layer: str
    size: Any
    choosing_accuracy: float | None
    evaluation_accuracy: float | None


@dataclass(frozen=True)
class Paired:
    """The trained network's chosen readout against a control's, paired on the evaluation images."""

    labels: str
    control: str
    trained_layer: str
    trained_size: Any
    control_layer: str
    control_size: Any
    trained: float | None
    control_accuracy: float | None
    difference: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    verdict: str | None
    n: int | None
    method: str | None = None


@dataclass(frozen=True)
class Readout:
    """A (layer, size) with one accuracy: the oracle's (all test images) or the paper rule's (evaluation part)."""

    network: str
    labels: str
    layer: str
    size: Any
    accuracy: float | None


@dataclass(frozen=True)
class Selection:
    rule: str
    split: Any
    seed: Any
    labels_used: str  # the labels the choice was made against, in words
    condition: str
    n_choose: int | None
    n_eval: int | None
    choices: list[Choice]
    comparisons: list[Paired]
    oracle: list[Readout]
    paper_rule: list[Readout]


@dataclass(frozen=True)
class ProfileLine:
    network: str
    labels: str
    layer: str
    accuracy: dict[Any, float]  # size -> accuracy on all test images


@dataclass(frozen=True)
class Profile:
    sizes: list[Any]  # fractions, then counts
    lines: list[ProfileLine]


def as_ci(value: Any) -> tuple[float, float] | None:
    return (float(value[0]), float(value[1])) if isinstance(value, Sequence) and len(value) == 2 else None


def as_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def need(row: Any, keys: Sequence[str], what: str) -> Mapping[str, Any]:
    if not isinstance(row, Mapping) or any(k not in row for k in keys):
        got = sorted(row) if isinstance(row, Mapping) else type(row).__name__
        raise InputError(f"each {what} row needs keys {list(keys)}, got {got}")
    return row


def network_of(control: Any, layer: str) -> str:
    """A result's network: ``trained`` (no control), ``input`` (the raw input's rows) or the control's name."""
    if control:
        return str(control)
    return "input" if layer == "input" else "trained"


def _labels_used(labels: Any) -> str:
    if not isinstance(labels, Mapping):
        return str(labels or "the labels given")
    kind = str(labels.get("kind", "given"))
    if kind == "clean":
        return "clean labels"
    parts = [str(labels[k]) for k in ("mode",) if labels.get(k)]
    parts += [f"p={labels['rate']:g}"] if isinstance(labels.get("rate"), (int, float)) else []
    parts += [f"realized {fmt(labels['realized_rate'])}"] if labels.get("realized_rate") is not None else []
    return f"{kind} labels" + (f" ({', '.join(parts)})" if parts else "")


def read_selection(sel: Mapping[str, Any] | None) -> Selection | None:
    if not sel:
        return None
    choices = [Choice(str(c["network"]), str(c["labels"]), str(c["layer"]), c["size"],
                      as_float(c.get("choosing_accuracy")), as_float(c.get("evaluation_accuracy")))
               for c in (need(c, ("network", "labels", "layer", "size"), "selection choice")
                         for c in sel.get("choices") or [])]
    keys = ("labels", "control", "trained_layer", "trained_size", "control_layer", "control_size")
    comps = [Paired(*(c[k] for k in keys), as_float(c.get("trained")), as_float(c.get("control_accuracy")),
                    as_float(c.get("difference")), as_ci(c.get("ci")), as_float(c.get("p_value")), c.get("verdict"),
                    c.get("n"), c.get("method")) for c in (need(c, keys, "selection comparison") for c in sel.get("comparisons") or [])]
    base = ("network", "labels", "layer", "size")
    oracle = [Readout(*(str(o[k]) for k in base[:3]), o["size"], as_float(o.get("accuracy")))
              for o in (need(o, base, "selection oracle") for o in sel.get("oracle") or [])]
    paper = [Readout(*(str(o[k]) for k in base[:3]), o.get("size", 0.99), as_float(o.get("evaluation_accuracy")))
             for o in (need(o, base[:3], "selection paper_rule") for o in sel.get("paper_rule") or [])]
    return Selection(str(sel.get("rule", "?")), sel.get("split"), sel.get("seed"), _labels_used(sel.get("labels")),
                     str(sel.get("condition") or ""), sel.get("n_choose"), sel.get("n_eval"), choices, comps, oracle,
                     paper)


def read_profile(rows: list[dict[str, Any]] | None) -> Profile | None:
    if not rows:
        return None
    lines: dict[tuple[str, str, str], dict[Any, float]] = {}
    for r in rows:
        need(r, ("layer", "labels", "size", "accuracy"), "profile")
        key = (network_of(r.get("control"), str(r["layer"])), str(r["labels"]), str(r["layer"]))
        lines.setdefault(key, {})[r["size"]] = float(r["accuracy"])
    sizes = sorted({s for acc in lines.values() for s in acc}, key=size_order)
    order = {"trained": 0, "init": 1, "input": 2}
    ranked = sorted(lines.items(), key=lambda kv: (kv[0][1] != "corrupted", order.get(kv[0][0], 3)))
    return Profile(sizes, [ProfileLine(*key, acc) for key, acc in ranked])
