"""One self-contained page per run, ``report.html``: the setup, the model's own accuracy, the per-layer table (with the
controls when the report carries them), the plots and, after ``masc-probe label-issues``, the label-issue summary
and gallery.

The page is generated from report.json's dict: every number shown sits in a ``<data value="…">`` element holding
its exact JSON value, so no number is ever retyped. It is one file: inline CSS, PNG images as data URIs, no script,
and a Content-Security-Policy that forbids scripts and every fetch, so it reads the same from a disk, a mail or the
Hub. Narrow screens get each table row as a card (``td::before`` shows the column name), so nothing is cut off.

Example::

    html = report_html(json.load(open("runs/mlp-digits/report.json")))
    write_run_html("runs/mlp-digits")
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from masc_probe import _atomic
from masc_probe.errors import InputError

__all__ = ["report_html", "run_html", "write_run_html"]

PAGE_NAME = "report.html"
# The run folder's file names, as the pipeline writes them (pipeline/_outputs.py, pipeline/_issues.py,
# pipeline/_gallery.py); this tier cannot import them from there, so tests/test_report_html.py holds them equal.
LAYER_PLOT, DYNAMICS_PLOT = "accuracy_by_layer.png", "accuracy_over_epochs.png"
ISSUES_DIR, ISSUES_JSON, GALLERY_PNG = "label-issues", "label_issues.json", "label_issues.png"
_DIGITS = 3
_LABELS = {"corrupted": "corrupted labels", "true": "true labels", "label": "given labels"}
_CONTROL_NAMES = {"init": "network at its initial weights", "input": "raw input"}
# Run bookkeeping that does not change the weights (the model card leaves the same keys out of its table).
_NOT_SETTINGS = {"checkpoint_dense_until", "checkpoint_every", "eval_batch_size", "keep_checkpoints", "num_classes",
                 "progress", "num_processes"}
_CSS = """
:root{color-scheme:light;--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--soft:#f6f8fa;--good:#1a7f37;--bad:#cf222e}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:#fff}
main{max-width:74rem;margin:0 auto;padding:1rem 1.25rem 3rem}
h1{font-size:1.6rem;line-height:1.25;margin:.4rem 0}
h2{font-size:1.25rem;margin:2.2rem 0 .6rem;border-bottom:1px solid var(--line);padding-bottom:.3rem}
p{margin:.5rem 0} .muted{color:var(--muted)} .lead{color:var(--muted);margin-top:0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(13rem,1fr));gap:.75rem;margin:1rem 0}
.card{border:1px solid var(--line);border-radius:.5rem;padding:.7rem 1rem;background:var(--soft)}
.card .v{display:block;font-size:1.6rem;font-weight:600;font-variant-numeric:tabular-nums}
.card .k{color:var(--muted);font-size:.9rem}
table{border-collapse:collapse;width:100%;font-size:.9rem;font-variant-numeric:tabular-nums}
th,td{padding:.35rem .55rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top;
overflow-wrap:break-word}
table.kv td{overflow-wrap:anywhere}
th{background:var(--soft);font-weight:600} .n{text-align:right} .nw{white-space:nowrap}
tr.best td.acc{font-weight:700}
.added{color:var(--good);font-weight:600} .removed{color:var(--bad);font-weight:600} .same{color:var(--muted)}
.wrap{overflow-x:auto}
figure{margin:1.2rem 0} img{display:block;max-width:100%;height:auto}
figcaption{color:var(--muted);font-size:.9rem;margin-top:.3rem}
code{font-size:.9em}
footer{margin-top:3rem;color:var(--muted);font-size:.85rem}
"""
# A narrow screen shows each row of a table as a card, the column names beside the values; a table with many columns
# (the controls' comparisons) already on a small laptop screen, where its columns would not fit.
_STACKED = """{t} thead{{display:none}}
{t},{t} tbody,{t} tr,{t} td{{display:block;width:100%}}
{t} tr{{border:1px solid var(--line);border-radius:.5rem;margin:.6rem 0;padding:.3rem .7rem}}
{t} td{{display:flex;justify-content:space-between;gap:1rem;border:0;padding:.15rem 0;text-align:right;
white-space:normal}}
{t} td::before{{content:attr(data-label);color:var(--muted);text-align:left}}
"""
_CSS += ("@media (max-width:800px){main{padding:.75rem}" + _STACKED.format(t="table.stack") + "}"
         + "@media (max-width:1180px){" + _STACKED.format(t="table.stack.wide") + "}")
_WIDE = 9  # columns beyond which a table is stacked below 1180 px
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = _DIGITS, *, signed: bool = False) -> str:
    """A number as shown (rounded) inside a ``<data>`` element holding its exact JSON value; '–' for none."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f'<data value="{_e(repr(value))}">{value:{"+" if signed else ""}.{digits}f}</data>'


