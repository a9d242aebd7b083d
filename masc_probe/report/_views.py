"""Human views of a ProbeReport: markdown (laid out by ``_markdown`` from the report's view), the plots
(matplotlib's object API: no pyplot state) and a pandas DataFrame."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from masc_probe import _atomic
from masc_probe.errors import InputError
from masc_probe.report import _markdown
from masc_probe.report._format import fmt, size_order, size_text
from masc_probe.report._view import NETWORK_TEXT, build_view

# A ProbeReport; not imported, because ProbeReport's module imports this one (its methods call these functions).
ProbeReport = Any

_LABEL_STYLE = {"true": "-", "label": "-", "corrupted": "--"}


def _series_name(probe: str, labels: str) -> str:
    return probe if labels == "label" else f"{probe} ({labels})"


def _trained(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trained network's results (the raw input's included); a control model's carry ``control``."""
    return [r for r in rows if r.get("control") is None]


def to_markdown(report: ProbeReport, *, digits: int = 3) -> str:
    """See :meth:`ProbeReport.to_markdown`: the report's view (:func:`~masc_probe.report._view.build_view`) laid out
    as markdown."""
    return _markdown.to_markdown(build_view(report), digits=digits)


def summary_text(report: ProbeReport) -> str:
    """The summary a command prints after probing: the model's accuracy, the headline sentences, the choice made
    without the evaluation images (when the report has one) and the trained network's accuracy by layer (the
    controls' table is in report.md and report.html).

    Args:
        report: A :class:`~masc_probe.report.ProbeReport`.

    Returns:
        Markdown text.
    """
    return _markdown.summary(build_view(report))


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
                   label=f"model ({fmt(report.model_test_accuracy)})")
    for name, info in report.controls.items():
        if name == "input":
            if as_control:
                ax.plot([], [], marker="s", mfc="none", color="gray", ls="none", label="raw input (control)")
            continue
        ax.plot([], [], marker="x", color="gray", lw=1.0, alpha=0.6, label=f"{name} (control, thin)")
        if info.get("model_test_accuracy") is not None:
            ax.axhline(info["model_test_accuracy"], color="gray", ls=":", lw=1.0,
                       label=f"model at {name} ({fmt(info['model_test_accuracy'])})")
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


_PROFILE_STYLE = {"trained": ("-", "o", 1.0), "init": ("--", "x", 0.7), "input": (":", "s", 0.6)}
_LABEL_COLOR = {"corrupted": "C3", "true": "C0", "label": "C2"}


def plot_profile(report: ProbeReport, path: str | Path | None = None) -> Any:
    """Draw MASC accuracy against subspace size, one panel per hidden layer: the trained network (solid), the same
    network at its initial weights (dashed) and the raw input (dotted, the same in every panel), one color per label
    set. The sizes sit on a categorical axis: the variance fractions ascending, then the counts per class.

    Args:
        report: A :class:`~masc_probe.report.ProbeReport` with a ``profile`` (report.json's key of that name).
        path: A PNG file to write (atomically); None: only draw.

    Returns:
        The ``matplotlib.figure.Figure`` drawn on.

    Raises:
        InputError: The report has no profile.
    """
    view = build_view(report).profile
    if view is None:
        raise InputError(f"plot_profile needs a report with a 'profile', got one without (keys: "
                         f"{sorted(report.extra)})")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xs = {size: i for i, size in enumerate(sorted(view.sizes, key=size_order))}
    layers = list(dict.fromkeys(line.layer for line in view.lines if line.network != "input")) or ["input"]
    ncols = min(4, len(layers))
    nrows = -(-len(layers) // ncols)
    fig = Figure(figsize=(3.4 * ncols + 1.8, 2.9 * nrows + 0.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for i, layer in enumerate(layers):
        ax = axes[i // ncols][i % ncols]
        for line in view.lines:
            if line.layer != layer and line.network != "input":
                continue
            ls, marker, alpha = _PROFILE_STYLE.get(line.network, ("-.", "^", 0.7))
            pts = sorted((xs[s], a) for s, a in line.accuracy.items())
            ax.plot([x for x, _ in pts], [a for _, a in pts], ls=ls, marker=marker, ms=4, alpha=alpha,
                    color=_LABEL_COLOR.get(line.labels, "C4"),
                    label=f"{NETWORK_TEXT.get(line.network, line.network)}, {line.labels} labels")
        ax.set_title(f"{layer}", fontsize=9)
        ax.set_xticks(list(xs.values()))
        ax.set_xticklabels([size_text(s) for s in xs], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0.0, 1.02)
        ax.grid(True, alpha=0.3)
    for j in range(len(layers), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    for row in axes:
        row[0].set_ylabel("MASC test accuracy", fontsize=8)
    legend = {}  # every line's label once, whichever panel has it
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), fontsize=7, loc="center right")
    fig.suptitle(" · ".join(str(v) for v in (report.model, report.dataset) if v) + " — subspace size "
                 "(variance fraction, then k per class)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.8 / (3.4 * ncols + 1.8), 1))
    return _finish(fig, None if path is None else Path(path), own=False)


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
