"""ProbeReport: JSON schema and round trip, Wilson intervals, best layer, markdown, plots, epochs, aggregate."""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from pathlib import Path

import pytest

from masc_probe.errors import InputError
from masc_probe.report import ProbeReport, wilson_interval

LAYERS = ["input", "fc1", "fc2", "fc3"]


def _results(shift: float = 0.0) -> list[dict]:
    out = []
    for i, layer in enumerate(LAYERS):
        for probe in ("masc", "ncm"):
            for labels in ("corrupted", "true"):
                acc = 0.3 + 0.1 * i + (0.2 if labels == "true" else 0.0) + (0.05 if probe == "masc" else 0) + shift
                if layer == "fc3":  # the last layer memorized: accuracy drops
                    acc -= 0.3
                r = {"layer": layer, "probe": probe, "labels": labels, "test_accuracy": round(acc, 4),
                     "train_accuracy": {"corrupted": 0.5 + 0.1 * i, "true": 0.4 + 0.1 * i}}
                if probe == "masc":
                    r["n_components"] = [3 + i, 4 + i, 5 + i]
                out.append(r)
    return out


def _report(seed: int = 0, shift: float = 0.0, **kw) -> ProbeReport:
    args = dict(model="mlp", dataset="digits",
                corruption={"mode": "random", "rate": 0.8, "seed": seed, "realized_rate": 0.71 + 0.01 * seed},
                provenance={"masc_probe": "0.1.0", "torch": "2.14.1", "data_fingerprint": f"abc{seed}",
                            "solver": "scatter"},
                model_test_accuracy=0.37 + shift, n_test=200, n_train=500)
    args.update(kw)
    return ProbeReport(_results(shift), **args)


def _wilson_reference(successes: int, n: int) -> tuple[float, float]:
    # Wilson (1927) written from the textbook form: roots in p of (p̂ - p)² = z² p (1 - p) / n.
    z = 1.959963984540054
    p_hat = successes / n
    a = 1 + z * z / n
    b = -(2 * p_hat + z * z / n)
    c = p_hat * p_hat
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (37, 100), (1, 3), (971, 1000), (5000, 10000)])
def test_wilson_matches_quadratic_roots(k: int, n: int) -> None:
    lo, hi = wilson_interval(k / n, n)
    ref_lo, ref_hi = _wilson_reference(k, n)
    assert lo == pytest.approx(ref_lo, abs=1e-12)
    assert hi == pytest.approx(ref_hi, abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="n > 0"):
        wilson_interval(0.5, 0)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        wilson_interval(1.5, 10)


def test_json_schema_exactly_as_design() -> None:
    d = json.loads(_report().to_json())
    for key in ("schema_version", "model", "dataset", "corruption", "provenance", "model_test_accuracy", "results",
                "best"):
        assert key in d
    assert d["schema_version"] == 2
    assert d["model"] == "mlp" and d["dataset"] == "digits"
    assert set(d["corruption"]) == {"mode", "rate", "seed", "realized_rate"}
    assert d["model_test_accuracy"] == pytest.approx(0.37)
    r0 = d["results"][0]
    assert {"layer", "probe", "labels", "test_accuracy", "test_ci", "train_accuracy"} <= set(r0)
    assert r0["n_components"] == [3, 4, 5]
    assert isinstance(r0["test_ci"], list) and len(r0["test_ci"]) == 2
    # best keyed "probe/labels": the best hidden layer (the raw input is a control); fc2 wins (fc3 dropped),
    # computed here from the inputs
    assert set(d["best"]) == {"masc/corrupted", "masc/true", "ncm/corrupted", "ncm/true"}
    for key, entry in d["best"].items():
        probe, labels = key.split("/")
        mine = [r for r in _results() if r["probe"] == probe and r["labels"] == labels and r["layer"] != "input"]
        top = max(mine, key=lambda r: r["test_accuracy"])
        assert entry == {"layer": top["layer"], "test_accuracy": top["test_accuracy"]}
    assert d["best"]["masc/true"]["layer"] == "fc2"


def test_test_ci_is_wilson_of_accuracy_and_n() -> None:
    rep = _report()
    for r in rep.results:
        assert r["test_ci"] == pytest.approx(list(_wilson_reference(round(r["test_accuracy"] * 200), 200)), abs=1e-9)
        for labels, acc in r["train_accuracy"].items():
            assert r["train_ci"][labels] == pytest.approx(list(_wilson_reference(round(acc * 500), 500)), abs=1e-9)


def test_round_trip_file_and_string(tmp_path: Path) -> None:
    rep = _report(extra={"reducer": None, "preprocessing": {"mean": [0.5], "std": [0.5]}})
    path = tmp_path / "sub" / "report.json"
    text = rep.to_json(path)
    assert path.read_text() == text
    assert not [p for p in path.parent.iterdir() if p.name != "report.json"]  # no temp file left behind
    for back in (ProbeReport.from_json_file(path), ProbeReport.from_json_file(str(path)),
                 ProbeReport.from_json_string(text), ProbeReport.from_dict(json.loads(text))):
        assert back.to_dict() == rep.to_dict()
        assert back == rep
    assert json.loads(text)["preprocessing"] == {"mean": [0.5], "std": [0.5]}


