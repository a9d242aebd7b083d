"""report.html: every number is report.json's (read back from the page's <data value> elements), the controls'
columns and verdict counts when the report has comparisons and none without, self-contained (no script, no fetch,
images as data URIs with alt text), the run folder's page with and without label issues, the CLI, the push; and in
the slow tier the page opened in headless Chromium at a laptop and a phone width."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from masc_probe.cli import main
from masc_probe.errors import InputError
from masc_probe.hub import write_dry_run
from masc_probe.label_issues import _find as label_issues
from masc_probe.label_issues import _gallery
from masc_probe.pipeline import _issues, _outputs
from masc_probe.report import SCHEMA_VERSION, ProbeReport, _files, _html, report_html, run_html, write_run_html

LAYERS = ["input", "fc1", "fc2"]
SERIES = [("masc", "corrupted"), ("masc", "true"), ("ncm", "corrupted"), ("ncm", "true")]
# report.json's "profile": MASC accuracy per subspace size (fractions, then counts per class), per network and layer.
PROFILE = [{"layer": layer, "labels": labels, "control": control, "size": size, "accuracy": acc, "k": [3, 4]}
           for (layer, control), base in ((("input", None), 0.30), (("fc1", None), 0.50), (("fc1", "init"), 0.55),
                                          (("fc2", None), 0.45), (("fc2", "init"), 0.60))
           for labels, shift in (("corrupted", 0.0), ("true", 0.3))
           for size, acc in ((0.5, base + shift), (0.99, base + shift + 0.05), (2, base + shift - 0.1))]


def _png(width: int = 4, height: int = 3) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _report(*, controls: bool, verdicts: tuple[str, ...] = ("added", "no difference", "removed")) -> dict[str, Any]:
    """A report dict as report.json holds it, with awkward numbers (many digits) so that rounding shows."""
    rng = np.random.default_rng(7)
    results = []
    for layer in LAYERS:
        for probe, labels in SERIES:
            acc = float(rng.uniform(0.3, 0.99))
            results.append({"layer": layer, "probe": probe, "labels": labels, "test_accuracy": acc,
                            "test_ci": [acc - 0.0312345, min(1.0, acc + 0.0287654)],
                            "train_accuracy": {"corrupted": float(rng.uniform(0.1, 1)),
                                               "true": float(rng.uniform(0.1, 1))}, "n_test": 359})
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "model": "mlp", "dataset": "digits",
        "corruption": {"mode": "random", "rate": 0.6, "seed": 0, "realized_rate": 0.5500695410292072},
        "provenance": {"masc_probe": "0.1.0", "torch": "2.14.1", "data_fingerprint": "0c931111", "solver": "gram"},
        "model_test_accuracy": 0.5181058495821727, "results": results, "n_test": 359, "n_train": 1438,
        "protocol": "clean", "masc_n_components": 0.99}
    report["best"] = {f"{p}/{lab}": max(({"layer": r["layer"], "test_accuracy": r["test_accuracy"]} for r in results
                                         if (r["probe"], r["labels"]) == (p, lab)), key=lambda b: b["test_accuracy"])
                      for p, lab in SERIES}
    if controls:
        report["controls"] = {"init": {"source": "run epoch 0", "seed": 0, "init_sha256": "ab" * 32,
                                       "model_test_accuracy": 0.0863509749303621},
                              "input": {"source": "raw input"}}
        comparisons = []
        for i, r in enumerate(list(results)):
            control_acc = float(rng.uniform(0.3, 0.99))
            results.append({**r, "test_accuracy": control_acc, "control": "init"})
            diff = r["test_accuracy"] - control_acc
            comparisons.append({"layer": r["layer"], "probe": r["probe"], "labels": r["labels"], "control": "init",
                                "trained": r["test_accuracy"], "control_accuracy": control_acc, "difference": diff,
                                "ci": [diff - 0.0411, diff + 0.0399], "method": "exact McNemar",
                                "verdict": verdicts[i % len(verdicts)]})
        report["comparisons"] = comparisons
    return report


class _Page(HTMLParser):
    """The parts of a page the tests read: layer-table rows (cells by column, with their <data> values and text),
    images, tags, CSP and the visible text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.images: list[dict[str, str]] = []
        self.tags: set[str] = set()
        self.headers: list[str] = []
        self.text: list[str] = []
        self.metas: list[dict[str, str]] = []
        self._cell: dict[str, Any] | None = None
        self._th = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "tr" and "data-layer" in a:
            self.rows.append({"key": (a["data-layer"], a["data-probe"], a["data-labels"]), "cells": {}})
        elif tag == "td" and self.rows and "data-label" in a:
            self._cell = self.rows[-1]["cells"].setdefault(a["data-label"], {"values": [], "text": ""})
        elif tag == "data" and self._cell is not None:
            self._cell["values"].append(float(a["value"]))
        elif tag == "img":
            self.images.append(a)
        elif tag == "meta":
            self.metas.append(a)
        elif tag == "th":
            self._th = True
            self.headers.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "tr", "table"):
            self._cell = None
        if tag == "th":
            self._th = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell["text"] += data
        if self._th:
            self.headers[-1] += data

    def row(self, layer: str, probe: str, labels: str) -> dict[str, Any]:
        found = [r["cells"] for r in self.rows if r["key"] == (layer, probe, labels)]
        assert len(found) == 1, (layer, probe, labels, len(found))
        return found[0]


