"""One view of a report: everything report.md, report.html, the model card and the CLI summary show, built once.

:func:`build_view` reads a :class:`~masc_probe.report.ProbeReport` and returns a :class:`ReportView`: the setup, the
model's accuracy (and its init control's), the headline sentences (``report.headline()``, placed as they are), the
trained network's per-layer rows with each control beside them, the selection made without the evaluation images and
the accuracy-by-subspace-size profile when the report has them, and the oracle rows under that name. The renderers
only lay this out: none of them picks a best layer or words a verdict. Their numbers go through ``_format.fmt``, the
one number formatter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from masc_probe.errors import InputError
from masc_probe.report._blocks import Profile, Readout, Selection, as_ci, as_float, read_profile, read_selection
from masc_probe.report._format import fmt, size_text

# What the renderers take from here: the view, its builder, the formatter and the words for networks and label sets.
__all__ = ["LABELS_TEXT", "NETWORK_TEXT", "ReportView", "Row", "Setting", "Versus", "build_view", "fmt",
           "profile_of", "selection_of", "size_text"]

NETWORK_TEXT = {"trained": "trained network", "init": "network at its initial weights", "input": "raw input"}
LABELS_TEXT = {"corrupted": "corrupted labels", "true": "true labels", "label": "given labels"}
_NOT_SETTINGS = {"checkpoint_dense_until", "checkpoint_every", "eval_batch_size", "keep_checkpoints", "num_classes",
                 "progress", "num_processes", "stopped"}  # run bookkeeping: it does not change the weights


def profile_of(report: Any) -> list[dict[str, Any]] | None:
    """report.json's ``profile`` (MASC accuracy across subspace sizes), or None."""
    rows = report.profile if isinstance(getattr(type(report), "profile", None), property) \
        else report.extra.get("profile")
    return list(rows) if rows else None


def selection_of(report: Any) -> dict[str, Any] | None:
    """report.json's ``selection`` (layer and size chosen without the evaluation images), or None."""
    sel = report.selection if isinstance(getattr(type(report), "selection", None), property) \
        else report.extra.get("selection")
    return dict(sel) if sel else None


# ------------------------------------------------------------------------------------------------- the parts
@dataclass(frozen=True)
class Setting:
    """One line of the setup: a name and its text; *value* is the number behind the text, where there is one."""

    name: str
    text: str
    value: float | int | None = None
    code: bool = False  # a name or digest, shown as code


@dataclass(frozen=True)
class Versus:
    """A trained number against one control at the same layer (one of report.json's ``comparisons``)."""

    control: str
    control_accuracy: float | None
    difference: float | None
    ci: tuple[float, float] | None
    verdict: str | None
    p_value: float | None = None
    p_holm: float | None = None  # Holm-adjusted within the control; the verdict is then the adjusted one
    method: str | None = None


@dataclass(frozen=True)
class Row:
    """One trained result at the last epoch: a layer × probe × label set (the raw input's included)."""

    layer: str
    reducer: str
    probe: str
    labels: str
    accuracy: float
    ci: tuple[float, float] | None
    std: float | None
    train: dict[str, float]
    best: bool  # the report's best hidden layer of this series (report.best_layer)
    versus: dict[str, Versus] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportView:
    """Everything a rendering of a report shows; see :func:`build_view`."""

    title: str
    model: str | None
    dataset: str | None
    corruption: dict[str, Any] | None
    model_accuracy: float | None
    init_accuracy: float | None
    n_test: int | None
    epoch: int | None
    n_seeds: int | None
    headline: list[str]
    skipped: str | None  # one sentence on controls that could not be run
    setup: list[Setting]
    series: list[tuple[str, str]]
    layers: list[str]
    rows: list[Row]
    controls: list[str]  # the compared controls: model controls as the report lists them, the raw input last
    control_sources: dict[str, str | None]
    train_sets: list[str]
    selection: Selection | None
    profile: Profile | None
    epochs: list[dict[str, Any]]  # {"epoch", "model", "values": {series: accuracy}}, an "init" row first if any
    control_best: list[Readout]  # each model control's best hidden layer per MASC label set (report.best_layer)

    def row(self, layer: str, probe: str, labels: str) -> Row | None:
        return next((r for r in self.rows if (r.layer, r.probe, r.labels) == (layer, probe, labels)), None)

    def best_rows(self) -> list[Row]:
        return [r for r in self.rows if r.best]

    def methods(self) -> str:
        """How the per-layer comparisons' intervals (and p-values) were computed, as the report names it."""
        return "; ".join(dict.fromkeys(v.method for r in self.rows for v in r.versus.values() if v.method))

    def verdict_counts(self) -> dict[str, dict[str, Any]]:
        """Per compared control: how many rows each verdict has, the total and the interval methods."""
        out = {}
        for name in self.controls:
            found = [r.versus[name] for r in self.rows if name in r.versus]
            counts: dict[str, Any] = {v: sum(x.verdict == v for x in found) for v in ("added", "removed",
                                                                                       "no difference")}
            counts.update(total=len(found), methods=list(dict.fromkeys(x.method for x in found if x.method)))
            out[name] = counts
        return out

    @property
    def has_input(self) -> bool:
        return "input" in self.layers


