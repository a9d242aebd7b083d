"""The one view of a report and what reads it: the number formatter, the selection block leading report.md,
report.html, the card and the CLI summary (the oracle only under its name), the card's model-index and licence, the
skipped controls' sentence, and the profile plot — against numbers written out here by hand."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import pytest

from masc_probe.errors import InputError
from masc_probe.report import ProbeReport, build_view, fmt, plot_profile, report_html, summary_text

MINUS = "\u2212"
# Accuracies chosen so that each appears once in the report (a number found in a section came from that row).
TRAINED = {("input", "corrupted"): 0.301, ("fc1", "corrupted"): 0.512, ("fc2", "corrupted"): 0.534,
           ("input", "true"): 0.911, ("fc1", "true"): 0.957, ("fc2", "true"): 0.949}
AT_INIT = {("fc1", "corrupted"): 0.577, ("fc2", "corrupted"): 0.588, ("fc1", "true"): 0.962, ("fc2", "true"): 0.946}
ORACLE_ACC = 0.6181  # the oracle's accuracy: shown under "Oracle" and nowhere else
CHOICES = [
    {"network": "trained", "labels": "corrupted", "layer": "fc2", "size": 0.9, "choosing_accuracy": 0.5213,
     "evaluation_accuracy": 0.5377},
    {"network": "init", "labels": "corrupted", "layer": "fc1", "size": 5, "choosing_accuracy": 0.5844,
     "evaluation_accuracy": 0.5921},
    {"network": "input", "labels": "corrupted", "layer": "input", "size": 0.99, "choosing_accuracy": 0.3012,
     "evaluation_accuracy": 0.2933},
    {"network": "trained", "labels": "true", "layer": "fc1", "size": 0.99, "choosing_accuracy": 0.9661,
     "evaluation_accuracy": 0.9588},
    {"network": "init", "labels": "true", "layer": "fc1", "size": 0.99, "choosing_accuracy": 0.9702,
     "evaluation_accuracy": 0.9644},
]
SEL_COMPARISON = {"labels": "corrupted", "control": "init", "trained_layer": "fc2", "trained_size": 0.9,
                  "control_layer": "fc1", "control_size": 5, "trained": 0.5377, "control_accuracy": 0.5921,
                  "difference": -0.0544, "ci": [-0.0871, -0.0213], "method": "Tango score interval; exact McNemar "
                  "p-value", "p_value": 0.00042, "verdict": "removed", "discordant": [20, 39], "n": 349}
SELECTION = {
    "rule": "noisy", "split": 0.5, "seed": 0,
    "labels": {"kind": "noisy", "mode": "random", "rate": 0.8, "seed": 0, "realized_rate": 0.71,
               "condition_holds": True, "condition": "diagonally dominant noise: holds for random p=0.8 on 10 classes"},
    "condition": "diagonally dominant noise: holds for random p=0.8 on 10 classes",
    "n_choose": 350, "n_eval": 349, "choosing_index": [0, 2], "evaluation_index": [1, 3], "choices": CHOICES,
    "comparisons": [SEL_COMPARISON],
    "oracle": [{"network": "trained", "labels": "corrupted", "layer": "fc1", "size": 0.5, "accuracy": ORACLE_ACC}],
    "paper_rule": [{"network": "trained", "labels": "corrupted", "layer": "fc2", "size": 0.99,
                    "evaluation_accuracy": 0.5302}],
}
PROFILE = [{"layer": layer, "labels": "corrupted", "control": control, "size": size, "accuracy": acc, "k": [1, 2]}
           for layer, control, accs in (("input", None, (0.21, 0.25, 0.31)), ("fc1", None, (0.41, 0.45, 0.51)),
                                        ("fc1", "init", (0.42, 0.46, 0.57)), ("fc2", None, (0.43, 0.47, 0.53)),
                                        ("fc2", "init", (0.44, 0.48, 0.58)))
           for size, acc in zip((20, 0.99, 0.5), accs)]  # given out of order: the plot puts 0.5, 0.99, then 20


def _report(*, selection: bool = True, skipped: bool = False, profile: bool = False) -> ProbeReport:
    results = [{"layer": lay, "probe": "masc", "labels": lab, "test_accuracy": acc} for (lay, lab), acc in
               TRAINED.items()]
    results += [{"layer": lay, "probe": "masc", "labels": lab, "test_accuracy": acc, "control": "init"}
                for (lay, lab), acc in AT_INIT.items()]
    comparisons = [{"layer": lay, "probe": "masc", "labels": lab, "control": "init", "trained": TRAINED[(lay, lab)],
                    "control_accuracy": acc, "difference": TRAINED[(lay, lab)] - acc, "ci": [-0.05, 0.04],
                    "method": "Tango score interval; exact McNemar p-value", "p_value": 0.5, "p_holm": 1.0,
                    "verdict": "no difference", "discordant": [10, 12], "n": 699} for (lay, lab), acc in AT_INIT.items()]
    extra: dict[str, Any] = {"controls": {"init": {"source": "run epoch 0", "model_test_accuracy": 0.1063}},
                             "comparisons": comparisons, "masc_n_components": 0.99}
    if selection:
        extra["selection"] = SELECTION
    if profile:
        extra["profile"] = PROFILE
    if skipped:
        extra["controls_skipped"] = {"init": "the run's epoch-0 weights could not be rebuilt: no seed recorded."}
    return ProbeReport(results, model="mlp", dataset="digits", n_test=699, model_test_accuracy=0.3149,
                       corruption={"mode": "random", "rate": 0.8, "seed": 0, "realized_rate": 0.7291}, extra=extra)


def _card(report: ProbeReport, **kwargs: Any) -> Any:
    from masc_probe.hub._card import build_card

    return build_card(report, kwargs.pop("config", {}), [], repo_id="me/x", files={}, has_plot=False, **kwargs)


def _renderings(report: ProbeReport) -> dict[str, str]:
    page = report_html(report, images={"accuracy_by_layer.png": b"\x89PNG\r\n\x1a\n" + bytes(16)})
    text = html.unescape(re.sub(r"<[^>]+>", "", re.sub(r'src="data:[^"]+"', "", page)))  # the visible text
    return {"report.md": report.to_markdown(), "report.html": text, "card": str(_card(report)),
            "cli": summary_text(report)}


# ------------------------------------------------------------------------------------------------ the formatter
@pytest.mark.parametrize(("value", "kwargs", "shown"), [
    (0.31549, {}, "0.315"), (0.3155, {}, "0.316"), (1, {}, "1.000"), (0.0234, {"signed": True}, "+0.023"),
    (-0.0234, {"signed": True}, f"{MINUS}0.023"), (-0.5, {}, f"{MINUS}0.500"), (0.00042, {"p": True}, "<0.001"),
    (0.0421, {"p": True}, "0.042"), (None, {}, "–"), (float("nan"), {}, "–"), (True, {}, "–"), ("0.5", {}, "–"),
])
def test_fmt_shows_three_decimals_a_true_minus_and_small_p_values_as_bounds(value: Any, kwargs: dict[str, Any],
                                                                            shown: str) -> None:
    assert fmt(value, **kwargs) == shown


def test_the_view_refuses_what_is_not_a_report_and_rows_without_their_keys() -> None:
    with pytest.raises(InputError, match="expected a ProbeReport .*got dict$"):
        build_view(_report().to_dict())
    broken = ProbeReport.from_dict({**_report().to_dict(), "selection": {**SELECTION, "choices": [{"layer": "fc1"}]}})
    with pytest.raises(InputError, match=r"selection choice row needs keys \['network', 'labels', 'layer', 'size'\]"):
        build_view(broken)


# ------------------------------------------------------------------------------------------------- the selection
@pytest.mark.parametrize("where", ["report.md", "report.html", "card", "cli"])
def test_with_a_selection_every_rendering_leads_with_the_headline_then_the_choice(where: str) -> None:
    report = _report()
    headline = report.headline()
    assert headline  # the report's own sentences, from the selection
    text = _renderings(report)[where]
    first = min(text.index(line.replace("`", "") if where == "report.html" else line) for line in headline)
    chosen = text.index("Chosen without the evaluation images")
    layers = text.index("trained network reads" if where == "report.html" else "| layer | masc")
    assert first < chosen < layers
    block = text[chosen:layers]
    for c in CHOICES:  # each choice's numbers, three decimals, in the block that names the choice
        assert fmt(c["choosing_accuracy"]) in block and fmt(c["evaluation_accuracy"]) in block, c
    assert f"{MINUS}0.054" in block and f"{MINUS}0.087" in block and f"{MINUS}0.021" in block
    assert "<0.001" in block and "removed" in block and "Tango score interval" in block
    assert "k = 5 per class" in block and "t = 0.9" in block


@pytest.mark.parametrize("where", ["report.md", "report.html", "card", "cli"])
def test_the_oracle_appears_only_under_its_name(where: str) -> None:
    text = _renderings(_report())[where]
    shown = fmt(ORACLE_ACC)
    if where == "cli":  # the summary keeps to the choice and its comparisons
        assert shown not in text and "Oracle" not in text
        return
    assert text.count(shown) == 1
    assert text.rindex("Oracle", 0, text.index(shown)) > text.index("Chosen without the evaluation images")
    assert "oracle" not in " ".join(_report().headline()).lower()


def test_the_html_selection_tables_hold_the_exact_values() -> None:
    page = report_html(_report(), images={"accuracy_by_layer.png": b"\x89PNG\r\n\x1a\n" + bytes(16)})
    for c in CHOICES:
        row = re.search(rf'<tr data-choice="{c["network"]}/{c["labels"]}">(.*?)</tr>', page).group(1)
        values = [float(v) for v in re.findall(r'<data value="([^"]+)">', row)]
        assert values == [c["choosing_accuracy"], c["evaluation_accuracy"]]
    row = re.search(r'<tr data-compare="corrupted/init">(.*?)</tr>', page).group(1)
    assert [float(v) for v in re.findall(r'<data value="([^"]+)">', row)] == [0.5377, 0.5921, -0.0544, -0.0871,
                                                                              -0.0213, 0.00042]


def test_without_a_selection_the_renderings_have_no_choice_and_no_oracle() -> None:
    for where, text in _renderings(_report(selection=False)).items():
        assert "Chosen without the evaluation images" not in text and "racle" not in text, where


# ------------------------------------------------------------------------------------------------------ the card
def test_the_card_reports_the_selected_readouts_with_their_layer_and_size() -> None:
    results = _card(_report()).data.eval_results
    masc = {(r.metric_args["labels"], r.metric_args.get("control")): r for r in results
            if (r.metric_args or {}).get("probe") == "masc"}
    assert {k: (r.metric_value, r.metric_args["layer"], r.metric_args["size"]) for k, r in masc.items()} == {
        ("corrupted", None): (0.5377, "fc2", 0.9), ("corrupted", "init"): (0.5921, "fc1", 5),
        ("true", None): (0.9588, "fc1", 0.99), ("true", "init"): (0.9644, "fc1", 0.99)}
    assert ORACLE_ACC not in [r.metric_value for r in results]


def test_without_a_selection_the_card_reports_the_best_hidden_layer() -> None:
    results = _card(_report(selection=False)).data.eval_results
    masc = {(r.metric_args["labels"], r.metric_args.get("control")): (r.metric_value, r.metric_args["layer"])
            for r in results if (r.metric_args or {}).get("probe") == "masc"}
    # The hidden layers' maxima of TRAINED and AT_INIT above (the raw input is a control, not a candidate).
    assert masc == {("corrupted", None): (0.534, "fc2"), ("true", None): (0.957, "fc1"),
                    ("corrupted", "init"): (0.588, "fc2"), ("true", "init"): (0.962, "fc1")}


def test_the_card_records_the_licence_the_user_gives_and_none_otherwise() -> None:
    assert "license" not in str(_card(_report())).split("---")[1]
    assert _card(_report(), license="mit").data.license == "mit"
    assert _card(_report(), config={"masc_probe": {"license": "cc-by-4.0"}}).data.license == "cc-by-4.0"
    with pytest.raises(InputError, match="license must be a Hub licence identifier .*got 'my licence'"):
        _card(_report(), license="my licence")


# --------------------------------------------------------------------------------------------- skipped controls
def test_every_rendering_states_a_skipped_control_in_one_sentence() -> None:
    for where, text in _renderings(_report(skipped=True)).items():
        found = [line for line in text.splitlines() if "Controls not run" in line]
        assert len(found) == 1, where
        assert "init" in found[0] and "could not be rebuilt: no seed recorded" in found[0], where
    for where, text in _renderings(_report()).items():
        assert "Controls not run" not in text, where


# --------------------------------------------------------------------------------------------------- the profile
def test_plot_profile_draws_each_network_per_layer_on_a_categorical_size_axis(tmp_path: Path) -> None:
    fig = plot_profile(_report(profile=True), tmp_path / "profile.png")
    assert (tmp_path / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["fc1", "fc2"]  # one per hidden layer
    for ax, layer in zip(panels, ("fc1", "fc2")):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["t = 0.5", "t = 0.99", "k = 20 per class"]
        lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
        expected = {(r["control"], r["layer"]): [] for r in PROFILE}
        for size in (0.5, 0.99, 20):  # written out in axis order
            for r in PROFILE:
                if r["size"] == size:
                    expected[(r["control"], r["layer"])].append(r["accuracy"])
        assert lines == {"trained network, corrupted labels": expected[(None, layer)],
                         "network at its initial weights, corrupted labels": expected[("init", layer)],
                         "raw input, corrupted labels": expected[(None, "input")]}
    with pytest.raises(InputError, match="plot_profile needs a report with a 'profile'"):
        plot_profile(_report())


def test_the_page_and_report_md_show_the_profile(tmp_path: Path) -> None:
    report = _report(profile=True)
    page = report_html(report, images={"accuracy_by_layer.png": b"\x89PNG\r\n\x1a\n" + bytes(16)})
    shown = re.search(r'<figure id="plot-profile"><img src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(shown.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    row = re.search(r'<tr data-profile="init/corrupted/fc2">(.*?)</tr>', page).group(1)
    assert [float(v) for v in re.findall(r'<data value="([^"]+)">', row)] == [0.58, 0.48, 0.44]  # t=0.5, 0.99, k=20
    md = report.to_markdown()
    line = next(ln for ln in md.splitlines() if ln.startswith("| network at its initial weights | corrupted labels "
                                                              "| `fc2`"))
    assert line.endswith("| 0.580 | 0.480 | 0.440 |")
    assert json.loads(report.to_json())["profile"] == PROFILE
