"""LabelIssues.plot_gallery: the top-k suspects drawn as the data stores them, with index, labels, score and the
truth mark, checked against independent references (scikit-learn's digits pixels, the data's own true labels, a
ranking recomputed from the scores); and `masc-probe label-issues --gallery` on a digits run folder at p = 0.6."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.datasets import load_digits

from masc_probe import find_label_issues, load_data
from masc_probe.cli import main
from masc_probe.data._builtin import split_mask
from masc_probe.errors import InputError

_TITLE = re.compile(r"#(\d+)  score (\S+)\ngiven (.+?) → (.+?)(?:\n(.*))?$")
_RED = (0xC6 / 255, 0x28 / 255, 0x28 / 255, 1.0)


@pytest.fixture(scope="module")
def digits_train():
    return load_data("digits", corrupt=0.6, seed=0)


@pytest.fixture(scope="module")
def issues(digits_train):
    # NCM on the pixels themselves: seconds, and the detector the gallery shows is whatever it is given.
    return find_label_issues(None, digits_train, probes=("ncm",), progress=False)


def _chance_of_at_least(k: int, n: int, rate: float) -> float:
    """P(X >= k) for X ~ Binomial(n, rate): how often n samples drawn at random hold k or more wrong labels."""
    return float(binom.sf(k - 1, n, rate))


def _panels(fig) -> list:
    """The gallery's panels in grid order (the inset axes that hold an image)."""
    return [child for ax in fig.axes for child in ax.child_axes if child.images]


def _read(panel) -> dict:
    m = _TITLE.match(panel.get_title())
    assert m, panel.get_title()
    return {"index": int(m.group(1)), "score": float(m.group(2)), "given": m.group(3), "suggested": m.group(4),
            "truth": m.group(5), "pixels": np.asarray(panel.images[0].get_array()),
            "red": panel.spines["left"].get_edgecolor() == pytest.approx(_RED)}


def test_the_gallery_shows_the_top_k_as_stored_with_their_labels_and_truth(issues, digits_train) -> None:
    fig = issues.plot_gallery(digits_train, k=32)
    shown = [_read(p) for p in _panels(fig)]
    assert len(shown) == 32
    # The ranking, recomputed: the 32 lowest scores (ties by position), most suspect first.
    order = np.lexsort((np.arange(len(issues.score)), issues.score))[:32]
    assert [s["index"] for s in shown] == issues.index[order].tolist()
    for s, pos in zip(shown, order):
        assert s["given"] == str(issues.given_label[pos]) and s["suggested"] == str(issues.suggested_label[pos])
        assert s["score"] == pytest.approx(issues.score[pos], rel=1e-2)
    # Pixels as stored: scikit-learn's own 8x8 digits (0..16) of the train split, over 16 — not model input.
    bunch = load_digits()
    raw = bunch.images[~split_mask(bunch.target)]
    for s in shown:
        np.testing.assert_array_equal(s["pixels"], (raw[s["index"]] / 16).astype(np.float32))
    # The truth mark from the data's own true labels, read independently of the issues.
    true = np.asarray(digits_train.with_format("numpy")["true_label"])
    given = np.asarray(digits_train.with_format("numpy")["label"])
    for s in shown:
        wrong = given[s["index"]] != true[s["index"]]
        assert s["red"] == wrong
        assert s["truth"] == (f"wrong: true {true[s['index']]}" if wrong else "given was right")
    # The title's count is the data's own: the truly wrong labels among the 32 hand-ranked samples.
    top = issues.index[order]
    n_wrong = int(np.sum(given[top] != true[top]))
    assert int(re.search(r": (\d+) of 32 truly mislabeled", fig.get_suptitle()).group(1)) == n_wrong
    # And the gallery is a finding, not a draw: 32 samples taken at random carry a wrong label at the realized rate.
    assert _chance_of_at_least(n_wrong, 32, np.mean(given != true)) < 1e-3