# ---------------------------------------------------------------------------------------------- the building
def _setup(report: Any, config: Mapping[str, Any] | None) -> list[Setting]:
    out = [Setting(what, str(v), code=True) for what, v in (("model", report.model), ("dataset", report.dataset))
           if v is not None]
    c = report.corruption
    if c:
        parts = [f"{k} {fmt(v) if k == 'realized_rate' else v}" for k, v in c.items()
                 if k in ("mode", "rate", "seed", "realized_rate") and v is not None]
        out.append(Setting("label corruption", ", ".join(parts)))
    else:
        out.append(Setting("label corruption", "none: the labels as given"))
    extra = report.extra
    if extra.get("protocol"):
        out.append(Setting("extraction protocol", str(extra["protocol"])))
    threshold = extra.get("masc_n_components")
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        out.append(Setting("MASC n_components", f"{threshold:g}", threshold))
    for key in ("n_train", "n_test"):
        if isinstance(getattr(report, key), int):
            out.append(Setting(key.replace("_", " "), str(getattr(report, key)), getattr(report, key)))
    if isinstance(extra.get("reducer"), Mapping):
        out.append(Setting("reducer", ", ".join(f"{k}: {v}" for k, v in extra["reducer"].items())))
    mp = (config or {}).get("masc_probe") or {}
    if isinstance(mp, Mapping):
        training = dict(mp.get("training") or {})
        if mp.get("epoch") is not None:
            stopped = training.get("stopped")
            out.append(Setting("trained epochs", f"{mp['epoch']}" + (f" (stopped: {stopped})" if stopped else "")))
        if training.get("optimizer") not in (None, "sgd"):
            training.pop("momentum", None)  # stored, but only SGD reads it
        for key, value in training.items():
            if value is not None and key not in _NOT_SETTINGS:
                number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
                out.append(Setting(f"training {key.replace('_', ' ')}",
                                   f"{value:g}" if isinstance(value, float) else str(value), number))
    out += [Setting(key.replace("_", " "), str(value), code=True) for key, value in report.provenance.items()]
    for name, info in report.controls.items():
        if isinstance(info, Mapping):
            text = ", ".join(f"{k} {fmt(v) if isinstance(v, float) else v}" for k, v in info.items() if v is not None)
            out.append(Setting(f"control: {NETWORK_TEXT.get(name, f'control model {name}')}", text))
    return out


def _versus(comp: Mapping[str, Any]) -> Versus:
    return Versus(str(comp.get("control")), as_float(comp.get("control_accuracy")), as_float(comp.get("difference")),
                  as_ci(comp.get("ci")), comp.get("verdict"), as_float(comp.get("p_value")), as_float(comp.get("p_holm")),
                  comp.get("method"))


def _rows(report: Any, controls: list[str]) -> tuple[list[Row], dict[tuple[str, str], str]]:
    trained = [r for r in report._at_epoch(None) if r.get("control") is None]
    series = [s for s in report.series if any((r["probe"], r["labels"]) == s for r in trained)]
    best = {s: report.best_layer(*s)["layer"] for s in series}
    reducers = report.extra.get("reducer") if isinstance(report.extra.get("reducer"), Mapping) else {}
    layers = list(dict.fromkeys(r["layer"] for r in trained))
    rows = []
    for r in sorted(trained, key=lambda r: layers.index(r["layer"])):  # stable: the series keep their order
        versus = {}
        for name in controls:
            comp = report.comparison(r["layer"], r["probe"], r["labels"], name)
            if comp is not None:
                versus[name] = _versus(comp)
        rows.append(Row(r["layer"], str(reducers.get(r["layer"], "flatten")), r["probe"], r["labels"],
                        float(r["test_accuracy"]), as_ci(r.get("test_ci")), as_float(r.get("test_accuracy_std")),
                        {k: float(v) for k, v in (r.get("train_accuracy") or {}).items()},
                        best.get((r["probe"], r["labels"])) == r["layer"], versus))
    return rows, best