def _trained(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["results"] if not r.get("control")]


def _best_hidden(report: dict[str, Any], probe: str, labels: str) -> str:
    """The hidden layer with the highest test accuracy of a series, from the raw rows (the first of equals)."""
    rows = [r for r in _trained(report) if (r["probe"], r["labels"]) == (probe, labels) and r["layer"] != "input"]
    top = max(r["test_accuracy"] for r in rows)
    return next(r["layer"] for r in rows if r["test_accuracy"] == top)


def _signed(value: float) -> str:
    """A difference as the page shows it: three decimals, its sign, a true minus (U+2212)."""
    return f"{value:+.3f}".replace("-", "\u2212")


def _html_of(report: dict[str, Any], **kwargs: Any) -> str:
    return report_html(ProbeReport.from_dict(report), **kwargs)


IMAGES = {"accuracy_by_layer.png": _png()}  # skips drawing: these tests are about the page, not the plot


# --------------------------------------------------------------------------------------------- the numbers
@pytest.mark.parametrize("controls", [False, True])
def test_every_table_number_is_the_reports_own(controls: bool) -> None:
    report = _report(controls=controls)
    page = _Page(_html_of(report, images=IMAGES))
    trained = _trained(report)
    assert len(page.rows) == len(trained)  # one row per trained result; control rows are not rows of their own
    for r in trained:
        cells = page.row(r["layer"], r["probe"], r["labels"])
        assert cells["test accuracy"]["values"] == [r["test_accuracy"]]  # the exact JSON value
        assert cells["test accuracy"]["text"].startswith(f"{r['test_accuracy']:.3f}")  # shown rounded
        assert cells["95% interval"]["values"] == r["test_ci"]
        for labels, value in r["train_accuracy"].items():
            assert cells[f"train accuracy vs {labels}"]["values"] == [value]
        best = _best_hidden(report, r["probe"], r["labels"]) == r["layer"]
        assert ("★" in cells["test accuracy"]["text"]) == best
    text = "".join(page.text)
    assert f"{report['model_test_accuracy']:.3f}" in text


def test_controls_give_their_columns_and_counts() -> None:
    report = _report(controls=True)
    page = _Page(_html_of(report, images=IMAGES))
    assert {"init accuracy", "trained − init"} <= set(page.headers)
    for c in report["comparisons"]:
        cells = page.row(c["layer"], c["probe"], c["labels"])
        assert cells["init accuracy"]["values"] == [c["control_accuracy"]]
        # The difference, its interval and the verdict, in one cell.
        assert cells["trained − init"]["values"] == [c["difference"], *c["ci"]]
        lo, hi = c["ci"]
        assert cells["trained − init"]["text"] == (f"{_signed(c['difference'])} ({_signed(lo)} to {_signed(hi)}) "
                                                   f"{c['verdict']}")
    # The initial weights' own accuracy and what they are (the setup table names the control).
    text = " ".join(page.text)
    assert "0.086" in text and "ab" * 32 in text and "run epoch 0" in text


