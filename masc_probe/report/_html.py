"""One self-contained page per run, ``report.html``, rendered from the report's view with a Jinja2 template.

The page shows the setup, the model's own accuracy, the headline sentences, the choice made without the evaluation
images (when the report has one), the per-layer table (with the controls when the report carries them), the plots
and, after ``masc-probe label-issues``, the label-issue summary and gallery. Every number sits in a
``<data value="…">`` element holding its exact JSON value, so no number is ever retyped. It is one file: inline CSS,
PNG images as data URIs, no script, and a Content-Security-Policy that forbids scripts and every fetch, so it reads
the same from a disk, a mail or the Hub. Narrow screens get each table row as a card (``td::before`` shows the
column name), so nothing is cut off.

Example::

    html = report_html(ProbeReport.from_json_file("runs/mlp-digits/report.json"))
    write_run_html("runs/mlp-digits")
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from masc_probe import _atomic
from masc_probe.errors import InputError
from masc_probe.report._files import (DYNAMICS_PLOT, GALLERY_PNG, ISSUES_DIR, ISSUES_JSON, LAYER_PLOT, PAGE_NAME,
                                      PROFILE_PLOT, REPORT_JSON)
from masc_probe.report._view import LABELS_TEXT, NETWORK_TEXT, ReportView, build_view, fmt, size_text

__all__ = ["report_html", "run_html", "write_run_html"]

TEMPLATES = Path(__file__).parent / "templates"
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_WIDE = 9  # columns beyond which a table is stacked below 1180 px


@lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html", "j2"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, code=_code, size=size_text)
    env.globals.update(LABELS=LABELS_TEXT, NETWORKS=NETWORK_TEXT, WIDE=_WIDE, CSP=_CSP)
    return env


def _num(value: Any, *, signed: bool = False, p: bool = False, digits: int = 3) -> Any:
    """A number as shown (:func:`~masc_probe.report._view.fmt`) inside a ``<data>`` element holding its exact JSON
    value; '–' for none."""
    from markupsafe import Markup, escape

    text = fmt(value, signed=signed, p=p, digits=digits)
    if text == "–":
        return text
    return Markup(f'<data value="{escape(json.dumps(value))}">{escape(text)}</data>')


def _code(text: str) -> Any:
    """Markdown's `name` (the report's sentences are written for report.md and the card too) as <code>."""
    from markupsafe import Markup, escape

    return Markup(re.sub(r"`([^`<>]+)`", r"<code>\1</code>", str(escape(text))))


def _png_size(png: bytes) -> tuple[int, int] | None:
    if png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 24:
        return None
    return struct.unpack(">II", png[16:24])


def _figure(png: bytes, alt: str, caption: str, ident: str) -> dict[str, Any]:
    size = _png_size(png)
    return {"id": ident, "alt": alt, "caption": caption, "width": size[0] if size else None,
            "height": size[1] if size else None,
            "src": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _figures(report: Any, view: ReportView, images: Mapping[str, bytes]) -> list[dict[str, Any]]:
    """The plots: the folder's own files, or drawn from the report where the folder lacks them."""
    from masc_probe.report._report import ProbeReport
    from masc_probe.report._views import plot_profile

    layers = view.layers
    series = list(dict.fromkeys(f"{p} ({LABELS_TEXT.get(lab, lab)})" for p, lab in view.series))
    own = (f"; a dotted line marks the model's own accuracy, {fmt(view.model_accuracy)}"
           if view.model_accuracy is not None else "")
    trained = ProbeReport.from_dict({**report.to_dict(), "results": [r for r in report.results
                                                                     if not r.get("control")]})
    out = [_figure(images.get(LAYER_PLOT) or _png(trained.plot_layers(None)),
                   f"Line chart of test accuracy on the true test labels by layer, over {len(layers)} layers from "
                   f"{layers[0]} to {layers[-1]}, one line per probe and label set: {', '.join(series)}{own}.",
                   "Test accuracy of each probe by layer (bands: 95% intervals).", "plot-layers")]
    epochs = report.epochs
    if len(epochs) > 1:
        out.append(_figure(images.get(DYNAMICS_PLOT) or _png(trained.plot_dynamics(None)),
                           f"Line chart of test accuracy over training epochs {epochs[0]} to {epochs[-1]}, each probe "
                           "and label set at its best layer of the last epoch, with the model's own accuracy.",
                           "Accuracy over the probed checkpoints.", "plot-dynamics"))
    if view.profile is not None:
        out.append(_figure(images.get(PROFILE_PLOT) or _png(plot_profile(report)),
                           f"Line charts of MASC test accuracy against subspace size, one panel per layer, the trained "
                           f"network against the network at its initial weights and the raw input, over "
                           f"{len(view.profile.sizes)} sizes from {size_text(view.profile.sizes[0])} to "
                           f"{size_text(view.profile.sizes[-1])}.",
                           "MASC accuracy on all test images by subspace size (exploration: no size is chosen "
                           "here).", "plot-profile"))
    return out