def _interval(ci: Any, *, signed: bool = False) -> str:
    if not isinstance(ci, Sequence) or len(ci) != 2:
        return "–"
    return f'<span class="nw">{_num(ci[0], signed=signed)} to {_num(ci[1], signed=signed)}</span>'


def _code(escaped: str) -> str:
    """Markdown's `name` (the report's sentences are written for report.md and the card too) as <code>."""
    return re.sub(r"`([^`<>]+)`", r"<code>\1</code>", escaped)


def _cls(cls: str) -> str:
    return f' class="{cls}"' if cls else ""


def _td(label: str, body: str, cls: str = "") -> str:
    # One child besides the ::before label, so that a narrow screen's flex row keeps the value in one piece.
    return f'<td data-label="{_e(label)}"{_cls(cls)}><span>{body}</span></td>'


def _table(header: Sequence[tuple[str, str]], rows: Sequence[str], *, cls: str = "stack", caption: str = "") -> str:
    """A table whose rows were built with :func:`_td`; *header* is (text, css class) per column."""
    head = "".join(f'<th scope="col"{_cls(c)}>{_e(t)}</th>' for t, c in header)
    cap = f"<caption class=\"muted\">{caption}</caption>" if caption else ""
    cls += " wide" if len(header) > _WIDE else ""
    return (f'<div class="wrap"><table class="{cls}">{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
            "</tbody></table></div>")


def _png_size(png: bytes) -> tuple[int, int] | None:
    if png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 24:
        return None
    return struct.unpack(">II", png[16:24])


def _figure(png: bytes, alt: str, caption: str, ident: str) -> str:
    size = _png_size(png)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (f'<figure id="{_e(ident)}"><img src="{src}" alt="{_e(alt)}"{dims}>'
            f"<figcaption>{caption}</figcaption></figure>")


# ----------------------------------------------------------------------------------------------------- the rows
def _trained_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The trained network's results (control rows left out) at the last epoch, layer by layer."""
    rows = [r for r in report["results"] if not r.get("control")]
    epochs = sorted({int(r["epoch"]) for r in rows if r.get("epoch") is not None})
    if epochs:
        rows = [r for r in rows if r.get("epoch") == epochs[-1]]
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    return sorted(rows, key=lambda r: layers.index(r["layer"]))  # stable: the series keep their order