@pytest.mark.parametrize("verdicts", [("added",), ("removed", "removed", "no difference"),
                                      ("no difference", "added")])
def test_the_verdict_counts_follow_the_comparisons(verdicts: tuple[str, ...]) -> None:
    report = _report(controls=True, verdicts=verdicts)
    html = _html_of(report, images=IMAGES)
    n = len(report["comparisons"])
    count = {v: sum(c["verdict"] == v for c in report["comparisons"]) for v in ("added", "removed", "no difference")}
    sentence = re.search(r'<p class="verdicts" data-control="init">(.*?)</p>', html).group(1)
    plain = re.sub(r"<[^>]+>", "", sentence)
    assert (f"reads more in {count['added']} of {n} layer × probe × label-set rows, less in {count['removed']}, and "
            f"no different in {count['no difference']}") in plain


def test_a_report_without_controls_has_no_control_columns() -> None:
    page = _Page(_html_of(_report(controls=False), images=IMAGES))
    assert not [h for h in page.headers if "init" in h or "verdict" in h]
    assert "verdicts" not in _html_of(_report(controls=False), images=IMAGES)


def test_a_report_over_epochs_shows_the_last_epoch_and_the_dynamics_plot() -> None:
    base = _report(controls=False)
    results = [{**r, "epoch": e, "test_accuracy": r["test_accuracy"] - (0.1 if e == 0 else 0)}
               for e in (0, 5) for r in base["results"]]
    report = {**base, "results": results}
    page = _Page(_html_of(report, images=IMAGES))  # the dynamics plot is drawn from the report
    for r in results:
        if r["epoch"] == 5:
            assert page.row(r["layer"], r["probe"], r["labels"])["test accuracy"]["values"] == [r["test_accuracy"]]
    assert len(page.rows) == len(base["results"])
    assert [img.get("alt", "").split(",")[0] for img in page.images] == [
        "Line chart of test accuracy on the true test labels by layer", "Line chart of test accuracy over training "
        "epochs 0 to 5"]