def test_from_json_file_and_string_never_guess(tmp_path: Path) -> None:
    text = _report().to_json()
    named = tmp_path / "{odd}.json"  # a file name that looks like JSON text
    named.write_text(text)
    assert ProbeReport.from_json_file(str(named)) == _report()
    with pytest.raises(InputError, match="parse error") as err:
        ProbeReport.from_json_string(str(named))  # a path is not JSON: no fallback to reading the file
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="found none"):
        ProbeReport.from_json_file(tmp_path / "missing.json")
    with pytest.raises(InputError, match="str"):
        ProbeReport.from_json_string(text.encode())
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(InputError, match="parse error"):
        ProbeReport.from_json_file(tmp_path / "bad.json")


def test_an_older_reports_top_level_threshold_is_read_under_its_new_name() -> None:
    old = _report().to_dict()
    old["n_components"] = 0.99  # before the rename: the threshold, beside the per-class lists in each result
    back = ProbeReport.from_dict(old)
    assert back.extra["masc_n_components"] == 0.99 and "n_components" not in back.to_dict()
    assert back.results[0]["n_components"] == [3, 4, 5]


def test_to_pandas_has_one_row_per_result_with_the_intervals_split() -> None:
    pd = pytest.importorskip("pandas")  # an optional dependency: to_pandas is the one part that needs it
    rep = _report()
    frame = rep.to_pandas()
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(rep.results)
    for (_, row), r in zip(frame.iterrows(), rep.results):
        assert (row["layer"], row["probe"], row["labels"]) == (r["layer"], r["probe"], r["labels"])
        assert row["test_accuracy"] == r["test_accuracy"]
        assert [row["test_ci_low"], row["test_ci_high"]] == r["test_ci"]
        assert row["train_accuracy_corrupted"] == r["train_accuracy"]["corrupted"]
        assert [row["train_ci_true_low"], row["train_ci_true_high"]] == r["train_ci"]["true"]
    masc = frame[frame["probe"] == "masc"]
    assert masc["n_components"].tolist() == [r["n_components"] for r in rep.results if r["probe"] == "masc"]
    assert frame[frame["probe"] == "ncm"]["n_components"].isna().all()


def test_to_pandas_without_pandas_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # what an environment without pandas looks like to import
    with pytest.raises(ImportError, match="pip install pandas"):
        _report().to_pandas()


def test_from_dict_rejects_other_versions() -> None:
    d = _report().to_dict()
    d["schema_version"] = 3
    with pytest.raises(InputError, match="schema_version"):
        ProbeReport.from_dict(d)
    d["schema_version"] = 1  # written before the controls: read as it is
    assert ProbeReport.from_dict(d).results == _report().results
    with pytest.raises(InputError, match="results"):
        ProbeReport.from_dict({"schema_version": 1})


def test_duplicate_and_incomplete_results_rejected() -> None:
    r = _results()
    with pytest.raises(InputError, match="unique"):
        ProbeReport([r[0], r[0]])
    with pytest.raises(InputError, match="test_accuracy"):
        ProbeReport([{"layer": "a", "probe": "masc", "labels": "true"}])


def test_best_layer() -> None:
    rep = _report()
    best = rep.best_layer(probe="ncm", labels="corrupted")
    assert best["layer"] == "fc2" and best["probe"] == "ncm" and best["labels"] == "corrupted"
    with pytest.raises(InputError, match="masc/true"):
        rep.best_layer(probe="linear")
    single = ProbeReport([{"layer": "a", "probe": "masc", "labels": "label", "test_accuracy": 0.5},
                          {"layer": "b", "probe": "masc", "labels": "label", "test_accuracy": 0.5}])
    assert single.best_layer()["layer"] == "a"  # "true" falls back to the single label set; ties go first


def test_markdown_table() -> None:
    md = _report().to_markdown()
    assert "0.370" in md  # model accuracy line
    lines = [ln for ln in md.splitlines() if ln.startswith("| `")]
    assert [ln.split("|")[1].strip() for ln in lines[:4]] == [f"`{lay}`" for lay in LAYERS]
    header = next(ln for ln in md.splitlines() if ln.startswith("| layer"))
    assert header.count("|") == 6  # layer + 4 series
    fc2 = next(ln for ln in lines if ln.startswith("| `fc2`"))
    assert fc2.count("★") == 4 and fc2.count("**") == 8
    assert "★" not in next(ln for ln in lines if ln.startswith("| `fc3`"))


