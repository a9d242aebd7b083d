"""ProbeReport: probe accuracies per layer × probe × label set, as JSON, a markdown table and plots.

The JSON layout is a public format (docs/architecture.md, "Report format"): ``schema_version``, ``model``, ``dataset``,
``corruption``, ``provenance``, ``model_test_accuracy``, ``results`` and ``best`` keep their meaning; more keys may be
added beside them (``n_test``, ``n_train``, per-result ``n_test``, ``train_ci``, an ``epoch`` per result for
checkpoint dynamics, ``aggregate`` for reports averaged over seeds). Version 2 added the controls: results of a control
model carry ``control`` (the trained network's have none; the raw input stays the layer ``"input"``), the top-level
``controls`` says what each control is, and ``comparisons`` pairs every trained result with each control on the same
test images (``_compare``). Version-1 reports are read as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from masc_probe import _atomic
from masc_probe.errors import InputError
from masc_probe.report import _aggregate, _compare, _views
from masc_probe.report._compare import wilson_interval

SCHEMA_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # 1: before the controls (issue 18); read as written
INPUT_LAYER = "input"  # the raw input: a control beside the layers, never a candidate for the best hidden layer
_KNOWN_KEYS = ("schema_version", "model", "dataset", "corruption", "provenance", "model_test_accuracy", "results",
               "best", "n_test")
# The top-level n_components of reports written before 0.1.0's release was the threshold MASC was asked for, the
# same word as each result's per-class counts; it is read under its own name now.
_THRESHOLD_KEY = "masc_n_components"
_REQUIRED_RESULT_KEYS = ("layer", "probe", "labels", "test_accuracy")


def _key(result: Mapping[str, Any]) -> tuple[Any, ...]:
    return (result.get("epoch"), result["layer"], result["probe"], result["labels"], result.get("control"))


class ProbeReport:
    """Results of probing a model layer by layer.

    Args:
        results: One dict per layer × probe × label set (× epoch), with keys ``layer``, ``probe``, ``labels``
            (``"corrupted"``, ``"true"`` or ``"label"``: the label set the probe was fitted on), ``test_accuracy``
            (against the test set's true labels), and optionally ``train_accuracy`` ({label set: accuracy}),
            ``n_components`` (MASC: one count per class), ``epoch``, ``n_test``, ``n_train_scored`` (rows the
            training accuracy was measured on), ``test_ci`` and ``control`` (the name of the control model whose
            result it is; absent or None for the trained network). A missing ``test_ci`` is computed as the Wilson 95%
            interval from ``test_accuracy`` and ``n_test``; ``train_ci`` likewise from ``n_train_scored`` (or
            ``n_train``).
        model: Model spec, e.g. ``"mlp"`` or ``"timm/resnet18"``.
        dataset: Dataset spec.
        corruption: ``{"mode", "rate", "seed", "realized_rate"}`` or None for clean labels.
        provenance: Versions, data fingerprint, solver.
        model_test_accuracy: The model's own test accuracy (for an epoch axis: that of the last epoch).
        n_test: Number of test samples behind each accuracy.
        n_train: Number of training samples the probes were fitted on.
        extra: More top-level keys to keep in the JSON (e.g. ``preprocessing``, ``reducer``; ``controls`` and
            ``comparisons``, which :attr:`controls` and :attr:`comparisons` read).

    Raises:
        InputError: If a result lacks a required key or two results share layer, probe, label set, epoch and
            control.

    >>> r = ProbeReport([{"layer": "fc1", "probe": "masc", "labels": "true", "test_accuracy": 0.9}], n_test=100)
    >>> r.best_layer()["layer"]
    'fc1'
    """

    def __init__(self, results: Iterable[Mapping[str, Any]], *, model: str | None = None,
                 dataset: str | None = None, corruption: Mapping[str, Any] | None = None,
                 provenance: Mapping[str, Any] | None = None, model_test_accuracy: float | None = None,
                 n_test: int | None = None, n_train: int | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        self.model = model
        self.dataset = dataset
        self.corruption = dict(corruption) if corruption is not None else None
        self.provenance = dict(provenance) if provenance is not None else {}
        self.model_test_accuracy = None if model_test_accuracy is None else float(model_test_accuracy)
        self.n_test = None if n_test is None else int(n_test)
        self.n_train = None if n_train is None else int(n_train)
        self.extra = dict(extra) if extra is not None else {}
        self.results: list[dict[str, Any]] = []
        seen: set[tuple[Any, ...]] = set()
        for raw in results:
            missing = [k for k in _REQUIRED_RESULT_KEYS if k not in raw]
            if missing:
                raise InputError(f"each result needs keys {list(_REQUIRED_RESULT_KEYS)}, got one without {missing}")
            res = dict(raw)
            if res.get("control") is not None and not isinstance(res["control"], str):
                raise InputError(f"a result's control must be a name or None, got {res['control']!r}")
            if _key(res) in seen:
                raise InputError(f"results must be unique per (epoch, layer, probe, labels, control), got "
                                 f"{_key(res)} twice")
            seen.add(_key(res))
            res["test_accuracy"] = float(res["test_accuracy"])
            res.setdefault("train_accuracy", {})
            n = res.get("n_test", self.n_test)
            if "test_ci" not in res and n:
                res["test_ci"] = wilson_interval(res["test_accuracy"], int(n))
            n_scored = res.get("n_train_scored", self.n_train)  # training accuracy may use a subset
            if "train_ci" not in res and n_scored and res["train_accuracy"]:
                res["train_ci"] = {k: wilson_interval(float(v), int(n_scored))
                                   for k, v in res["train_accuracy"].items()}
            self.results.append(res)

    # ----------------------------------------------------------------- views
    @property
    def layers(self) -> list[str]:
        """Layer names in the order they first appear (the model's order when the runner built the report)."""
        return list(dict.fromkeys(r["layer"] for r in self.results))

    @property
    def series(self) -> list[tuple[str, str]]:
        """The (probe, label set) pairs present, in order of appearance."""
        return list(dict.fromkeys((r["probe"], r["labels"]) for r in self.results))

    @property
    def epochs(self) -> list[int]:
        """Sorted epochs present; empty when the report has no epoch axis."""
        return sorted({int(r["epoch"]) for r in self.results if r.get("epoch") is not None})

    def _at_epoch(self, epoch: int | None) -> list[dict[str, Any]]:
        if not self.epochs:
            return self.results
        epoch = self.epochs[-1] if epoch is None else int(epoch)
        if epoch not in self.epochs:
            raise InputError(f"epoch must be one of {self.epochs}, got {epoch}")
        return [r for r in self.results if r.get("epoch") == epoch]

    def best_layer(self, probe: str = "masc", labels: str = "true", *, epoch: int | None = None,
                   include_input: bool = False, control: str | None = None) -> dict[str, Any]:
        """The result of the hidden layer where *probe* fitted on *labels* reaches the highest test accuracy.

        Args:
            probe: Probe name, e.g. ``"masc"``.
            labels: Label set the probe was fitted on; ``"true"`` falls back to ``"label"`` when the training
                batches carried a single label set.
            epoch: For a report with an epoch axis, the epoch to look at (default: the last one).
            include_input: Let the raw input (layer ``"input"``, a control) compete too. Without it the input is
                taken only when no hidden layer was probed.
            control: The best layer of a control model (e.g. ``"init"``) instead of the trained network.

        Returns:
            The full result dict (a copy). Ties go to the earliest layer.

        Raises:
            InputError: If no result matches.

        >>> r = ProbeReport([{"layer": "input", "probe": "masc", "labels": "true", "test_accuracy": 0.97},
        ...                  {"layer": "fc1", "probe": "masc", "labels": "true", "test_accuracy": 0.9}])
        >>> r.best_layer()["layer"], r.best_layer(include_input=True)["layer"]
        ('fc1', 'input')
        """
        rows = [r for r in self._at_epoch(epoch) if r.get("control") == control]
        match = [r for r in rows if r["probe"] == probe and r["labels"] == labels]
        if not match and labels == "true":
            match = [r for r in rows if r["probe"] == probe and r["labels"] == "label"]
        if not match:
            have = sorted({f"{p}/{lab}" for p, lab in self.series})
            who = "" if control is None else f" for control {control!r} (controls: {sorted(self.controls)})"
            raise InputError(f"probe/labels must be one of {have}{who}, got {probe}/{labels}")
        hidden = [r for r in match if r["layer"] != INPUT_LAYER]
        if not include_input and hidden:
            match = hidden
        best = max(match, key=lambda r: r["test_accuracy"])  # max keeps the first of equals
        return dict(best)

    @property
    def controls(self) -> dict[str, dict[str, Any]]:
        """What each control is (``{"init": {"source", "seed", "init_sha256", "model_test_accuracy"}, "input":
        {"source": "raw input"}, …}``); empty for a report without controls."""
        return dict(self.extra.get("controls") or {})

    @property
    def comparisons(self) -> list[dict[str, Any]]:
        """Each trained result paired with a control on the same test images: ``layer``, ``probe``, ``labels``,
        ``control``, ``trained``, ``control_accuracy``, ``difference`` (trained − control), ``ci``, ``method``,
        ``verdict`` (``added``, ``no difference`` or ``removed``); empty without controls."""
        return [dict(c) for c in self.extra.get("comparisons") or []]

    def comparison(self, layer: str, probe: str = "masc", labels: str = "true",
                   control: str = "init") -> dict[str, Any] | None:
        """The comparison of one trained result with one control, or None when the report has none."""
        found = _compare.find(self.extra.get("comparisons") or [], layer, probe, labels, control)
        return dict(found) if found is not None else None

    @property
    def profile(self) -> list[dict[str, Any]]:
        """MASC's test accuracy at every subspace size from one fit: ``layer``, ``labels``, ``control`` (None for the
        trained network and the raw input, layer ``"input"``), ``size`` (a variance fraction or a count per class),
        ``accuracy`` (all test images), ``k`` (k_c per class); empty for reports without one."""
        return [dict(r) for r in self.extra.get("profile") or []]

    @property
    def selection(self) -> dict[str, Any] | None:
        """Each network's (layer, subspace size) chosen on the choosing part of the test images, and the paired
        comparisons of those choices on the evaluation part (``masc_probe.runner._select``); None without one."""
        block = self.extra.get("selection")
        return dict(block) if block else None

    def headline(self, *, include_input: bool = False) -> list[str]:
        """The sentences report.md, report.html, the model card and the CLI lead with. With a :attr:`selection`:
        for each MASC label set, the trained network's choice and each control's own choice, compared on the
        evaluation images (difference, interval, p-value and what that says). Without one (older reports): from
        :attr:`comparisons` at the trained network's best hidden layer. Empty without controls.

        Args:
            include_input: (reports without a selection) Let the raw input compete for the best layer.
        """
        if self.selection is not None:
            return _compare.selection_headline(self)
        return _compare.headline(self, include_input=include_input)

    def best(self) -> dict[str, dict[str, Any]]:
        """``{"probe/labels": {"layer", "test_accuracy"[, "epoch"]}}`` for every series (last epoch if any): the
        trained network's best hidden layer (:meth:`best_layer`'s default; the raw input is a control)."""
        out: dict[str, dict[str, Any]] = {}
        for probe, labels in self.series:
            try:
                r = self.best_layer(probe, labels)
            except InputError:  # a series absent at the last epoch
                continue
            entry = {"layer": r["layer"], "test_accuracy": r["test_accuracy"]}
            if r.get("epoch") is not None:
                entry["epoch"] = r["epoch"]
            out[f"{probe}/{labels}"] = entry
        return out

    # ----------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """The report as the JSON-ready dict of the report format (docs/architecture.md) (plus any extra keys)."""
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "model": self.model, "dataset": self.dataset,
            "corruption": self.corruption, "provenance": self.provenance,
            "model_test_accuracy": self.model_test_accuracy,
            "results": [dict(r) for r in self.results], "best": self.best(),
        }
        if self.n_test is not None:
            out["n_test"] = self.n_test
        if self.n_train is not None:
            out["n_train"] = self.n_train
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return json.loads(json.dumps(out))  # plain types only, a deep copy

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        """Serialize to JSON; with *path*, also write it there atomically.

        Args:
            path: File to write, or None to only return the text.
            indent: JSON indentation.

        Returns:
            The JSON text.
        """
        text = json.dumps(self.to_dict(), indent=indent) + "\n"
        if path is not None:
            _atomic.write_text(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeReport:
        """Rebuild a report from :meth:`to_dict` output.

        Raises:
            InputError: If the dict is not a report of a version this masc-probe reads (1 or 2).
        """
        if not isinstance(data, Mapping) or "results" not in data:
            raise InputError(f"a report dict needs a 'results' key, got {type(data).__name__}")
        version = data.get("schema_version")
        if version not in _READABLE_VERSIONS:
            raise InputError(f"report schema_version must be one of {list(_READABLE_VERSIONS)}, got {version!r}")
        extra = {k: v for k, v in data.items() if k not in (*_KNOWN_KEYS, "n_train")}
        if not isinstance(extra.get("n_components", []), list):  # an older report: the threshold, renamed
            extra.setdefault(_THRESHOLD_KEY, extra.pop("n_components"))
        return cls(data["results"], model=data.get("model"), dataset=data.get("dataset"),
                   corruption=data.get("corruption"), provenance=data.get("provenance"),
                   model_test_accuracy=data.get("model_test_accuracy"), n_test=data.get("n_test"),
                   n_train=data.get("n_train"), extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> ProbeReport:
        """Read a report from a JSON file (``report.json``).

        Raises:
            InputError: If the file is missing or unreadable, not JSON, or not a report of a version this
                masc-probe reads.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"expected a report JSON file at {os.fspath(path)!r}, found none") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"expected a readable report JSON file at {os.fspath(path)!r}, got: {exc}") from None
        return cls._parse(text, where=repr(os.fspath(path)))

    @classmethod
    def from_json_string(cls, text: str) -> ProbeReport:
        """Read a report from JSON text (what :meth:`to_json` returns).

        Raises:
            InputError: If *text* is not a string of JSON, or not a report of a version this masc-probe reads.
        """
        if not isinstance(text, str):
            raise InputError(f"expected report JSON text as a str, got {type(text).__name__}")
        return cls._parse(text, where="the string")

    @classmethod
    def _parse(cls, text: str, *, where: str) -> ProbeReport:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"expected report JSON in {where}, got a parse error: {exc}") from None
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProbeReport) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"ProbeReport(model={self.model!r}, dataset={self.dataset!r}, {len(self.layers)} layers, "
                f"series={[f'{p}/{lab}' for p, lab in self.series]}, epochs={self.epochs or None})")

    # ----------------------------------------------------------------- epochs and seeds
    @classmethod
    def over_epochs(cls, reports: Mapping[int, ProbeReport] | Sequence[tuple[int, ProbeReport]]) -> ProbeReport:
        """Stack reports of checkpoints of one training run into one report with an epoch axis.

        Args:
            reports: ``{epoch: report}`` or ``[(epoch, report), ...]``.

        Returns:
            A report whose results carry ``epoch``; ``model_test_accuracy`` is that of the last epoch and
            ``model_test_accuracy_by_epoch`` holds every epoch's.

        Raises:
            InputError: If *reports* is empty.
        """
        items = sorted((reports.items() if isinstance(reports, Mapping) else reports), key=lambda t: int(t[0]))
        if not items:
            raise InputError("over_epochs needs at least one (epoch, report), got none")
        results = [{**r, "epoch": int(ep)} for ep, rep in items for r in rep.results]
        last = items[-1][1]
        by_epoch = {str(int(ep)): rep.model_test_accuracy for ep, rep in items}
        return cls(results, model=last.model, dataset=last.dataset, corruption=last.corruption,
                   provenance=last.provenance, model_test_accuracy=last.model_test_accuracy, n_test=last.n_test,
                   n_train=last.n_train, extra={**last.extra, "model_test_accuracy_by_epoch": by_epoch})

    @classmethod
    def aggregate(cls, reports: Sequence[ProbeReport]) -> ProbeReport:
        """Mean and spread over runs that differ only in their seed.

        Each result of the returned report holds the mean ``test_accuracy`` (and mean ``train_accuracy``,
        mean per-class ``n_components``) plus ``test_accuracy_std`` (sample std, ddof=1), ``test_accuracy_min``,
        ``test_accuracy_max`` and ``n_runs``; its ``test_ci`` is the Wilson interval of the mean at the test size.

        Args:
            reports: Two or more reports with the same model, dataset, corruption mode/rate, test size and the
                same layer × probe × label set (× epoch) entries.

        Returns:
            The aggregated report; its top-level ``aggregate`` key lists the seeds and ``n_runs``.

        Raises:
            InputError: If fewer than two reports are given or they differ in more than the seed.
        """
        return _aggregate.aggregate_reports(cls, reports)

    # ----------------------------------------------------------------- human views
    def to_markdown(self, *, digits: int = 3) -> str:
        """A markdown summary: model accuracy, a layers × (probe, label set) table with the best cells in bold.

        Args:
            digits: Decimals shown.

        Returns:
            Markdown text (the last epoch's table when the report has an epoch axis, plus a dynamics table).
        """
        return _views.to_markdown(self, digits=digits)

    def to_pandas(self) -> Any:
        """The results as a ``pandas.DataFrame``, one row per result (pandas is an optional dependency).

        Columns are the results' keys, with ``test_ci`` split into ``test_ci_low`` / ``test_ci_high`` and the
        per-label-set dicts into ``train_accuracy_<set>`` and ``train_ci_<set>_low`` / ``_high``; MASC's per-class
        ``n_components`` stays a list. Results without a key get NaN/None there.

        Raises:
            ImportError: pandas is not installed (the message says how to install it).

        >>> ProbeReport([{"layer": "fc1", "probe": "masc", "labels": "true", "test_accuracy": 0.9}]).to_pandas().shape
        (1, 4)
        """
        return _views.to_pandas(self)

    def plot(self, path: str | os.PathLike[str] | None = None, *, ax: Any = None) -> Any:
        """Draw accuracy by layer, or accuracy over epochs when the report has several epochs.

        Args:
            path: A PNG file to write (atomically); None: only draw.
            ax: A matplotlib ``Axes`` to draw into (one panel of the caller's figure); None: a new ``Figure``,
                made without pyplot (no global backend or figure state changes).

        Returns:
            The ``matplotlib.figure.Figure`` drawn on (``ax.figure`` when *ax* is given).
        """
        if len(self.epochs) > 1:
            return self.plot_dynamics(path, ax=ax)
        return self.plot_layers(path, ax=ax)

    def plot_layers(self, path: str | os.PathLike[str] | None = None, *, epoch: int | None = None,
                    ax: Any = None) -> Any:
        """Draw test accuracy by layer, one line per probe × label set, the model's own accuracy as a line.

        Args:
            path: A PNG file to write (atomically); None: only draw.
            epoch: For a report with an epoch axis, the epoch drawn (default: the last).
            ax: As in :meth:`plot`.

        Returns:
            The ``Figure`` drawn on.
        """
        return _views.plot_layers(self, None if path is None else Path(path), epoch=epoch, ax=ax)

    def plot_dynamics(self, path: str | os.PathLike[str] | None = None, *, ax: Any = None) -> Any:
        """Draw test accuracy over epochs at each series' best layer (chosen at the last epoch), and the model's own.

        Args:
            path: A PNG file to write (atomically); None: only draw.
            ax: As in :meth:`plot`.

        Returns:
            The ``Figure`` drawn on.

        Raises:
            InputError: If the report has no epoch axis.
        """
        return _views.plot_dynamics(self, None if path is None else Path(path), ax=ax)