# ---------------------------------------------------------------------------------------- self-contained
def test_the_page_is_self_contained_and_every_image_has_alt_text() -> None:
    report = _report(controls=True)
    html = _html_of(report)  # the layer plot drawn from the report here
    page = _Page(html)
    assert not {"script", "link", "iframe", "object", "embed", "form"} & page.tags
    outside = re.sub(r'"data:image/png;base64,[A-Za-z0-9+/=]+"', '""', html)  # base64 may spell anything
    assert not re.search(r"https?:|//|@import|url\(", outside, re.IGNORECASE)  # nothing fetched from anywhere
    csp = [m["content"] for m in page.metas if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "script-src" not in csp[0]
    assert any(m.get("name") == "viewport" for m in page.metas)
    assert page.images
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and (int(img["width"]), int(img["height"])) == _html._png_size(png)
        assert len(img.get("alt", "")) > 40


def test_text_from_the_report_is_escaped() -> None:
    report = {**_report(controls=False), "model": "<script>alert(1)</script>", "dataset": 'a"b'}
    html = _html_of(report, images=IMAGES)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and 'a"b' not in html
    assert "<script>alert(1)</script> · a\"b — MASC probe report" in _Page(html).text  # the text, read back


@pytest.mark.parametrize("bad", [{}, {"results": []}, [1, 2], "report.json"])
def test_a_page_needs_a_probe_report_and_says_so_in_one_line(bad: Any) -> None:
    with pytest.raises(InputError, match=f"expected a ProbeReport .*got {type(bad).__name__}$") as err:
        report_html(bad)
    assert "\n" not in str(err.value)


def test_a_report_without_a_trained_result_is_a_one_line_error() -> None:
    only_control = ProbeReport([{"layer": "fc1", "probe": "masc", "labels": "true", "test_accuracy": 0.5,
                                 "control": "init"}])
    for bad in (ProbeReport([]), only_control):
        with pytest.raises(InputError, match="at least one result of the trained network, got none"):
            report_html(bad)


# ------------------------------------------------------------------------------------------- run folders
def _folder(tmp_path: Path, *, issues: bool) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    report = _report(controls=False)
    (run / "report.json").write_text(json.dumps(report))
    (run / _html.LAYER_PLOT).write_bytes(_png(30, 20))
    (run / "config.json").write_text(json.dumps({"masc_probe": {"epoch": 59, "training": {
        "optimizer": "adam", "lr": 0.0003, "momentum": 0.9, "batch_size": 128, "stopped": "target"}}}))
    if issues:
        (run / "label-issues").mkdir()
        summary = {"probe": "ncm", "layer": "fc3", "criterion": "select", "select_accuracy": 0.876, "folds": 2,
                   "noise_rate": 0.4951, "n_flagged": 712, "n_samples": 1438, "method": "probe",
                   "realized_noise_rate": 0.5500695, "metrics": {"chosen": {"auroc": 0.98691, "f1": 0.9355}},
                   "gallery": {"k": 32, "index": list(range(32)), "truly_wrong": 31, "fraction_wrong": 31 / 32}}
        (run / "label-issues" / "label_issues.json").write_text(json.dumps(summary))
        (run / "label-issues" / "label_issues.png").write_bytes(_png(80, 60))
    return run


def test_the_page_shows_the_plots_the_pipeline_wrote_under_the_documented_names(tmp_path: Path) -> None:
    # The names the README and docs/architecture.md give the run folder's files, written out here by hand.
    assert (_issues.OUTPUT_FOLDER, label_issues.JSON_NAME, label_issues.CSV_NAME, _gallery.GALLERY_NAME) == (
        "label-issues", "label_issues.json", "label_issues.csv", "label_issues.png")
    report = ProbeReport.from_dict({**_report(controls=True), "profile": PROFILE})
    out = tmp_path / "out"
    _outputs.write_outputs(report, out, card=False)
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_by_layer.png", "profile.png", "report.html",
                                                     "report.json", "report.md"]
    images = [base64.b64decode(img["src"].split(",", 1)[1]) for img in _Page((out / "report.html").read_text()).images]
    # The folder's own plots, byte for byte; a page that drew its own layer plot would lack the control lines the
    # pipeline's plot has (the page draws the trained rows only), so it would differ.
    assert images == [(out / "accuracy_by_layer.png").read_bytes(), (out / "profile.png").read_bytes()]


def test_a_run_folders_page_shows_its_label_issues_and_gallery(tmp_path: Path) -> None:
    run = _folder(tmp_path, issues=True)
    path = write_run_html(run)
    assert path == run / "report.html"
    html = path.read_text()
    page = _Page(html)
    gallery = [img for img in page.images if "mislabeled" in img["alt"]]
    assert len(gallery) == 1 and "31 of the 32" in gallery[0]["alt"]
    assert base64.b64decode(gallery[0]["src"].split(",", 1)[1]) == (run / "label-issues/label_issues.png").read_bytes()
    text = " ".join(page.text)
    assert "31 of 32" in text and "0.987" in text and "712 of 1438" in text
    assert "training optimizer" in text and "momentum" not in text  # Adam: the momentum SGD would read is left out
    # The folder's own plot, as it is.
    plots = [img for img in page.images if img["alt"].startswith("Line chart")]
    assert base64.b64decode(plots[0]["src"].split(",", 1)[1]) == (run / _html.LAYER_PLOT).read_bytes()


def test_a_run_folder_without_label_issues_has_no_such_section(tmp_path: Path) -> None:
    html = run_html(_folder(tmp_path, issues=False))
    assert "Suspected label errors" not in html and len(_Page(html).images) == 1


