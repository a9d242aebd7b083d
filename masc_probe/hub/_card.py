"""The model card of a published run: model-index metadata from the report, prose from the run folder.

Used by :mod:`masc_probe.hub` only; kept apart so that the push/pull logic stays short.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from masc_probe._version import __version__
from masc_probe._choices import PROBE_TEXT, TIMM_PREFIX
from masc_probe.errors import InputError
from masc_probe.report import ProbeReport, ReportView, build_view, fmt
from masc_probe.report import _markdown

TEMPLATE = Path(__file__).parent / "templates" / "modelcard.md"
TAGS = ["masc-probe", "memorization", "label-noise"]
# The baselines beside MASC, as the card lists them.
_BASELINES = {name: described for name, (_, described) in PROBE_TEXT.items() if name != "masc"}
# Bookkeeping that does not change the weights: left out of the card's training table (config.json keeps it).
_NOT_TRAINING = {"checkpoint_dense_until", "checkpoint_every", "eval_batch_size", "keep_checkpoints", "num_classes",
                 "progress"}
_MODES = {
    "random": "each training label, with probability p, was replaced by a uniformly random class (which may be the "
              "true one, so the realized flip rate is about p(K−1)/K)",
    "symmetric": "each training label, with probability p, was replaced by a different class chosen uniformly",
    "shuffle": "the labels of a random p-fraction of the training points were permuted among them",
    "asymmetric": "each training label, with probability p, was mapped to a fixed partner class",
}


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from *path*; a clear InputError when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} must be a JSON file, got an error reading it: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics JSONL file (empty when it is absent)."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} must hold one JSON object a line, line {number} is not: {exc}") from None
    return rows


def _setting(value: Any) -> str:
    """A training setting as written (``0.0003``, ``adam``): settings are not measured numbers, so they are not
    rounded like them."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}={_setting(v)}" for k, v in value.items())
    return str(value)


def _corruption(report: ProbeReport, mp: dict[str, Any]) -> dict[str, Any]:
    return dict(report.corruption or mp.get("corruption") or {})


_METRIC_NAMES = {
    "corrupted": "MASC best hidden layer, corrupted-label subspaces (the labels the model memorized)",
    "true": "MASC probe of the representation, true-label subspaces (labels the model never saw; not a metric of "
            "the model)",
    "label": "MASC best hidden layer, training-label subspaces",
}
_SELECTED_NAMES = {
    "corrupted": "MASC readout chosen without the evaluation images, corrupted-label subspaces (the labels the model "
                 "memorized)",
    "true": "MASC readout chosen without the evaluation images, true-label subspaces (a probe of the representation "
            "with labels the model never saw; not a metric of the model)",
    "label": "MASC readout chosen without the evaluation images, training-label subspaces",
}


def _selected(view: ReportView, common: dict[str, Any]) -> list[EvalResult]:
    """The chosen readouts (layer and size picked on the choosing part), scored on the evaluation part."""
    sel = view.selection
    out = []
    for c in sel.choices if sel is not None else []:
        if c.network not in ("trained", "init") or c.evaluation_accuracy is None:
            continue
        args = {"probe": "masc", "labels": c.labels, "layer": c.layer, "size": c.size, "rule": sel.rule,
                "n_eval": sel.n_eval}
        name = _SELECTED_NAMES.get(c.labels, _SELECTED_NAMES["label"])
        if c.network == "init":
            args["control"] = "init"
            name = f"Init control: {name}"
        out.append(EvalResult(metric_type="accuracy", metric_name=name, metric_value=c.evaluation_accuracy,
                              metric_args=args, **common))
    return out