def _png_ok(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    assert zlib.crc32(data[12:16 + length]) == struct.unpack(">I", data[16 + length:20 + length])[0]
    assert data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def test_plot_writes_valid_png(tmp_path: Path) -> None:
    fig = _report().plot(tmp_path / "acc.png")
    w, h = _png_ok(tmp_path / "acc.png")
    assert w > 300 and h > 200
    assert (w, h) == tuple(round(v) for v in fig.get_size_inches() * fig.dpi)  # the figure returned is the one saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png"]


def test_plot_without_a_path_returns_the_figure_and_draws_into_a_given_axes(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    rep = _report()
    fig = rep.plot()
    assert isinstance(fig, Figure) and list(tmp_path.iterdir()) == []
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
    masc_true = next(line for line in ax.get_lines() if line.get_label() == "masc (true)")
    assert list(masc_true.get_ydata()) == [r["test_accuracy"] for r in rep.results
                                          if (r["probe"], r["labels"]) == ("masc", "true")]
    mine = Figure()
    left, right = mine.subplots(1, 2)
    assert rep.plot(ax=right) is mine  # the caller's figure, its other panel untouched
    assert right.get_lines() and not left.get_lines()
    dyn = ProbeReport.over_epochs({1: rep, 2: _report(shift=0.01)})
    assert dyn.plot(tmp_path / "d.png", ax=left) is mine and (tmp_path / "d.png").stat().st_size > 0
    assert left.get_xlabel() == "epoch"


def test_epoch_axis_dynamics(tmp_path: Path) -> None:
    reports = {ep: _report(shift=0.01 * ep, model_test_accuracy=0.9 - 0.1 * ep) for ep in (1, 2, 3)}
    dyn = ProbeReport.over_epochs(reports)
    assert dyn.epochs == [1, 2, 3]
    assert dyn.model_test_accuracy == pytest.approx(0.6)
    assert dyn.best_layer()["epoch"] == 3
    assert dyn.best_layer(epoch=1)["test_accuracy"] == pytest.approx(0.3 + 0.2 + 0.2 + 0.05 + 0.01)
    assert dyn.to_dict()["best"]["masc/true"]["epoch"] == 3
    back = ProbeReport.from_json_string(dyn.to_json())
    assert back == dyn and back.epochs == [1, 2, 3]
    dyn.plot(tmp_path / "dyn.png")
    _png_ok(tmp_path / "dyn.png")
    dyn.plot_layers(tmp_path / "layers.png", epoch=2)
    _png_ok(tmp_path / "layers.png")
    md = dyn.to_markdown()
    assert "| 2 | 0.700 |" in md
    with pytest.raises(InputError, match="epoch"):
        _report().plot_dynamics(tmp_path / "x.png")


def test_aggregate_mean_and_spread(tmp_path: Path) -> None:
    shifts = [0.0, 0.02, -0.01]
    reps = [_report(seed=s, shift=d) for s, d in zip((0, 1, 2), shifts)]
    agg = ProbeReport.aggregate(reps)
    base = {(r["layer"], r["probe"], r["labels"]): r["test_accuracy"] for r in _results()}
    for r in agg.results:
        accs = [base[(r["layer"], r["probe"], r["labels"])] + d for d in shifts]
        accs = [round(a, 4) for a in accs]
        mean = sum(accs) / 3
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / 2)
        assert r["test_accuracy"] == pytest.approx(mean)
        assert r["test_accuracy_std"] == pytest.approx(std)
        assert (r["test_accuracy_min"], r["test_accuracy_max"]) == (min(accs), max(accs))
        assert r["n_runs"] == 3
    assert agg.model_test_accuracy == pytest.approx(0.37 + sum(shifts) / 3)
    assert agg.corruption["seed"] == [0, 1, 2]
    assert agg.corruption["realized_rate"] == pytest.approx(0.72)
    assert ProbeReport.from_json_string(agg.to_json()) == agg
    agg.plot(tmp_path / "agg.png")
    _png_ok(tmp_path / "agg.png")
    assert "±" in agg.to_markdown()


def test_aggregate_refuses_other_differences() -> None:
    with pytest.raises(InputError, match="model"):
        ProbeReport.aggregate([_report(0), _report(1, model="cnn")])
    with pytest.raises(InputError, match="corruption"):
        ProbeReport.aggregate([_report(0), _report(1, corruption={"mode": "random", "rate": 0.4, "seed": 1})])
    with pytest.raises(InputError, match="distinct seeds"):
        ProbeReport.aggregate([_report(0), _report(0)])
    with pytest.raises(InputError, match="at least 2"):
        ProbeReport.aggregate([_report(0)])
    fewer = ProbeReport(_results()[:-1], model="mlp", dataset="digits",
                        corruption={"mode": "random", "rate": 0.8, "seed": 5, "realized_rate": 0.7}, n_test=200)
    with pytest.raises(InputError, match="result entries"):
        ProbeReport.aggregate([_report(0), fewer])