def _assert_page_of_folder(html: str, run: Path) -> None:
    """The page holds the folder's report.json numbers, its training settings, its plot and its label issues."""
    report = json.loads((run / "report.json").read_text())
    page = _Page(html)
    trained = _trained(report)
    assert len(page.rows) == len(trained)
    for r in trained:
        cells = page.row(r["layer"], r["probe"], r["labels"])
        assert cells["test accuracy"]["values"] == [r["test_accuracy"]] and cells["95% interval"]["values"] == r[
            "test_ci"]
    text = " ".join(page.text)
    if (run / "config.json").is_file():
        assert "training optimizer" in text and "adam" in text and "59" in text  # config.json's settings
    plots = [img for img in page.images if img["alt"].startswith("Line chart")]
    assert [base64.b64decode(img["src"].split(",", 1)[1]) for img in plots] == [(run / "accuracy_by_layer.png")
                                                                              .read_bytes()]
    gallery = [img for img in page.images if "mislabeled" in img["alt"]]
    if (run / "label-issues").is_dir():
        assert [base64.b64decode(img["src"].split(",", 1)[1]) for img in gallery] == [
            (run / "label-issues/label_issues.png").read_bytes()]
        assert "712 of 1438" in text and "31 of 32" in text
    else:
        assert gallery == [] and "Suspected label errors" not in text


def test_cli_report_writes_the_page_of_an_older_folder(tmp_path: Path, capsys) -> None:
    run = _folder(tmp_path, issues=False)
    assert main(["report", str(run), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    _assert_page_of_folder((run / "report.html").read_text(), run)
    (tmp_path / "other").mkdir()
    shutil.copytree(_folder(tmp_path / "other", issues=True) / "label-issues", run / "label-issues")
    assert main(["report", str(run), "--quiet"]) == 0  # written again: now with the label issues
    capsys.readouterr()
    _assert_page_of_folder((run / "report.html").read_text(), run)
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "report.json" in err and err.count("\n") == 1


def test_write_outputs_writes_the_page_beside_the_other_files(tmp_path: Path) -> None:
    report = ProbeReport.from_dict(_report(controls=False))
    files = _outputs.write_outputs(report, tmp_path / "out", card=False)
    assert files["report.html"] == tmp_path / "out" / "report.html"
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    page = _Page(files["report.html"].read_text())
    for r in _trained(written):
        assert page.row(r["layer"], r["probe"], r["labels"])["test accuracy"]["values"] == [r["test_accuracy"]]
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_push_includes_the_page_and_the_gallery_and_the_card_links_them(tmp_path: Path) -> None:
    run = _folder(tmp_path, issues=True)
    (run / "config.json").unlink()  # a report-only folder: config.json goes with a model
    out = tmp_path / "dry"
    written = {p.relative_to(out).as_posix() for p in write_dry_run(run, out, repo_id="me/x")}
    assert {"masc/report.html", "masc/label_issues.png"} <= written
    assert (out / "masc/label_issues.png").read_bytes() == (run / "label-issues/label_issues.png").read_bytes()
    _assert_page_of_folder((out / "masc/report.html").read_text(), run)  # drawn aside: the folder had no page
    assert not (run / "report.html").exists()
    card = (out / "README.md").read_text()
    assert "(masc/report.html)" in card and "(masc/label_issues.png)" in card
    write_run_html(run)
    write_dry_run(run, out, repo_id="me/x")
    assert (out / "masc/report.html").read_bytes() == (run / "report.html").read_bytes()


# ------------------------------------------------------------------------------------------ in a browser
_INSTALL = ("apt-get install -y chromium chromium-driver (Debian), and pip install selenium "
            "(pip install -e '.[test]')")


def _chromium() -> tuple[str, str]:
    """(browser, driver) paths; skipped outside CI and failed under CI=true when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        selenium_ok = False
    else:
        selenium_ok = True
    if browser and driver and selenium_ok:
        return browser, driver
    missing = ", ".join(n for n, ok in (("chromium", browser), ("chromedriver", driver), ("selenium", selenium_ok))
                        if not ok)
    reason = f"headless Chromium is missing ({missing}): {_INSTALL}"
    if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
        pytest.fail(f"{reason}; CI=true, so the browser check fails instead of skipping", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    path, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = path
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)  # the given driver: no download
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's run folder in miniature: `masc-probe` on digits (2 epochs, two probes), then `label-issues`."""
    run = tmp_path_factory.mktemp("demo") / "run"
    assert main(["--max-epochs", "2", "--probes", "masc,ncm", "--output-dir", str(run), "--quiet"]) == 0
    assert main(["label-issues", str(run), "--probes", "ncm", "--quiet"]) == 0
    return run


_MEASURE = """
const imgs = Array.from(document.images);
const rows = Array.from(document.querySelectorAll('tr[data-layer]')).map(tr => ({
  key: [tr.dataset.layer, tr.dataset.probe, tr.dataset.labels],
  acc: Array.from(tr.querySelectorAll('td[data-label="test accuracy"] data')).map(d => d.value),
  shown: tr.querySelector('td[data-label="test accuracy"]').innerText.trim()}));
const over = Array.from(document.querySelectorAll('table, figure, img, p, h1, h2, section'))
  .filter(el => el.getBoundingClientRect().right > window.innerWidth + 0.5 || el.scrollWidth > el.clientWidth + 1)
  .map(el => el.tagName + '.' + el.className);
return {ready: document.readyState, width: window.innerWidth, scroll: document.documentElement.scrollWidth,
        images: imgs.map(i => [i.complete, i.naturalWidth, i.alt.length]), rows: rows, over: over,
        height: document.documentElement.scrollHeight};
"""


def _open(driver: Any, page: Path, width: int) -> dict[str, Any]:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600})
    driver.get_log("browser")  # drop what an earlier page left
    driver.get(page.resolve().as_uri())
    out = driver.execute_script(_MEASURE)
    out["console"] = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR", "WARNING")]
    return out