def eval_results(report: ProbeReport, mp: dict[str, Any], view: ReportView | None = None) -> list[EvalResult]:
    """Model-index entries: the model's test accuracy, then MASC per label set — the readout chosen without the
    evaluation images, scored on them, when the report has a selection; else the best hidden layer on the test set —
    and the same numbers of the init control (the network at its initial weights) when the report probed it.

    True-label MASC is named for what it is: a probe of the representation with labels the model never saw, not a
    metric of the model. All share one task and dataset (so the Hub groups them as one result), with
    ``dataset_args`` carrying the corruption: rate, mode, seed (and the realized rate).
    """
    view = view or build_view(report)
    dataset = report.dataset or mp.get("dataset") or "unknown"
    corruption = _corruption(report, mp)
    args = {f"corruption_{k}": corruption[k] for k in ("rate", "mode", "seed", "realized_rate")
            if corruption.get(k) is not None}
    rate = corruption.get("rate")
    name = f"{dataset} ({rate:g} {corruption.get('mode', 'random')} label noise)" if rate else str(dataset)
    common = dict(task_type="image-classification", task_name="Image Classification", dataset_type=str(dataset),
                  dataset_name=name, dataset_split="test", dataset_args=args or None)
    out = []
    if view.model_accuracy is not None:
        out.append(EvalResult(metric_type="accuracy", metric_name="Test accuracy (model output)",
                              metric_value=view.model_accuracy, **common))
    init = report.controls.get("init")
    if init is not None and view.init_accuracy is not None:
        at_init = EvalResult(metric_type="accuracy", metric_name="Init control: test accuracy (model output at its "
                             "initial weights)", metric_value=view.init_accuracy,
                             metric_args={"control": "init", "source": init.get("source")}, **common)
    else:
        at_init = None
    if view.selection is not None:
        chosen = _selected(view, common)
        return out + [r for r in chosen if "control" not in r.metric_args] + ([at_init] if at_init else []) + [
            r for r in chosen if "control" in r.metric_args]
    masc = [r for r in view.best_rows() if r.probe == "masc" and r.labels in _METRIC_NAMES]
    order = list(_METRIC_NAMES)
    for r in sorted(masc, key=lambda r: order.index(r.labels)):
        out.append(EvalResult(metric_type="accuracy", metric_name=_METRIC_NAMES[r.labels], metric_value=r.accuracy,
                              metric_args={"probe": "masc", "labels": r.labels, "layer": r.layer}, **common))
    if at_init is not None:
        out.append(at_init)
        for b in sorted((b for b in view.control_best if b.network == "init" and b.labels in _METRIC_NAMES),
                        key=lambda b: order.index(b.labels)):
            out.append(EvalResult(metric_type="accuracy", metric_name=f"Init control: {_METRIC_NAMES[b.labels]}",
                                  metric_value=b.accuracy, metric_args={"probe": "masc", "labels": b.labels,
                                                                        "layer": b.layer, "control": "init"},
                                  **common))
    return out


def _license(given: str | None, mp: dict[str, Any]) -> str | None:
    """The licence the user gave (``build_card(license=...)`` or the run's ``masc_probe.license``), else None: the
    card then has no licence field, since the package's own Apache-2.0 says nothing of the user's weights."""
    value = given if given is not None else mp.get("license")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or any(ch.isspace() for ch in value.strip()):
        raise InputError(f"license must be a Hub licence identifier such as 'apache-2.0' or 'mit', got {value!r}")
    return value.strip()


def reproduce_command(report: ProbeReport, mp: dict[str, Any]) -> str:
    """The command a reader runs to get this run again: every setting that changes the result (the preset, the
    epoch cap, the protocol, the batch size, the corruption, probing options), and no push (a reader cannot push
    to the original repo; the card says how to publish a copy)."""
    from masc_probe._choices import CONTROLS, DEFAULT_PROBES

    corruption = _corruption(report, mp)
    training = {**dict(mp.get("training") or {}), **dict(report.extra.get("training") or {})}
    model = report.model or mp.get("model") or "model"
    dataset = report.dataset or mp.get("dataset") or "unknown"
    parts = [f"masc-probe --model {model} --dataset {dataset}"]
    rate = corruption.get("rate")
    parts.append(f"--corrupt {rate:g}" if rate else "--corrupt 0")
    if rate and corruption.get("mode", "random") != "random":
        parts.append(f"--corrupt-mode {corruption['mode']}")
    seed = corruption.get("seed", training.get("seed"))
    if seed is not None:
        parts.append(f"--seed {seed}")
    for flag, key in (("--preset", "preset"), ("--max-epochs", "max_epochs"), ("--protocol", "protocol"),
                      ("--batch-size", "batch_size")):
        if training.get(key) is not None:
            parts.append(f"{flag} {training[key]}")
    if training.get("mixed_precision") not in (None, "no"):
        parts.append(f"--mixed-precision {training['mixed_precision']}")
    probes = list(report.extra.get("probes") or [])
    if probes and probes != list(DEFAULT_PROBES):
        parts.append("--probes " + ",".join(probes))
    threshold = report.extra.get("masc_n_components")
    if threshold is not None and threshold != 0.99:
        parts.append(f"--n-components {threshold}")
    controls = [c for c in CONTROLS if c in report.controls]
    if controls != list(CONTROLS):
        parts.append("--controls " + (",".join(controls) or "none"))
    return " ".join(parts)