def _cards(view: ReportView) -> list[tuple[str, Any, str]]:
    """The key numbers: (what, value, note); the selected readouts where a selection exists, else the best layers."""
    cards: list[tuple[str, Any, str]] = []
    if view.model_accuracy is not None:
        cards.append(("model's own test accuracy", view.model_accuracy, ""))
    if view.init_accuracy is not None:
        cards.append(("model at its initial weights", view.init_accuracy, ""))
    if view.selection is not None:
        cards += [(f"MASC, chosen without the evaluation images ({LABELS_TEXT.get(c.labels, c.labels)})",
                   c.evaluation_accuracy, f"`{c.layer}`, size {size_text(c.size)}; on the evaluation part")
                  for c in view.selection.choices if c.network == "trained"]
    else:
        cards += [(f"MASC, best layer ({LABELS_TEXT.get(r.labels, r.labels)})", r.accuracy, f"at `{r.layer}`")
                  for r in view.best_rows() if r.probe == "masc"]
    return cards


def report_html(report: Any, *, config: Mapping[str, Any] | None = None, images: Mapping[str, bytes] | None = None,
                label_issues: Mapping[str, Any] | None = None) -> str:
    """The report page as one HTML string.

    Args:
        report: A :class:`~masc_probe.report.ProbeReport` (``ProbeReport.from_json_file`` reads report.json).
        config: The run's ``config.json`` (its ``masc_probe`` key gives the training settings), or None.
        images: PNG bytes by file name: ``accuracy_by_layer.png`` (drawn from *report* when missing),
            ``accuracy_over_epochs.png`` and ``profile.png`` (drawn when missing and the report has epochs or a
            profile), ``label_issues.png`` (the gallery; shown only when given, with *label_issues*).
        label_issues: ``label_issues.json``'s dict, after ``masc-probe label-issues``, or None.

    Returns:
        The page: self-contained, no script, no fetch.

    Raises:
        InputError: *report* is not a ProbeReport, or one without results.
    """
    view = build_view(report, config=config)
    if not view.rows:
        raise InputError("expected a ProbeReport with at least one result of the trained network, got none")
    images = images or {}
    from masc_probe._version import __version__

    issues = dict(label_issues) if label_issues is not None else None
    gallery = images.get(GALLERY_PNG) if issues is not None else None
    return _environment().get_template("report.html.j2").render(
        view=view, cards=_cards(view), figures=_figures(report, view, images), issues=issues,
        gallery=_issues_figure(issues, gallery) if gallery else None, version=__version__,
        schema_version=report.to_dict().get("schema_version", "?"))


def _issues_figure(issues: Mapping[str, Any], gallery: bytes) -> dict[str, Any]:
    shown = issues.get("gallery") or {}
    k, wrong = shown.get("k"), shown.get("truly_wrong")
    alt = (f"Grid of the {k or 'top'} training images ranked most likely mislabeled, each with its index, score, "
           "given and suggested label")
    if isinstance(wrong, int) and k:
        alt += f"; {wrong} of the {k} carry a wrong given label (red frame), the others a right one (green)"
    return _figure(gallery, alt + ".", "", "gallery")


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
        InputError: No ``report.json`` there, or a JSON file that does not parse or is not a report.
    """
    from masc_probe.report._report import ProbeReport

    run = Path(run_dir)
    source = Path(staged) if staged is not None else run
    if not (source / REPORT_JSON).is_file():
        raise InputError(f"expected a run folder with {REPORT_JSON}, got {str(run)!r} without one")
    data = _read_json(source / REPORT_JSON)
    if not isinstance(data, Mapping):
        raise InputError(f"expected a JSON object in {source / REPORT_JSON}, got {type(data).__name__}")
    report = ProbeReport.from_dict(data)
    config = _read_json(run / "config.json") if (run / "config.json").is_file() else None
    images = {name: (source / name).read_bytes() for name in (LAYER_PLOT, DYNAMICS_PLOT, PROFILE_PLOT)
              if (source / name).is_file()}
    folder = run / ISSUES_DIR
    issues = _read_json(folder / ISSUES_JSON) if (folder / ISSUES_JSON).is_file() else None
    if issues is not None and (folder / GALLERY_PNG).is_file():
        images[GALLERY_PNG] = (folder / GALLERY_PNG).read_bytes()
    return report_html(report, config=config if isinstance(config, Mapping) else None, images=images,
                       label_issues=issues if isinstance(issues, Mapping) else None)


def write_run_html(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``report.html`` into a run folder (atomically), from what the folder holds (:func:`run_html`).

    Returns:
        The page's path.
    """
    return _atomic.write_text(Path(run_dir) / PAGE_NAME, run_html(run_dir))