def test_colour_images_and_class_names(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    stored = {}
    for cls, base in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(6):
            img = np.clip(np.array(base) + rng.integers(-30, 30, size=(6, 6, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "train" / cls / f"{i}.png")
            stored[(cls, i)] = img
    data = load_data(tmp_path)
    found = find_label_issues(None, data, probes=("ncm",), progress=False)
    fig = found.plot_gallery(data, k=5)
    panels = _panels(fig)
    assert len(panels) == 5
    images = {img.tobytes() for img in stored.values()}
    names = data.features["label"].names
    for panel, pos in zip(panels, np.lexsort((np.arange(12), found.score))[:5]):
        pixels = np.asarray(panel.images[0].get_array())
        assert pixels.shape == (6, 6, 3)  # colour, as stored
        assert np.round(pixels * 255).astype(np.uint8).tobytes() in images
        assert f"given {found.given_label[pos]} {names[found.given_label[pos]]} →" in panel.get_title()


def test_k_beyond_the_data_is_clipped_and_ax_is_drawn_into(issues, digits_train) -> None:
    from matplotlib.figure import Figure

    few = digits_train.select(range(40))
    small = find_label_issues(None, few, probes=("ncm",), progress=False)
    assert len(_panels(small.plot_gallery(few, k=100))) == 40
    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    assert issues.plot_gallery(digits_train, k=3, ax=ax) is fig and len(_panels(fig)) == 3


def test_bad_k_and_other_data_are_one_line_errors(issues, digits_train) -> None:
    for k in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="k must be an int >= 1"):
            issues.plot_gallery(digits_train, k=k)
    with pytest.raises(InputError, match="the data the issues were found on"):
        issues.plot_gallery(digits_train.select(range(10)), k=3)
    with pytest.raises(InputError, match="index"):  # same length, other order
        issues.plot_gallery(digits_train.select(list(reversed(range(len(digits_train))))), k=3)
    with pytest.raises(InputError, match="map-style"):
        issues.plot_gallery(iter([]), k=3)


# ------------------------------------------------------------------------------------------ on a run folder
def test_cli_gallery_on_a_digits_run_at_p06(tmp_path: Path, digits_p06_cli_run: Path) -> None:
    """`masc-probe label-issues` on a `masc-probe train` run folder (digits, p = 0.6, the session's 3-epoch run): the
    top 32 drawn, and the count of truly wrong labels among them the run's own true labels give, far above what 32
    samples taken at random would hold."""
    run = tmp_path / "run"
    shutil.copytree(digits_p06_cli_run, run, ignore=shutil.ignore_patterns("label-issues"))
    assert main(["label-issues", str(run), "--probes", "masc,ncm", "--quiet"]) == 0
    folder = run / "label-issues"
    assert (folder / "label_issues.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((folder / "label_issues.json").read_text())
    with (folder / "label_issues.csv").open() as f:
        rows = list(csv.DictReader(f))
    by_rank = sorted(rows, key=lambda r: int(r["rank"]))
    assert [float(r["score"]) for r in by_rank] == sorted(float(r["score"]) for r in rows)  # rank 1: lowest score
    top = [int(r["index"]) for r in by_rank[:32]]
    assert summary["gallery"]["index"] == top and summary["gallery"]["k"] == 32
    # The truth, independently: the run's data reloaded, true labels by index.
    train = load_data("digits", corrupt=0.6, seed=0).with_format("numpy")
    true, given = np.asarray(train["true_label"]), np.asarray(train["label"])
    n_wrong = int(np.sum(given[top] != true[top]))
    assert summary["gallery"]["truly_wrong"] == n_wrong
    assert summary["gallery"]["fraction_wrong"] == pytest.approx(n_wrong / 32)
    fraction = n_wrong / 32
    # Against chance: 32 samples taken at random carry a wrong label at the realized rate.
    assert _chance_of_at_least(n_wrong, 32, np.mean(given != true)) < 1e-3
    print(f"digits p=0.6, 3 epochs: {summary['probe']} at {summary['layer']}, gallery top 32: "
          f"{summary['gallery']['truly_wrong']} truly mislabeled ({fraction:.3f})")
    # --gallery 0 draws none and removes the older one.
    assert main(["label-issues", str(run), "--probes", "ncm", "--gallery", "0", "--quiet"]) == 0
    assert not (folder / "label_issues.png").exists()
    assert "gallery" not in json.loads((folder / "label_issues.json").read_text())