def build_card(report: ProbeReport, config: dict[str, Any], metrics: list[dict[str, Any]], *,
               repo_id: str | None, files: dict[str, str], has_plot: bool, license: str | None = None) -> ModelCard:
    """Render the card from the template: the report's view (:func:`~masc_probe.report.build_view`) laid out, led by
    its headline sentences and, when the report has one, the choice made without the evaluation images.

    Args:
        report: The run's report (what ``masc/report.json`` holds).
        config: The run's ``config.json`` (empty for a report-only push).
        metrics: Rows of ``metrics.jsonl``.
        repo_id: Repo the card is for (used in the loading snippets); a placeholder when None.
        files: ``{path in repo: what it holds}`` for the files table.
        has_plot: Whether ``masc/accuracy_by_layer.png`` is pushed.
        license: The licence of the published weights (a Hub identifier, e.g. ``"mit"``); None: the run's
            ``masc_probe.license`` if it records one, else the card has no licence field.

    Returns:
        The card; ``str(card)`` is the README.md text.

    Raises:
        InputError: A licence that is not an identifier.
    """
    mp = dict(config.get("masc_probe") or {})
    model = report.model or mp.get("model") or "model"
    dataset = report.dataset or mp.get("dataset") or "unknown"
    corruption = _corruption(report, mp)
    is_timm = "architecture" in config or str(model).startswith(TIMM_PREFIX)
    repo = repo_id or "<user>/<repo>"
    view = build_view(report, config=config)
    results = eval_results(report, mp, view)
    tags = [*TAGS, *(["timm", "image-classification"] if is_timm else ["image-classification"])]
    card_data = ModelCardData(
        library_name="timm" if is_timm else "masc-probe",  # timm repos get the Hub's timm snippet and widget
        tags=tags, pipeline_tag="image-classification", eval_results=results,
        model_name=repo.split("/")[-1] if repo_id else f"{model}-{dataset}".replace("/", "-"),
        datasets=[dataset] if "/" in str(dataset) and not Path(str(dataset)).exists() else None,
        license=_license(license, mp),
    )

    headline = [{"name": r.metric_name + "".join(f", {k} `{r.metric_args[k]}`" for k in ("layer", "size")
                                                 if r.metric_args and k in r.metric_args),
                 "value": fmt(r.metric_value)} for r in results]
    # What the numbers mean comes from the paired comparisons with the controls (the view places the report's
    # headline sentences), never from a fixed sentence.
    findings = [*view.headline, *([view.skipped] if view.skipped else [])]
    if not findings:
        findings = ["No control was probed with this report (`--controls none`): nothing here tells what training "
                    "put into a layer apart from what the architecture and the pixels give without it."]

    rate = corruption.get("rate")
    summary = (f"`{model}` trained on `{dataset}`"
               + (f" with {rate:.0%} of its training labels corrupted ({corruption.get('mode', 'random')} mode)"
                  if rate else " with its labels as given")
               + ", published with the MASC probe's layer-by-layer report: how much true-label generalization is "
                 "still decodable from each layer even where the network memorized the noisy labels.")

    training = dict(mp.get("training") or {})
    if training.get("optimizer") not in (None, "sgd"):
        training.pop("momentum", None)
    training_rows = [(k.replace("_", " "), _setting(v)) for k, v in training.items()
                     if v is not None and k not in _NOT_TRAINING]
    for key in ("epoch", "num_classes", "input_size", "preprocessing"):
        if mp.get(key) is not None:
            training_rows.append((key.replace("_", " "), _setting(mp[key])))
    metrics_line = ""
    if metrics:
        last = metrics[-1]
        parts = [f"{name} {fmt(last[key])}" for key, name in (
            ("train_accuracy_corrupted", "training accuracy on the corrupted labels"),
            ("train_accuracy_true", "on the true labels"), ("test_accuracy", "test accuracy"))
            if isinstance(last.get(key), (int, float))]
        metrics_line = f"After epoch {last.get('epoch', len(metrics))}: " + ", ".join(parts) + "."

    if rate:
        mode = corruption.get("mode", "random")
        realized = corruption.get("realized_rate")
        corruption_text = (f"Mode `{mode}`, rate p = {rate:g}, seed {corruption.get('seed', '?')}: "
                           f"{_MODES.get(mode, 'see masc-probe for this mode')}."
                           + (f" Realized fraction of changed labels: {fmt(realized)}." if realized is not None else "")
                           + " The true labels were kept beside the corrupted ones; test labels are never corrupted.")
    else:
        corruption_text = "None: the model was trained on the labels as given."

    command = reproduce_command(report, mp)

    # The runner may record its MASC threshold; 0.99 is the probe's (and the paper's) default.
    variance = report.extra.get("masc_n_components", 0.99)
    variance_text = (f"the fewest that keep {variance:.0%} of the class's variance"
                     if isinstance(variance, float) and variance < 1 else f"{variance}, clipped to the rank")
    facts = _markdown.facts(view)
    table = "\n".join([*([facts, ""] if facts else []), *_markdown.exploration(view)]).strip()
    selection = "\n".join(_markdown.selection(view)).strip()
    baselines = [_BASELINES[p] for p in dict.fromkeys(p for p, _ in report.series) if p in _BASELINES]

    card = ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), title=f"{model} memorizing {dataset} — MASC probe report",
        summary=summary, headline=headline, findings=findings, repo_id=repo, is_timm=is_timm,
        training_rows=training_rows,
        metrics_line=metrics_line, corruption_text=corruption_text, layer_table=table, selection=selection,
        has_plot=has_plot, has_probes=any(name.startswith("masc/probes") for name in files),
        variance_text=variance_text, baselines=", ".join(baselines) or "none in this report",
        reproduce=command, files=list(files.items()), version=__version__,
    )
    return card
