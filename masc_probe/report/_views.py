"""Human views of a ProbeReport: the markdown table, the plots (matplotlib's object API: no pyplot state) and a
pandas DataFrame."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from masc_probe import _atomic
from masc_probe.errors import InputError

# A ProbeReport; not imported, because ProbeReport's module imports this one (its methods call these functions).
ProbeReport = Any

_LABEL_STYLE = {"true": "-", "label": "-", "corrupted": "--"}


def _series_name(probe: str, labels: str) -> str:
    return probe if labels == "label" else f"{probe} ({labels})"


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}".replace("-", "−")


def _trained(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trained network's results (the raw input's included); a control model's carry ``control``."""
    return [r for r in rows if r.get("control") is None]


def _layer_name(layer: str, how: str = "flatten") -> str:
    return f"`{layer}`" + (f" ({how})" if how != "flatten" else "")


def _control_columns(report: ProbeReport) -> list[str]:
    """Controls with comparisons, model controls first (as the report lists them), the raw input last."""
    compared = {c["control"] for c in report.comparisons}
    names = [n for n in report.controls if n in compared and n != "input"]
    return names + (["input"] if "input" in compared else [])


def _controls_section(report: ProbeReport, rows: list[dict[str, Any]], series: list[tuple[str, str]],
                      digits: int) -> list[str]:
    """The comparison table: each trained result beside each control at the same layer, with the paired
    difference, its 95% interval and its verdict."""
    controls = _control_columns(report)
    if not controls:
        return []
    lines = ["", "Controls at each layer: the control's accuracy, then trained − control on the same test images "
                 "(95% interval, exact McNemar) and what it says.", ""]
    head = ["layer", "probe (fitted on)", "trained"]
    for name in controls:
        label = "raw input" if name == "input" else name
        head += [label, f"trained − {label}"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|---|---:|" + "---:|---|" * len(controls))
    for r in rows:
        if r["layer"] == "input" or (r["probe"], r["labels"]) not in series:
            continue
        cells = [f"`{r['layer']}`", _series_name(r["probe"], r["labels"]), _fmt(r["test_accuracy"], digits)]
        for name in controls:
            comp = report.comparison(r["layer"], r["probe"], r["labels"], name)
            if comp is None:
                cells += ["–", "–"]
                continue
            low, high = comp["ci"]
            cells += [_fmt(comp["control_accuracy"], digits),
                      f"{_signed(comp['difference'], digits)} [{_signed(low, digits)}, {_signed(high, digits)}] "
                      f"{comp['verdict']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(report: ProbeReport, *, digits: int = 3) -> str:
    """See :meth:`ProbeReport.to_markdown`."""
    rows = _trained(report._at_epoch(None))
    lines: list[str] = []
    title = " · ".join(str(v) for v in (report.model, report.dataset) if v)
    lines.append(f"### Probe accuracy by layer{f' — {title}' if title else ''}")
    lines.append("")
    facts = []
    if report.model_test_accuracy is not None:
        facts.append(f"**Model's own test accuracy: {report.model_test_accuracy:.{digits}f}**")
        at_init = (report.controls.get("init") or {}).get("model_test_accuracy")
        if at_init is not None:
            facts.append(f"at its initial weights: {at_init:.{digits}f}")
    if report.corruption:
        c = report.corruption
        realized = c.get("realized_rate")
        facts.append(f"label corruption: {c.get('mode', '?')} p={c.get('rate', '?')}"
                     + (f" (realized {realized:.3f})" if isinstance(realized, (int, float)) else ""))
    if report.n_test:
        facts.append(f"n_test={report.n_test}")
    if report.epochs:
        facts.append(f"epoch {report.epochs[-1]}")
    if "aggregate" in report.extra:
        facts.append(f"mean ± std over {report.extra['aggregate'].get('n_runs')} seeds")
    if facts:
        lines += ["; ".join(facts), ""]
    headline = report.headline()
    if headline:
        lines += ["What the controls show:", ""] + [f"- {text}" for text in headline] + [""]

    series = [s for s in report.series if any((r["probe"], r["labels"]) == s for r in rows)]
    cell = {(r["layer"], r["probe"], r["labels"]): r for r in rows}
    best = {s: report.best_layer(*s)["layer"] for s in series}
    header = ["layer", *(_series_name(p, lab) for p, lab in series)]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" + "---:|" * len(series))
    # The per-layer reducer (ProbeRunner's reducer=), shown where it is not the paper's flatten.
    reducers = report.extra.get("reducer") if isinstance(report.extra.get("reducer"), dict) else {}
    for layer in dict.fromkeys(r["layer"] for r in rows):
        cells = [_layer_name(layer, reducers.get(layer, "flatten"))]
        for s in series:
            r = cell.get((layer, *s))
            if r is None:
                cells.append("–")
                continue
            text = _fmt(r["test_accuracy"], digits)
            if "test_accuracy_std" in r:
                text += f" ± {r['test_accuracy_std']:.{digits}f}"
            cells.append(f"**{text}** ★" if best[s] == layer else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Test accuracy against the true test labels; ★ marks each column's best hidden layer"
                 + (" (`input`, the raw input, is a control)" if any(r["layer"] == "input" for r in rows) else "")
                 + ". 95% Wilson intervals are in `report.json` (`test_ci`).")
    lines += _controls_section(report, rows, series, digits)

    train_sets = list(dict.fromkeys(k for r in rows for k in r.get("train_accuracy", {})))
    if train_sets:
        lines += ["", "Training accuracy of each probe at its best layer:", ""]
        lines.append("| probe (fitted on) | layer | " + " | ".join(f"train vs {t}" for t in train_sets) + " |")
        lines.append("|---|---|" + "---:|" * len(train_sets))
        for s in series:
            r = cell[(best[s], *s)]
            tr = r.get("train_accuracy", {})
            lines.append(f"| {_series_name(*s)} | `{best[s]}` | "
                         + " | ".join(_fmt(tr.get(t), digits) for t in train_sets) + " |")

    if len(report.epochs) > 1:
        lines += ["", "Over epochs (each series at its best layer of the last epoch):", ""]
        by_epoch = report.extra.get("model_test_accuracy_by_epoch", {})
        lines.append("| epoch | model | " + " | ".join(_series_name(*s) for s in series) + " |")
        lines.append("|---:|---:|" + "---:|" * len(series))
        everything = {(r.get("epoch"), r["layer"], r["probe"], r["labels"]): r for r in _trained(report.results)}
        at_init = _init_values(report, {s: best[s] for s in series})
        if any(v is not None for v in at_init.values()):
            model_at_init = (report.controls.get("init") or {}).get("model_test_accuracy")
            lines.append(f"| init (control) | {_fmt(model_at_init, digits)} | "
                         + " | ".join(_fmt(at_init[s], digits) for s in series) + " |")
        for ep in report.epochs:
            vals = [everything.get((ep, best[s], *s)) for s in series]
            lines.append(f"| {ep} | {_fmt(by_epoch.get(str(ep)), digits)} | "
                         + " | ".join(_fmt(v["test_accuracy"] if v else None, digits) for v in vals) + " |")
    return "\n".join(lines) + "\n"


def _init_values(report: ProbeReport, layers: dict[tuple[str, str], str]) -> dict[tuple[str, str], float | None]:
    """The init control's accuracy of each series at the given layer (None where it has none)."""
    found = {(r["layer"], r["probe"], r["labels"]): r["test_accuracy"] for r in report.results
             if r.get("control") == "init"}
    return {s: found.get((layer, *s)) for s, layer in layers.items()}


def _probe_colors(report: ProbeReport) -> dict[str, str]:
    # One color per probe, one line style per label set: a probe's two lines read as a pair.
    palette = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]
    probes = list(dict.fromkeys(p for p, _ in report.series))
    return {p: palette[i % len(palette)] for i, p in enumerate(probes)}


def _figure(width: float, ax: Any) -> tuple[Any, Any]:
    """(figure, axes): the caller's *ax* and its figure, or a new figure on an Agg canvas (no pyplot, so no global
    backend switch for the user's session)."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig: Any, path: Path | None, *, own: bool) -> Any:
    """Lay out a figure drawn here (a caller's figure keeps its own layout); write it as a PNG when *path* is given."""
    if own:
        fig.tight_layout()
    if path is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        _atomic.write_bytes(path, buf.getvalue())
    return fig


def plot_layers(report: ProbeReport, path: Path | None, *, epoch: int | None = None, ax: Any = None) -> Any:
    """See :meth:`ProbeReport.plot_layers`."""
    every = report._at_epoch(epoch)
    rows = _trained(every)
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    if not layers:
        raise InputError("plot needs at least one result, got an empty report")
    own = ax is None
    # With controls the legend has more entries than fit over the curves: it goes to the right of a wider figure.
    outside = own and bool(report.controls)
    fig, ax = _figure(max(6.0, 0.55 * len(layers) + 3.0) + (2.6 if outside else 0.0), ax)
    xs = list(range(len(layers)))
    cell = {(r["layer"], r["probe"], r["labels"]): r for r in rows}
    colors = _probe_colors(report)
    # The raw input is a control: an open marker of its series' color, not the first point of the trained curve.
    as_control = "input" in layers and bool(report.controls)
    for probe, labels in report.series:
        pts = [(i, cell[(lay, probe, labels)]) for i, lay in enumerate(layers)
               if (lay, probe, labels) in cell and not (as_control and lay == "input")]
        if as_control and ("input", probe, labels) in cell:
            ax.plot([layers.index("input")], [cell[("input", probe, labels)]["test_accuracy"]], marker="s", ms=6,
                    mfc="none", color=colors[probe], ls="none")
        for name in report.controls:
            if name == "input":
                continue
            ctl = {r["layer"]: r for r in every if r.get("control") == name and (r["probe"], r["labels"]) ==
                   (probe, labels)}
            cx = [i for i, lay in enumerate(layers) if lay in ctl]
            if cx:
                ax.plot(cx, [ctl[layers[i]]["test_accuracy"] for i in cx], _LABEL_STYLE.get(labels, "-"), lw=1.0,
                        marker="x", ms=4, color=colors[probe], alpha=0.45)
        if not pts:
            continue
        x = [i for i, _ in pts]
        y = [r["test_accuracy"] for _, r in pts]
        (line,) = ax.plot(x, y, _LABEL_STYLE.get(labels, "-"), marker="o", ms=4, color=colors[probe],
                          label=_series_name(probe, labels))
        if all("test_accuracy_std" in r for _, r in pts):
            lo = [r["test_accuracy"] - r["test_accuracy_std"] for _, r in pts]
            hi = [r["test_accuracy"] + r["test_accuracy_std"] for _, r in pts]
        elif all("test_ci" in r for _, r in pts):
            lo = [r["test_ci"][0] for _, r in pts]
            hi = [r["test_ci"][1] for _, r in pts]
        else:
            continue
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    if report.model_test_accuracy is not None:
        ax.axhline(report.model_test_accuracy, color="black", ls=":", lw=1.5,
                   label=f"model ({report.model_test_accuracy:.3f})")
    for name, info in report.controls.items():
        if name == "input":
            if as_control:
                ax.plot([], [], marker="s", mfc="none", color="gray", ls="none", label="raw input (control)")
            continue
        ax.plot([], [], marker="x", color="gray", lw=1.0, alpha=0.6, label=f"{name} (control, thin)")
        if info.get("model_test_accuracy") is not None:
            ax.axhline(info["model_test_accuracy"], color="gray", ls=":", lw=1.0,
                       label=f"model at {name} ({info['model_test_accuracy']:.3f})")
    ax.set_xticks(xs)
    ax.set_xticklabels(layers, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("test accuracy (true labels)")
    ax.set_xlabel("layer")
    ax.grid(True, alpha=0.3)
    title = " · ".join(str(v) for v in (report.model, report.dataset) if v) or "probe accuracy by layer"
    if report.corruption and report.corruption.get("rate") is not None:
        title += f" · corruption {report.corruption['rate']}"
    ax.set_title(title, fontsize=10)
    if outside:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8, loc="best")
    return _finish(fig, path, own=own)


def plot_dynamics(report: ProbeReport, path: Path | None, *, ax: Any = None) -> Any:
    """See :meth:`ProbeReport.plot_dynamics`."""
    epochs = report.epochs
    if not epochs:
        raise InputError("plot_dynamics needs results with an 'epoch', got a report without an epoch axis")
    own = ax is None
    fig, ax = _figure(7.0, ax)
    everything = {(r.get("epoch"), r["layer"], r["probe"], r["labels"]): r for r in _trained(report.results)}
    colors = _probe_colors(report)
    for probe, labels in report.series:
        try:
            layer = report.best_layer(probe, labels)["layer"]
        except InputError:
            continue
        pts = [(ep, everything[(ep, layer, probe, labels)]) for ep in epochs
               if (ep, layer, probe, labels) in everything]
        ax.plot([e for e, _ in pts], [r["test_accuracy"] for _, r in pts], _LABEL_STYLE.get(labels, "-"),
                marker="o", ms=3, color=colors[probe], label=f"{_series_name(probe, labels)} @ {layer}")
        at_init = _init_values(report, {(probe, labels): layer})[(probe, labels)]
        if at_init is not None:  # the init control is the epoch-0 network: its reference line
            ax.axhline(at_init, color=colors[probe], ls=_LABEL_STYLE.get(labels, "-"), lw=0.8, alpha=0.45)
    by_epoch = report.extra.get("model_test_accuracy_by_epoch", {})
    model_pts = [(ep, by_epoch[str(ep)]) for ep in epochs if by_epoch.get(str(ep)) is not None]
    if model_pts:
        ax.plot([e for e, _ in model_pts], [a for _, a in model_pts], color="black", ls=":", marker="s", ms=3,
                label="model")
    if any(r.get("control") == "init" for r in report.results):
        ax.plot([], [], color="gray", lw=0.8, alpha=0.6, label="init control (epoch-0 weights), thin")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (true labels)")
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(" · ".join(str(v) for v in (report.model, report.dataset) if v) or "accuracy over epochs",
                 fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return _finish(fig, path, own=own)


def to_pandas(report: ProbeReport) -> Any:
    """See :meth:`ProbeReport.to_pandas`."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("ProbeReport.to_pandas needs pandas, which is not installed: pip install pandas") from None
    rows = []
    for r in report.results:
        row = {k: v for k, v in r.items() if k not in ("test_ci", "train_accuracy", "train_ci")}
        if r.get("test_ci"):
            row["test_ci_low"], row["test_ci_high"] = r["test_ci"]
        for labels, value in r.get("train_accuracy", {}).items():
            row[f"train_accuracy_{labels}"] = value
        for labels, (low, high) in r.get("train_ci", {}).items():
            row[f"train_ci_{labels}_low"], row[f"train_ci_{labels}_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)