def _best(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Best layer per (probe, label set): the report's own ``best`` where it has one, else the top test accuracy."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["probe"], r["labels"])
        if key not in out or r["test_accuracy"] > out[key]["test_accuracy"]:
            out[key] = {"layer": r["layer"], "test_accuracy": r["test_accuracy"]}
    for name, best in (report.get("best") or {}).items():
        probe, _, labels = str(name).partition("/")
        if isinstance(best, Mapping) and (probe, labels) in out:
            out[(probe, labels)] = dict(best)
    return out


def _control_name(control: str, info: Any = None) -> str:
    """How the page names a control; the report's own ``source`` of it, where it has one (``run epoch 0``, …)."""
    name = _CONTROL_NAMES.get(control, f"control model {control}")
    source = info.get("source") if isinstance(info, Mapping) else None
    return f"{name} ({source})" if source and control != "input" else name


# --------------------------------------------------------------------------------------------------- the parts
def _cards(report: Mapping[str, Any], best: Mapping[tuple[str, str], Mapping[str, Any]]) -> str:
    cards = []
    if isinstance(report.get("model_test_accuracy"), (int, float)):
        cards.append(("model's own test accuracy", _num(report["model_test_accuracy"]), ""))
    init = ((report.get("controls") or {}).get("init") or {}).get("model_test_accuracy")
    if isinstance(init, (int, float)):
        cards.append(("model at its initial weights", _num(init), ""))
    for (probe, labels), b in best.items():
        if probe == "masc":
            cards.append((f"MASC, best layer ({_LABELS.get(labels, labels)})", _num(b.get("test_accuracy")),
                          f"at <code>{_e(b.get('layer'))}</code>"))
    corruption = report.get("corruption") or {}
    if isinstance(corruption.get("rate"), (int, float)) and corruption["rate"] > 0:
        realized = corruption.get("realized_rate")
        cards.append(("training labels corrupted", _num(corruption["rate"], 2),
                      f"{_e(corruption.get('mode', 'random'))}; realized {_num(realized)}" if realized is not None
                      else _e(corruption.get("mode", "random"))))
    body = "".join(f'<div class="card"><span class="k">{_e(k)}</span><span class="v">{v}</span>'
                   + (f'<span class="k">{note}</span>' if note else "") + "</div>" for k, v, note in cards)
    return f'<section class="cards" aria-label="key numbers">{body}</section>' if cards else ""


def _setup(report: Mapping[str, Any], config: Mapping[str, Any] | None) -> str:
    rows: list[tuple[str, str]] = []
    for key, what in (("model", "model"), ("dataset", "dataset")):
        if report.get(key) is not None:
            rows.append((what, f"<code>{_e(report[key])}</code>"))
    corruption = report.get("corruption")
    if corruption:
        parts = [f"{_e(k)} {_num(v, 4) if isinstance(v, float) else _e(v)}" for k, v in corruption.items()
                 if k in ("mode", "rate", "seed", "realized_rate") and v is not None]
        rows.append(("label corruption", ", ".join(parts)))
    else:
        rows.append(("label corruption", "none: the labels as given"))
    if report.get("protocol"):
        rows.append(("extraction protocol", _e(report["protocol"])))
    threshold = report.get("masc_n_components", report.get("n_components"))
    if isinstance(threshold, (int, float)):
        rows.append(("MASC n_components", _num(threshold, 2) if isinstance(threshold, float) else _e(threshold)))
    for key in ("n_train", "n_test"):
        if isinstance(report.get(key), int):
            rows.append((key.replace("_", " "), _e(report[key])))
    reducer = report.get("reducer")
    if isinstance(reducer, Mapping):
        rows.append(("reducer", _e(", ".join(f"{k}: {v}" for k, v in reducer.items()))))
    mp = (config or {}).get("masc_probe") or {}
    if isinstance(mp, Mapping):
        if mp.get("epoch") is not None:
            stopped = (mp.get("training") or {}).get("stopped")
            rows.append(("trained epochs", _e(mp["epoch"]) + (f" (stopped: {_e(stopped)})" if stopped else "")))
        training = dict(mp.get("training") or {})
        if training.get("optimizer") not in (None, "sgd"):
            training.pop("momentum", None)  # stored, but only SGD reads it
        for key, value in training.items():
            if value is not None and key not in _NOT_SETTINGS and key != "stopped":
                rows.append((f"training {key.replace('_', ' ')}",
                             _num(value, 4) if isinstance(value, float) else _e(value)))
    for key, value in (report.get("provenance") or {}).items():
        rows.append((key.replace("_", " "), f"<code>{_e(value)}</code>"))
    for name, control in (report.get("controls") or {}).items():
        if isinstance(control, Mapping):
            parts = [f"{_e(k)} {_num(v) if isinstance(v, float) else f'<code>{_e(v)}</code>'}"
                     for k, v in control.items() if v is not None]
            rows.append((f"control: {_control_name(name)}", ", ".join(parts)))
    body = [_td("setting", _e(k)) + _td("value", v) for k, v in rows]
    return _table([("setting", ""), ("value", "")], [f"<tr>{r}</tr>" for r in body], cls="stack kv")


def _layer_table(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                 best: Mapping[tuple[str, str], Mapping[str, Any]]) -> str:
    train_sets = list(dict.fromkeys(k for r in rows for k in (r.get("train_accuracy") or {})))
    comparisons = {(c.get("layer"), c.get("probe"), c.get("labels"), c.get("control")): c
                   for c in report.get("comparisons") or [] if isinstance(c, Mapping)}
    controls = list(dict.fromkeys(key[3] for key in comparisons))
    reducers = report.get("reducer") if isinstance(report.get("reducer"), Mapping) else {}
    header = [("layer", ""), ("probe", ""), ("fitted on", ""), ("test accuracy", "n"), ("95% interval", "n"),
              *((f"train accuracy vs {t}", "n") for t in train_sets)]
    for control in controls:  # short column names; the sentences above and the setup table say what each is
        header += [(f"{control} accuracy", "n"), (f"trained − {control}", "n")]
    body = []
    for r in rows:
        key = (r["probe"], r["labels"])
        top = best.get(key, {}).get("layer") == r["layer"]
        how = (reducers or {}).get(r["layer"])
        cells = [_td("layer", f"<code>{_e(r['layer'])}</code>" + (f" ({_e(how)})" if how and how != "flatten"
                                                                     else "")),
                 _td("probe", _e(r["probe"])), _td("fitted on", _e(_LABELS.get(r["labels"], r["labels"]))),
                 _td("test accuracy", _num(r["test_accuracy"]) + (" ★" if top else ""), "n acc"),
                 _td("95% interval", _interval(r.get("test_ci")), "n")]
        cells += [_td(f"train accuracy vs {t}", _num((r.get("train_accuracy") or {}).get(t)), "n")
                  for t in train_sets]
        for control in controls:
            c = comparisons.get((r["layer"], r["probe"], r["labels"], control), {})
            verdict = c.get("verdict")
            css = {"added": "added", "removed": "removed"}.get(str(verdict), "same")
            diff = (f'<span class="nw">{_num(c.get("difference"), signed=True)}</span> '
                    f'({_interval(c.get("ci"), signed=True)}) <span class="nw {css}">{_e(verdict or "–")}</span>')
            cells += [_td(f"{control} accuracy", _num(c.get("control_accuracy")), "n"),
                      _td(f"trained − {control}", diff if c else "–", "n")]
        attrs = f'data-layer="{_e(r["layer"])}" data-probe="{_e(r["probe"])}" data-labels="{_e(r["labels"])}"'
        body.append(f'<tr {attrs}{_cls("best" if top else "")}>{"".join(cells)}</tr>')
    return _table(header, body)


def _verdicts(report: Mapping[str, Any]) -> str:
    """The report's own headline sentences (``ProbeReport.headline``, where it has them), then one count per control
    of the comparisons' verdicts; both computed from the numbers, never fixed text."""
    from masc_probe.report._report import ProbeReport

    out = []
    if report.get("comparisons") and hasattr(ProbeReport, "headline"):
        out += [f"<p>{_code(_e(line))}</p>" for line in ProbeReport.from_dict(report).headline()]
    by_control: dict[str, list[Mapping[str, Any]]] = {}
    for c in report.get("comparisons") or []:
        if isinstance(c, Mapping):
            by_control.setdefault(str(c.get("control")), []).append(c)
    for control, comps in by_control.items():
        count = {v: sum(c.get("verdict") == v for c in comps) for v in ("added", "removed", "no difference")}
        methods = ", ".join(dict.fromkeys(str(c["method"]) for c in comps if c.get("method")))
        name = _control_name(control, (report.get("controls") or {}).get(control))
        out.append(f'<p class="verdicts" data-control="{_e(control)}">Against the {_e(name)}, '
                   f"layer by layer: the trained network reads <span class=\"added\">more</span> in "
                   f"<strong>{count['added']}</strong> of {len(comps)} layer × probe × label-set rows, "
                   f"<span class=\"removed\">less</span> in <strong>{count['removed']}</strong>, and no different "
                   f"in <strong>{count['no difference']}</strong>"
                   + (f" (95% interval of the paired difference: {_e(methods)})" if methods else "") + ".</p>")
    return "".join(out)


def _plots(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], images: Mapping[str, bytes]) -> str:
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    series = list(dict.fromkeys(f"{r['probe']} ({_LABELS.get(r['labels'], r['labels'])})" for r in rows))
    model = report.get("model_test_accuracy")
    own = f"; a dotted line marks the model's own accuracy, {model:.3f}" if isinstance(model, (int, float)) else ""
    layer_png = images.get(LAYER_PLOT) or _draw(report, dynamics=False)
    out = [_figure(layer_png, f"Line chart of test accuracy on the true test labels by layer, over {len(layers)} "
                              f"layers from {layers[0]} to {layers[-1]}, one line per probe and label set: "
                              f"{', '.join(series)}{own}.",
                   "Test accuracy of each probe by layer (bands: 95% intervals).", "plot-layers")]
    epochs = sorted({int(r["epoch"]) for r in report["results"] if r.get("epoch") is not None})
    if len(epochs) > 1:
        png = images.get(DYNAMICS_PLOT) or _draw(report, dynamics=True)
        out.append(_figure(png, f"Line chart of test accuracy over training epochs {epochs[0]} to {epochs[-1]}, each "
                                "probe and label set at its best layer of the last epoch, with the model's own "
                                "accuracy.", "Accuracy over the probed checkpoints.", "plot-dynamics"))
    return "".join(out)


