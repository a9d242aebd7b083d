"""The label-issue gallery: the top-k suspected samples of a :class:`~masc_probe.label_issues.LabelIssues`
as a grid of images, each with its index, given and suggested label, score and (when the truth is known) whether
the given label was really wrong.

Images are drawn as the data stores them, not as the normalized tensors the model sees: for a dataset from
:func:`masc_probe.load_data` the stored pixels (before channel conversion, resizing and normalization) on the data's
own intensity scale (16 for scikit-learn's digits, 255 for bytes); for other map-style data the sample's image
tensor, stretched to its own range (the only scale it carries).

Example::

    fig = issues.plot_gallery(load_data("digits", corrupt=0.6), k=32)
    fig.savefig("label_issues.png")
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from masc_probe import _atomic
from masc_probe.errors import InputError
from masc_probe.report._files import GALLERY_PNG

if TYPE_CHECKING:
    from pathlib import Path

# A LabelIssues (masc_probe.label_issues), which imports this module lazily: named, not imported, so that the two
# modules do not import each other even for type checking.
LabelIssues = Any

__all__ = ["gallery_positions", "gallery_summary", "plot_gallery", "write_gallery"]

GALLERY_NAME = GALLERY_PNG  # the run folder's file names are defined once, in report._files
_COLUMNS = 8  # panels per row: 32 make a 8 x 4 grid that reads on a laptop screen
_WRONG, _RIGHT = "#c62828", "#2e7d32"  # frame colours: the given label was wrong / right


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be an int >= 1 (the number of samples shown), got {k!r}")
    return int(k)


def gallery_positions(issues: LabelIssues, k: int) -> np.ndarray:
    """Positions (in data order) of the *k* best-ranked samples, most suspect first (fewer when the data is smaller).
    """
    k = _check_k(k)
    return np.argsort(issues.rank, kind="stable")[:k]


def gallery_summary(issues: LabelIssues, k: int) -> dict[str, Any]:
    """What a gallery of *k* shows, JSON-ready: ``k`` (as many as there are samples, at most *k*), the ``index`` of
    each shown sample, and with true labels ``truly_wrong`` (how many of them carry a wrong given label) and
    ``fraction_wrong``; without them both are None."""
    shown = gallery_positions(issues, k)
    wrong = None if issues.true_label is None else int(np.sum(issues.given_label[shown] != issues.true_label[shown]))
    return {"k": len(shown), "index": [int(i) for i in issues.index[shown]], "truly_wrong": wrong,
            "fraction_wrong": None if wrong is None or not len(shown) else wrong / len(shown)}


def plot_gallery(issues: LabelIssues, data: Any, *, k: int = 32, ax: Any = None) -> Any:
    """See :meth:`LabelIssues.plot_gallery`."""
    shown = gallery_positions(issues, k)
    images, names = _stored_images(data, shown, issues.index)
    rows, cols = math.ceil(len(shown) / _COLUMNS), min(_COLUMNS, len(shown))
    if ax is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(1.5 * cols + 0.2, 2.0 * rows + 0.9), dpi=100)
        FigureCanvasAgg(fig)  # no pyplot: the user's backend and figure list stay untouched
        ax = fig.add_axes((0.01, 0.07, 0.98, 0.83 if rows == 1 else 0.86))
    fig = ax.figure
    ax.set_axis_off()
    for slot, (pos, image) in enumerate(zip(shown.tolist(), images)):
        r, c = divmod(slot, cols)
        panel = ax.inset_axes((c / cols + 0.1 / cols, 1 - (r + 1) / rows, 0.8 / cols, 0.64 / rows))
        panel.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
        panel.set_xticks([])
        panel.set_yticks([])
        given, suggested = int(issues.given_label[pos]), int(issues.suggested_label[pos])
        lines = [f"#{int(issues.index[pos])}  score {issues.score[pos]:.3g}",
                 f"given {_name(names, given)} → {_name(names, suggested)}"]
        wrong = False
        if issues.true_label is not None:
            true = int(issues.true_label[pos])
            wrong = true != given
            lines.append(f"wrong: true {_name(names, true)}" if wrong else "given was right")
            for spine in panel.spines.values():
                spine.set_edgecolor(_WRONG if wrong else _RIGHT)
                spine.set_linewidth(3)
        panel.set_title("\n".join(lines), fontsize=7.5, pad=3, color=_WRONG if wrong else "black")
        panel.set_gid(f"label-issue-{int(issues.index[pos])}")  # lets a reader of the figure find each sample
    head = f"The {len(shown)} samples ranked most likely mislabeled ({issues.probe} at {issues.layer})"
    known = issues.true_label is not None
    if known:
        n_wrong = gallery_summary(issues, len(shown))["truly_wrong"]
        head += f": {n_wrong} of {len(shown)} truly mislabeled"
    fig.suptitle(head, fontsize=10)
    fig.text(0.5, 0.01, "index · out-of-fold score (below 0: another label fits better) · given → suggested label"
             + ("; red frame: the given label was wrong, green: it was right" if known else ""),
             ha="center", va="bottom", fontsize=7.5, color="#444444")
    return fig


def write_gallery(issues: LabelIssues, data: Any, path: str | Path, *, k: int = 32) -> Path:
    """Draw the gallery of the top *k* and write it as a PNG (atomically)."""
    fig = plot_gallery(issues, data, k=k)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return _atomic.write_bytes(path, buf.getvalue())


def _name(names: list[str] | None, label: int) -> str:
    if names is None or not 0 <= label < len(names) or names[label] == str(label):
        return str(label)
    name = names[label]
    return f"{label} {name[:12] + '…' if len(name) > 13 else name}"


def _stored_images(data: Any, positions: np.ndarray, index: np.ndarray) -> tuple[list[np.ndarray], list[str] | None]:
    """The images at *positions*, (H, W) or (H, W, 3) in [0, 1], and the class names when the data has them."""
    from masc_probe.data import describe_data

    base = getattr(data, "dataset", data)  # a DataLoader's dataset
    if not (hasattr(base, "__getitem__") and hasattr(base, "__len__")):
        raise InputError(f"plot_gallery needs map-style data (e.g. a datasets.Dataset from load_data), got "
                         f"{type(data).__name__}")
    if len(base) != len(index):
        raise InputError(f"expected the data the issues were found on ({len(index)} samples), got {len(base)} samples")
    try:
        record: dict[str, Any] | None = describe_data(base)
    except InputError:
        record = None
    names = list(record["class_names"]) if record else _class_names(base)
    images = []
    if record is not None and hasattr(base, "with_format"):
        from masc_probe.data._preprocess import decode_batch

        prep = record["preprocessing"]
        size, scale = tuple(int(v) for v in prep["source_size"]), float(prep["pixel_scale"])
        plain = base.with_format(None)  # the stored columns, without the transform to model input
        for pos in positions.tolist():
            row = plain[pos]
            _check_index(row, pos, index)
            value = row["image"]
            raw = isinstance(value, (bytes, bytearray)) and len(value) == math.prod(size)
            stored = decode_batch([value], size, raw)[0]  # type: ignore[arg-type]
            pixels = stored.astype(np.float32) / np.float32(scale)
            images.append(_hwc(np.clip(pixels, 0.0, 1.0)))
        return images, names
    for pos in positions.tolist():
        row = base[pos]
        if isinstance(row, Mapping):
            _check_index(row, pos, index)
            value = row.get("image", row.get("pixel_values"))
        else:
            value = row[0] if isinstance(row, (tuple, list)) else row
        x = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float32)
        if x.ndim == 3 and x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3):
            x = x.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise InputError(f"plot_gallery needs images (H, W), (C, H, W) or (H, W, C) with 1 or 3 channels, got "
                             f"shape {x.shape} at position {pos}")
        low, high = float(x.min()), float(x.max())
        images.append(_hwc((x - low) / (high - low) if high > low else np.zeros_like(x)))
    return images, names


def _hwc(chw: np.ndarray) -> np.ndarray:
    return chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)


def _check_index(row: Mapping[str, Any], pos: int, index: np.ndarray) -> None:
    """A row that carries its index must be the sample the issues name at that position."""
    got = row.get("index")
    if got is not None and int(np.asarray(got)) != int(index[pos]):
        raise InputError(f"expected the data the issues were found on, in the same order: position {pos} holds "
                         f"index {int(np.asarray(got))}, the issues index {int(index[pos])}")


def _class_names(base: Any) -> list[str] | None:
    feature = getattr(base, "features", {}).get("label") if hasattr(base, "features") else None
    return list(feature.names) if getattr(feature, "names", None) else None
