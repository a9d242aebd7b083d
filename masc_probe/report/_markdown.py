"""The markdown renderings of a :class:`~masc_probe.report._view.ReportView`: report.md, the CLI summary and the
sections the model card reuses. Layout only: every number, best layer and sentence comes from the view."""

from __future__ import annotations

from functools import partial
from typing import Any

from masc_probe.report._view import LABELS_TEXT, NETWORK_TEXT, ReportView, Row, fmt, size_text


def _series_name(probe: str, labels: str) -> str:
    return probe if labels == "label" else f"{probe} ({labels})"


def _layer_name(layer: str, how: str = "flatten") -> str:
    return f"`{layer}`" + (f" ({how})" if how != "flatten" else "")


def _table(head: list[str], align: str, rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + align.strip("|") + "|",
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def _interval(diff: float | None, ci: Any, n: Any) -> str:
    if ci is None:
        return n(diff, signed=True)
    return f"{n(diff, signed=True)} [{n(ci[0], signed=True)}, {n(ci[1], signed=True)}]"


def facts(view: ReportView, digits: int = 3) -> str:
    """The line under the title: the model's accuracy (and at init), the corruption, the test size."""
    out = []
    if view.model_accuracy is not None:
        out.append(f"**Model's own test accuracy: {fmt(view.model_accuracy, digits=digits)}**")
        if view.init_accuracy is not None:
            out.append(f"at its initial weights: {fmt(view.init_accuracy, digits=digits)}")
    c = view.corruption
    if c:
        realized = c.get("realized_rate")
        out.append(f"label corruption: {c.get('mode', '?')} p={c.get('rate', '?')}"
                   + (f" (realized {fmt(realized)})" if isinstance(realized, (int, float)) else ""))
    if view.n_test:
        out.append(f"n_test={view.n_test}")
    if view.epoch is not None:
        out.append(f"epoch {view.epoch}")
    if view.n_seeds is not None:
        out.append(f"mean ± std over {view.n_seeds} seeds")
    return "; ".join(out)


def lead(view: ReportView) -> list[str]:
    """The sentences that lead: the skipped controls, then the headline."""
    out = [view.skipped, ""] if view.skipped else []
    if view.headline:
        out += ["What the controls show:", "", *(f"- {text}" for text in view.headline), ""]
    return out


def selection(view: ReportView, digits: int = 3, *, full: bool = True) -> list[str]:
    """The choice made without the evaluation images, its comparisons and (*full*) the paper rule and the oracle."""
    sel = view.selection
    if sel is None:
        return []
    n = partial(fmt, digits=digits)
    out = ["#### Chosen without the evaluation images", "",
           f"Rule `{sel.rule}`: each layer and subspace size chosen on {sel.n_choose} of the test images (split "
           f"{sel.split}, seed {sel.seed}) against {sel.labels_used}; accuracy then measured on the other "
           f"{sel.n_eval} images against the true labels." + (f" The rule's condition: {sel.condition.rstrip('.')}."
                                                               if sel.condition else ""), ""]
    out += _table(["network", "subspaces from", "layer", "size", "choosing part (labels used)",
                   "evaluation part (true labels)"], "---|---|---|---:|---:|---:",
                  [[NETWORK_TEXT.get(c.network, c.network), LABELS_TEXT.get(c.labels, c.labels), f"`{c.layer}`",
                    size_text(c.size), n(c.choosing_accuracy), n(c.evaluation_accuracy)] for c in sel.choices])
    if sel.comparisons:
        methods = "; ".join(dict.fromkeys(c.method for c in sel.comparisons if c.method))
        out += ["", "Each chosen readout of the trained network against the control's, paired on the evaluation "
                    "images" + (f" (95% interval and p-value: {methods})" if methods else "") + ":", ""]
        out += _table(["subspaces from", "trained", "control", "trained acc.", "control acc.", "trained − control",
                       "p", "verdict"], "---|---|---|---:|---:|---|---:|---|",
                      [[LABELS_TEXT.get(c.labels, c.labels), f"`{c.trained_layer}`, {size_text(c.trained_size)}",
                        f"{NETWORK_TEXT.get(c.control, c.control)}: `{c.control_layer}`, {size_text(c.control_size)}",
                        n(c.trained), n(c.control_accuracy), _interval(c.difference, c.ci, n), n(c.p_value, p=True),
                        str(c.verdict or "–")] for c in sel.comparisons])
    if full and sel.paper_rule:
        out += ["", "The paper's fixed size, the layer chosen on the choosing part (evaluation part):", ""]
        out += _table(["network", "subspaces from", "layer", "size", "evaluation accuracy"], "---|---|---|---:|---:|",
                      [[NETWORK_TEXT.get(r.network, r.network), LABELS_TEXT.get(r.labels, r.labels), f"`{r.layer}`",
                        size_text(r.size), n(r.accuracy)] for r in sel.paper_rule])
    if full and sel.oracle:
        out += ["", "Oracle: the highest accuracy on all test images over layers and sizes. It was chosen with the "
                    "answers, so it bounds what a choice can reach and is no result:", ""]
        out += _table(["network", "subspaces from", "layer", "size", "oracle accuracy"], "---|---|---|---:|---:|",
                      [[NETWORK_TEXT.get(r.network, r.network), LABELS_TEXT.get(r.labels, r.labels), f"`{r.layer}`",
                        size_text(r.size), n(r.accuracy)] for r in sel.oracle])
    return out + [""]


def layer_table(view: ReportView, digits: int = 3) -> list[str]:
    """The trained network's accuracy, layers × (probe, label set), each series' best hidden layer starred."""
    n = partial(fmt, digits=digits)
    cells: dict[tuple[str, str, str], Row] = {(r.layer, r.probe, r.labels): r for r in view.rows}
    body = []
    for layer in view.layers:
        line = [_layer_name(layer, next(r.reducer for r in view.rows if r.layer == layer))]
        for s in view.series:
            r = cells.get((layer, *s))
            text = "–" if r is None else n(r.accuracy) + (f" ± {n(r.std)}" if r.std is not None else "")
            line.append(f"**{text}** ★" if r is not None and r.best else text)
        body.append(line)
    star = ("★ marks each column's highest hidden layer on all test images (an oracle, not a selection)"
            if view.selection else "★ marks each column's best hidden layer")
    return [*_table(["layer", *(_series_name(*s) for s in view.series)], "---|" + "---:|" * len(view.series), body),
            "", "Test accuracy against the true test labels; " + star
            + (" (`input`, the raw input, is a control)" if view.has_input else "")
            + ". 95% Wilson intervals are in `report.json` (`test_ci`)."]


def _controls(view: ReportView, digits: int) -> list[str]:
    if not view.controls:
        return []
    n = partial(fmt, digits=digits)
    methods = view.methods()
    out = ["", "Controls at each layer: the control's accuracy, then trained − control on the same test images "
               + (f"(95% interval: {methods}) " if methods else "") + "and what it says.", ""]
    head = ["layer", "probe (fitted on)", "trained"]
    for name in view.controls:
        label = "raw input" if name == "input" else name
        head += [label, f"trained − {label}"]
    body = []
    for r in view.rows:
        if r.layer == "input":
            continue
        line = [f"`{r.layer}`", _series_name(r.probe, r.labels), n(r.accuracy)]
        for name in view.controls:
            v = r.versus.get(name)
            holm = f" p(Holm) {n(v.p_holm, p=True)}" if v is not None and v.p_holm is not None else ""
            line += ["–", "–"] if v is None else [n(v.control_accuracy),
                                                 f"{_interval(v.difference, v.ci, n)}{holm} {v.verdict}"]
        body.append(line)
    return out + _table(head, "---|---|---:|" + "---:|---|" * len(view.controls), body)


def _training(view: ReportView, digits: int) -> list[str]:
    if not view.train_sets:
        return []
    best = {(r.probe, r.labels): r for r in view.best_rows()}
    rows = [[_series_name(*s), f"`{best[s].layer}`", *(fmt(best[s].train.get(t), digits=digits)
                                                       for t in view.train_sets)] for s in view.series if s in best]
    return ["", "Training accuracy of each probe at its best layer:", "",
            *_table(["probe (fitted on)", "layer", *(f"train vs {t}" for t in view.train_sets)],
                    "---|---|" + "---:|" * len(view.train_sets), rows)]


def _epochs(view: ReportView, digits: int) -> list[str]:
    if not view.epochs:
        return []
    rows = [[str(e["epoch"]), fmt(e["model"], digits=digits), *(fmt(e["values"].get(s), digits=digits)
                                                                for s in view.series)] for e in view.epochs]
    return ["", "Over epochs (each series at its best layer of the last epoch):", "",
            *_table(["epoch", "model", *(_series_name(*s) for s in view.series)], "---:|---:|" + "---:|" *
                    len(view.series), rows)]


def profile(view: ReportView, digits: int = 3) -> list[str]:
    """MASC accuracy on all test images at each subspace size (exploration: no size is chosen here)."""
    if view.profile is None:
        return []
    prof = view.profile
    rows = [[NETWORK_TEXT.get(line.network, line.network), LABELS_TEXT.get(line.labels, line.labels),
             f"`{line.layer}`", *(fmt(line.accuracy.get(s), digits=digits) for s in prof.sizes)] for line in prof.lines]
    return ["", "MASC accuracy on all test images by subspace size (fractions of variance, then k components per "
                "class; `profile.png`):", "",
            *_table(["network", "subspaces from", "layer", *(size_text(s) for s in prof.sizes)],
                    "---|---|---|" + "---:|" * len(prof.sizes), rows)]


def exploration(view: ReportView, digits: int = 3) -> list[str]:
    """Every layer on all test images: the layer table, the controls, training accuracy, epochs, the profile."""
    head = ["#### Exploration: every layer on all test images", ""] if view.selection else []
    return [*head, *layer_table(view, digits), *_controls(view, digits), *_training(view, digits),
            *_epochs(view, digits), *profile(view, digits)]


def to_markdown(view: ReportView, *, digits: int = 3) -> str:
    """report.md: the title, the facts, the headline, the selection (when made), then the exploration."""
    line = facts(view, digits)
    out = [f"### Probe accuracy by layer{f' — {view.title}' if view.title else ''}", "", *([line, ""] if line else []),
           *lead(view), *selection(view, digits), *exploration(view, digits)]
    return "\n".join(out) + "\n"


def summary(view: ReportView) -> str:
    """The CLI's summary: the facts, the headline, the choice and its comparisons, the trained network's table."""
    line = facts(view)
    out = [*([line, ""] if line else []), *lead(view), *selection(view, full=False), *layer_table(view)]
    return "\n".join(out) + "\n"