def _draw(report: Mapping[str, Any], *, dynamics: bool) -> bytes:
    """A plot the folder lacks, drawn from the trained network's rows of the report."""
    from masc_probe.report._report import ProbeReport

    trained = ProbeReport.from_dict({**report, "results": [r for r in report["results"] if not r.get("control")]})
    fig = trained.plot_dynamics(None) if dynamics else trained.plot_layers(None)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _issues(issues: Mapping[str, Any], gallery: bytes | None) -> str:
    parts = ["<h2 id=\"label-issues\">Suspected label errors</h2>"]
    accuracy = issues.get("select_accuracy") if issues.get("criterion") == "select" else issues.get("heldout_accuracy")
    where = "the test split" if issues.get("criterion") == "select" else "held-out folds of the training data"
    parts.append(f"<p>Detector: <code>{_e(issues.get('probe'))}</code> at layer <code>{_e(issues.get('layer'))}"
                 f"</code>, chosen by its accuracy on {where} ({_num(accuracy)}), scoring each training sample with "
                 f"probes fitted on the other {_e(max(int(issues.get('folds') or 2) - 1, 1))} fold(s).</p>")
    n, flagged = issues.get("n_samples"), issues.get("n_flagged")
    line = (f"<p>Estimated share of wrong labels: {_num(issues.get('noise_rate'))}; {_e(flagged)} of {_e(n)} samples "
            f"flagged (ranked by {_e(issues.get('method', 'probe'))}).")
    if isinstance(issues.get("realized_noise_rate"), (int, float)):
        line += f" True share of wrong labels: {_num(issues['realized_noise_rate'])}."
    parts.append(line + "</p>")
    metrics = issues.get("metrics") or {}
    if metrics:
        cols = [("AUROC", "auroc"), ("average precision", "average_precision"), ("precision", "precision"),
                ("recall", "recall"), ("F1", "f1"), ("lift top 1%", "lift_top_1pct"), ("lift top 5%", "lift_top_5pct")]
        names = {"chosen": "chosen detector", "masc": "MASC at its best layer", "aum": "AUM (training margins)"}
        rows = [f'<tr data-method="{_e(name)}">' + _td("method", _e(names.get(name, name)))
                + "".join(_td(label, _num((m or {}).get(key)), "n") for label, key in cols) + "</tr>"
                for name, m in metrics.items()]
        parts.append(_table([("method", ""), *((label, "n") for label, _ in cols)], rows,
                            caption="Against the true labels, which the detector never saw."))
    if gallery is not None:
        shown = issues.get("gallery") or {}
        k, wrong = shown.get("k"), shown.get("truly_wrong")
        alt = (f"Grid of the {k or 'top'} training images ranked most likely mislabeled, each with its index, score, "
               "given and suggested label")
        caption = f"The {_e(k) if k else 'top'} most suspect samples, most suspect first."
        if isinstance(wrong, int) and k:
            alt += f"; {wrong} of the {k} carry a wrong given label (red frame), the others a right one (green)"
            caption += (f" <strong>{_e(wrong)} of {_e(k)}</strong> were truly mislabeled "
                        f"({_num(shown.get('fraction_wrong'))}).")
        parts.append(_figure(gallery, alt + ".", caption, "gallery"))
    return "".join(parts)