def _epochs(report: Any, best: Mapping[tuple[str, str], str]) -> list[dict[str, Any]]:
    if len(report.epochs) < 2:
        return []
    by_epoch = report.extra.get("model_test_accuracy_by_epoch", {})
    cell = {(r.get("epoch"), r["layer"], r["probe"], r["labels"]): r["test_accuracy"] for r in report.results
            if r.get("control") is None}
    init = {(r["layer"], r["probe"], r["labels"]): r["test_accuracy"] for r in report.results
            if r.get("control") == "init"}
    out = []
    at_init = {s: init.get((layer, *s)) for s, layer in best.items()}
    if any(v is not None for v in at_init.values()):
        out.append({"epoch": "init (control)", "model": (report.controls.get("init") or {}).get("model_test_accuracy"),
                    "values": at_init})
    for ep in report.epochs:
        out.append({"epoch": ep, "model": by_epoch.get(str(ep)),
                    "values": {s: cell.get((ep, layer, *s)) for s, layer in best.items()}})
    return out


def _control_best(report: Any, series: list[tuple[str, str]]) -> list[Readout]:
    out = []
    for name in report.controls:
        for probe, labels in series:
            if name == "input" or probe != "masc":
                continue
            try:
                best = report.best_layer(probe, labels, control=name)
            except InputError:  # the control was not probed on this series
                continue
            out.append(Readout(name, labels, best["layer"], report.extra.get("masc_n_components"),
                               float(best["test_accuracy"])))
    return out


def _skipped(report: Any) -> str | None:
    skipped = report.extra.get("controls_skipped")
    if not isinstance(skipped, Mapping) or not skipped:
        return None
    parts = [f"`{name}` ({str(reason).rstrip('.')})" for name, reason in skipped.items()]
    return "Controls not run: " + "; ".join(parts) + "."


def _compared(report: Any) -> list[str]:
    compared = {c.get("control") for c in report.comparisons}
    names = [n for n in report.controls if n in compared and n != "input"]
    names += sorted(str(n) for n in compared - set(names) - {"input", None})
    return names + (["input"] if "input" in compared else [])


def build_view(report: Any, *, config: Mapping[str, Any] | None = None) -> ReportView:
    """The view of *report* every renderer reads.

    Args:
        report: A :class:`~masc_probe.report.ProbeReport`.
        config: The run's ``config.json`` (its ``masc_probe`` key adds the training settings to the setup), or None.

    Returns:
        The :class:`ReportView`.

    Raises:
        InputError: *report* is not a ProbeReport, or its ``profile`` / ``selection`` rows lack their keys.
    """
    # Duck-typed, so that the view does not import the report class that renders through it (no import cycle).
    if not all(hasattr(report, name) for name in ("results", "headline", "best_layer", "extra")):
        raise InputError(f"expected a ProbeReport (ProbeReport.from_dict reads report.json's dict), got "
                         f"{type(report).__name__}")
    selection = read_selection(selection_of(report))  # checked before the headline reads it
    controls = _compared(report)
    rows, best = _rows(report, controls)
    series = list(best)
    title = " · ".join(str(v) for v in (report.model, report.dataset) if v)
    aggregate = report.extra.get("aggregate")
    return ReportView(
        title=title, model=report.model, dataset=report.dataset, corruption=report.corruption,
        model_accuracy=report.model_test_accuracy,
        init_accuracy=as_float((report.controls.get("init") or {}).get("model_test_accuracy")),
        n_test=report.n_test, epoch=report.epochs[-1] if report.epochs else None,
        n_seeds=aggregate.get("n_runs") if isinstance(aggregate, Mapping) else None,
        headline=list(report.headline()), skipped=_skipped(report), setup=_setup(report, config),
        series=series, layers=list(dict.fromkeys(r.layer for r in rows)), rows=rows, controls=controls,
        control_sources={n: (report.controls.get(n) or {}).get("source") for n in controls},
        train_sets=list(dict.fromkeys(k for r in rows for k in r.train)),
        selection=selection, profile=read_profile(profile_of(report)),
        epochs=_epochs(report, best), control_best=_control_best(report, series))