def _check_in_browser(driver: Any, page: Path, report: dict[str, Any], tmp_path: Path) -> None:
    trained = {(r["layer"], r["probe"], r["labels"]): r for r in _trained(report)}
    for width in (1280, 390):
        seen = _open(driver, page, width)
        assert seen["ready"] == "complete" and seen["width"] == width
        assert seen["console"] == [], seen["console"]  # no error, no CSP violation, no failed load
        assert seen["images"] and all(ok and w > 0 and alt > 0 for ok, w, alt in seen["images"]), seen["images"]
        assert len(seen["rows"]) == len(trained)
        for row in seen["rows"]:
            r = trained[tuple(row["key"])]
            assert [float(v) for v in row["acc"]] == [r["test_accuracy"]]
            assert row["shown"].startswith(f"{r['test_accuracy']:.3f}")
        # No horizontal scroll, and nothing cut off inside its box (a narrow screen stacks the table rows).
        assert seen["scroll"] <= width and seen["over"] == [], (width, seen["scroll"], seen["over"])
        if width == 390:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": min(seen["height"], 8000), "deviceScaleFactor": 1, "mobile": True})
            shot = tmp_path / f"{page.stem}-{width}.png"
            assert driver.save_screenshot(str(shot))
            from PIL import Image

            with Image.open(shot) as img:
                assert img.size[0] == width


@pytest.mark.slow
def test_the_demo_page_in_headless_chromium(browser: Any, demo_run: Path, tmp_path: Path) -> None:
    page = demo_run / "report.html"
    assert any("mislabeled" in img.get("alt", "") for img in _Page(page.read_text()).images)  # the gallery
    _check_in_browser(browser, page, json.loads((demo_run / "report.json").read_text()), tmp_path)


@pytest.mark.slow
def test_a_page_with_controls_in_headless_chromium(browser: Any, tmp_path: Path) -> None:
    report = _report(controls=True)
    page = tmp_path / "controls.html"
    page.write_text(_html_of(report))
    _check_in_browser(browser, page, report, tmp_path)


@pytest.mark.slow
def test_a_page_with_a_selection_and_a_profile_in_headless_chromium(browser: Any, tmp_path: Path) -> None:
    from test_report_view import SELECTION

    report = {**_report(controls=True), "profile": PROFILE, "selection": SELECTION}
    page = tmp_path / "selection.html"
    page.write_text(_html_of(report))
    _check_in_browser(browser, page, report, tmp_path)