# ------------------------------------------------------------------------------------------------------ the page
def report_html(report: Mapping[str, Any], *, config: Mapping[str, Any] | None = None,
                images: Mapping[str, bytes] | None = None, label_issues: Mapping[str, Any] | None = None) -> str:
    """The report page as one HTML string.

    Args:
        report: report.json's dict (``ProbeReport.to_dict()``); ``controls`` and ``comparisons`` are shown when
            present.
        config: The run's ``config.json`` (its ``masc_probe`` key gives the training settings), or None.
        images: PNG bytes by file name: ``accuracy_by_layer.png`` (drawn from *report* when missing),
            ``accuracy_over_epochs.png`` (drawn when missing and the report spans epochs), ``label_issues.png``
            (the gallery; shown only when given, with *label_issues*).
        label_issues: ``label_issues.json``'s dict, after ``masc-probe label-issues``, or None.

    Returns:
        The page: self-contained, no script, no fetch.

    Raises:
        InputError: A report without a list of results.
    """
    results = report.get("results") if isinstance(report, Mapping) else None
    if not isinstance(results, list) or not results or not all(isinstance(r, Mapping) for r in results):
        raise InputError(f"expected a report dict with a non-empty list of results, got "
                         f"{type(results).__name__ if isinstance(report, Mapping) else type(report).__name__}")
    images = images or {}
    rows = _trained_rows(report)
    best = _best(report, rows)
    title = " · ".join(str(report[k]) for k in ("model", "dataset") if report.get(k)) or "probe report"
    corruption = report.get("corruption") or {}
    rate = corruption.get("rate")
    lead = (f"{_e(report.get('model') or 'The model')} trained on {_e(report.get('dataset') or 'its data')}"
            + (f" with {_num(rate, 2)} of its training labels corrupted ({_e(corruption.get('mode', 'random'))})"
               if isinstance(rate, (int, float)) and rate > 0 else " with its labels as given")
            + ": how much true-label information each layer still holds, read by MASC and baseline probes.")
    from masc_probe import __version__

    sections = [
        f"<h1>{_e(title)} — MASC probe report</h1>", f'<p class="lead">{lead}</p>', _cards(report, best),
        '<h2 id="layers">Probe accuracy by layer</h2>',
        "<p>Test accuracy against the true test labels; ★ marks each probe and label set's best layer.</p>",
        _verdicts(report), _layer_table(report, rows, best), _plots(report, rows, images),
    ]
    if label_issues is not None:
        sections.append(_issues(label_issues, images.get(GALLERY_PNG)))
    sections += ['<h2 id="setup">Setup</h2>', _setup(report, config),
                 f"<footer>Generated by masc-probe {_e(__version__)} from report.json (schema version "
                 f"{_e(report.get('schema_version', '?'))}); every number above is that file's.</footer>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)} — MASC probe report</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(s for s in sections if s)}</main></body></html>\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"expected a JSON file at {path}, got an error reading it: {exc}") from None


def run_html(run_dir: str | os.PathLike[str], *, staged: str | os.PathLike[str] | None = None) -> str:
    """The page of a run folder: its ``report.json``, ``config.json``, plots and ``label-issues/`` files.

    Args:
        run_dir: The run folder (or any folder with a ``report.json``).
        staged: A folder whose ``report.json`` and plots are about to replace the run folder's (read from there).

    Raises:
        InputError: No ``report.json`` there, or a JSON file that does not parse.
    """
    run = Path(run_dir)
    source = Path(staged) if staged is not None else run
    if not (source / "report.json").is_file():
        raise InputError(f"expected a run folder with report.json, got {str(run)!r} without one")
    report = _read_json(source / "report.json")
    if not isinstance(report, Mapping):
        raise InputError(f"expected a JSON object in {source / 'report.json'}, got {type(report).__name__}")
    config = _read_json(run / "config.json") if (run / "config.json").is_file() else None
    images = {name: (source / name).read_bytes() for name in (LAYER_PLOT, DYNAMICS_PLOT)
              if (source / name).is_file()}
    issues_dir = run / ISSUES_DIR
    issues = _read_json(issues_dir / ISSUES_JSON) if (issues_dir / ISSUES_JSON).is_file() else None
    if issues is not None and (issues_dir / GALLERY_PNG).is_file():
        images[GALLERY_PNG] = (issues_dir / GALLERY_PNG).read_bytes()
    return report_html(report, config=config if isinstance(config, Mapping) else None, images=images,
                       label_issues=issues if isinstance(issues, Mapping) else None)


def write_run_html(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``report.html`` into a run folder (atomically), from what the folder holds (:func:`run_html`).

    Returns:
        The page's path.
    """
    return _atomic.write_text(Path(run_dir) / PAGE_NAME, run_html(run_dir))
