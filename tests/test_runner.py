"""ProbeRunner on tiny models: exactness against probes fitted directly, batch forms, models, budget, save/load."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _runner_helpers import N_CLASSES, Untraceable, cnn, data, mlp, tuples

from masc_probe.errors import InputError, UnknownNameError
from masc_probe.layers import FeatureTap
from masc_probe.probes import MinimumAngleSubspaceClassifier, NearestClassMean
from masc_probe.report import ProbeReport
from masc_probe.runner import ProbeRunner


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny ops on a shared 2-core machine: a second intra-op thread only adds waiting (4x slower measured here).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stacked(model: torch.nn.Module, layers: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Activations flattened per sample, computed here without the runner."""
    with FeatureTap(model, layers) as tap:
        return {k: v.reshape(len(x), -1).float() for k, v in tap(x).items()}


@pytest.fixture(scope="module")
def mlp_fit() -> tuple[torch.nn.Module, ProbeRunner, tuple]:
    model = mlp()
    x, yc, y = data(150)
    runner = ProbeRunner(model, probes=("masc", "ncm", "linear"), progress=False, train_accuracy=True)
    runner.fit(tuples(x, yc, y, 32))
    return model, runner, (x, yc, y)


def test_masc_equals_direct_fit_on_stacked_activations(mlp_fit) -> None:
    model, runner, (x, yc, y) = mlp_fit
    xt, _, _ = data(60, seed=1)
    assert runner.label_sets_ == ["corrupted", "true"]
    train_feats, test_feats = _stacked(model, runner.layers, x), _stacked(model, runner.layers, xt)
    preds = runner.predict(xt)
    for layer in runner.layers:
        for labels, target in (("corrupted", yc), ("true", y)):
            direct = MinimumAngleSubspaceClassifier(0.99).fit(train_feats[layer].numpy(), target.numpy())
            est = runner.estimators_[(layer, "masc", labels)]
            np.testing.assert_array_equal(est.n_components_, direct.n_components_)
            rows = test_feats[layer]
            np.testing.assert_allclose(est.cosines(rows).numpy(), direct.cosines(rows.numpy()), atol=2e-5)
            np.testing.assert_array_equal(preds[(layer, "masc", labels)].numpy(), direct.predict(rows.numpy()))
            ncm = NearestClassMean().fit(train_feats[layer].numpy(), target.numpy())
            np.testing.assert_array_equal(preds[(layer, "ncm", labels)].numpy(), ncm.predict(test_feats[layer].numpy()))


def test_report_numbers_match_direct_computation(mlp_fit) -> None:
    model, runner, (x, yc, y) = mlp_fit
    xt, _, yt = data(60, seed=1)
    report = runner.evaluate([(xt[:25], yt[:25]), (xt[25:], yt[25:])], model_name="mlp", dataset="toy")
    d = json.loads(report.to_json())
    assert d["schema_version"] == 2 and d["model"] == "mlp" and d["n_test"] == 60 and d["n_train"] == 150
    with torch.no_grad():
        model_acc = float((model(xt).argmax(1) == yt).float().mean())
    assert d["model_test_accuracy"] == pytest.approx(model_acc)
    feats = _stacked(model, runner.layers, x)
    test_feats = _stacked(model, runner.layers, xt)
    trained = [r for r in d["results"] if r.get("control") is None]  # the init control's: tests/test_controls.py
    for r in trained:
        if r["probe"] != "masc":
            continue
        target = {"corrupted": yc, "true": y}[r["labels"]]
        direct = MinimumAngleSubspaceClassifier(0.99).fit(feats[r["layer"]].numpy(), target.numpy())
        acc = float((direct.predict(test_feats[r["layer"]].numpy()) == yt.numpy()).mean())
        assert r["test_accuracy"] == pytest.approx(acc)
        train_pred = direct.predict(feats[r["layer"]].numpy())
        assert r["train_accuracy"]["corrupted"] == pytest.approx(float((train_pred == yc.numpy()).mean()))
        assert r["train_accuracy"]["true"] == pytest.approx(float((train_pred == y.numpy()).mean()))
        assert r["n_components"] == direct.n_components_.tolist()
        lo, hi = r["test_ci"]
        assert lo < r["test_accuracy"] < hi or r["test_accuracy"] in (0.0, 1.0)
    assert set(d["best"]) == {f"{p}/{s}" for p in ("masc", "ncm", "linear") for s in ("corrupted", "true")}
    assert [r["layer"] for r in trained][::6] == runner.layers  # forward order, 3 probes × 2 label sets
    assert ProbeReport.from_json_string(report.to_json()) == report


def test_batch_forms_give_the_same_fit() -> None:
    x, yc, y = data(90)
    forms = {
        "tuple3": tuples(x, yc, y, 30),
        "dict_image": [{"image": a, "label": b, "true_label": c, "index": torch.arange(len(a))}
                       for a, b, c in tuples(x, yc, y, 30)],
        "dict_pixel_values": [{"pixel_values": a, "label": b, "true_label": c} for a, b, c in tuples(x, yc, y, 30)],
    }
    preds = {}
    for name, batches in forms.items():
        runner = ProbeRunner(mlp(), ["2"], probes=("masc",), progress=False, train_accuracy=False).fit(batches)
        assert runner.label_sets_ == ["corrupted", "true"], name
        preds[name] = runner.predict(x)
    for name in forms:
        for key in preds["tuple3"]:
            assert torch.equal(preds[name][key], preds["tuple3"][key]), (name, key)
    single = ProbeRunner(mlp(), ["2"], probes=("masc",), progress=False, train_accuracy=False)
    single.fit(tuples(x, yc, y, 30, both=False))
    assert single.label_sets_ == ["label"]
    assert torch.equal(single.predict(x)[("2", "masc", "label")], preds["tuple3"][("2", "masc", "true")])
    xs = ProbeRunner(mlp(), ["2"], probes=("ncm",), progress=False).fit([{"x": x, "label": y}])
    assert xs.label_sets_ == ["label"]
    only = ProbeRunner(mlp(), ["2"], probes=("ncm",), labels="corrupted", progress=False,
                       controls=()).fit(tuples(x, yc, y, 30))
    assert list(only.estimators_) == [("2", "ncm", "corrupted")]


def test_bad_batches_and_arguments() -> None:
    x, yc, y = data(30)
    with pytest.raises(UnknownNameError, match="masc"):
        ProbeRunner(mlp(), probes=("mas",))
    with pytest.raises(UnknownNameError, match="true"):
        ProbeRunner(mlp(), labels="tru")
    with pytest.raises(UnknownNameError, match="unknown layer .fc9"):
        ProbeRunner(mlp(), ["fc9", "1"])
    runner = ProbeRunner(mlp(), ["1"], probes=("ncm",), progress=False)
    with pytest.raises(InputError, match="batch dict or an"):
        runner.fit([x])
    with pytest.raises(InputError, match="image key"):
        runner.fit([{"img": x, "label": y}])
    with pytest.raises(InputError, match=r"labels must lie in \[0, 3\)"):
        runner.fit([(x, y + 5)])
    with pytest.raises(InputError, match="labels='corrupted' needs"):
        ProbeRunner(mlp(), ["1"], probes=("ncm",), labels="corrupted", progress=False).fit([(x, y)])
    with pytest.raises(InputError, match="not fitted"):
        runner.evaluate([(x, y)])
    with pytest.raises(InputError, match="at least one training batch"):
        runner.fit([])


def test_small_cnn_with_reducers() -> None:
    x, yc, y = data(60, shape=(1, 4, 4))
    model = cnn()
    runner = ProbeRunner(model, probes=("masc", "ncm"), progress=False).fit(tuples(x, yc, y, 20))
    assert runner.layers[0] == "input" and len(runner.layers) >= 4
    report = runner.evaluate([(x, y)])
    with torch.no_grad():
        assert report.model_test_accuracy == pytest.approx(float((model(x).argmax(1) == y).float().mean()))
    acts = _stacked(model, ["1"], x)["1"]
    gap = ProbeRunner(model, ["1"], probes=("ncm",), reducer="gap", progress=False).fit(tuples(x, yc, y, 20))
    assert gap.features(x)["1"].shape == (60, 4)
    torch.testing.assert_close(gap.features(x)["1"], acts.reshape(60, 4, 16).mean(2))
    rnd = ProbeRunner(model, ["1"], probes=("ncm",), reducer="random:5", seed=3, progress=False)
    rows = rnd.features(x)["1"]
    assert rows.shape == (60, 5)
    torch.testing.assert_close(rows, acts @ rnd.reducer.projection("1", 64))
    again = ProbeRunner(model, ["1"], probes=("ncm",), reducer="random:5", seed=3, progress=False)
    assert torch.equal(again.features(x)["1"], rows)
    with pytest.raises(InputError, match="reducer"):
        ProbeRunner(model, ["1"], reducer="pca")


def test_timm_resnet18_32px() -> None:
    import timm  # a hard dependency: a broken install must fail here, not skip
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=N_CLASSES)
    x, yc, y = data(24, shape=(3, 32, 32))
    runner = ProbeRunner(model, probes=("masc", "ncm"), progress=False).fit(tuples(x, yc, y, 12))
    assert runner.layers[-1] in ("global_pool", "global_pool.flatten")
    report = runner.evaluate([(x[:12], y[:12]), (x[12:], y[12:])])
    with torch.no_grad():
        assert report.model_test_accuracy == pytest.approx(float((model.eval()(x).argmax(1) == y).float().mean()))
    pooled = runner.layers[-1]
    feats = _stacked(model, [pooled], x)[pooled]
    direct = MinimumAngleSubspaceClassifier(0.99).fit(feats.numpy(), y.numpy())
    np.testing.assert_array_equal(runner.predict(x)[(pooled, "masc", "true")].numpy(), direct.predict(feats.numpy()))


def test_untraceable_model_through_hooks() -> None:
    model = Untraceable()
    x, yc, y = data(60)
    runner = ProbeRunner(model, ["body", "body.2"], probes=("masc",), progress=False).fit(tuples(x, yc, y, 20))
    report = runner.evaluate([(x, y)])
    with torch.no_grad():
        assert report.model_test_accuracy == pytest.approx(float((model(x).argmax(1) == y).float().mean()))
    feats = _stacked(model, ["body"], x)["body"]
    direct = MinimumAngleSubspaceClassifier(0.99).fit(feats.numpy(), yc.numpy())
    got = runner.predict(x)[("body", "masc", "corrupted")].numpy()
    np.testing.assert_array_equal(got, direct.predict(feats.numpy()))


def test_tiny_memory_budget_spills_and_stays_exact(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x, yc, y = data(150)
    xt, _, _ = data(60, seed=1)
    roomy = ProbeRunner(mlp(), probes=("masc", "ncm"), progress=False, controls=()).fit(tuples(x, yc, y, 32))
    assert roomy.plan_.deferred == [] and set(roomy.solvers_.values()) == {"scatter"}  # n_c = 50 > d: scatter
    tiny = ProbeRunner(mlp(), probes=("masc", "ncm"), max_memory=2048, cache_dir=tmp_path, progress=False,
                       controls=())
    with caplog.at_level(logging.INFO, logger="masc_probe"):
        tiny.fit(tuples(x, yc, y, 32))
    assert "spilling" in caplog.text  # the probes' own rows went to disk as well
    assert tiny.plan_.deferred == tiny.layers  # no scatter fits: every layer is solved from the row cache
    assert set(tiny.solvers_.values()) == {"gram"}  # ... in the Gram form, on rows spilled beyond 1 KiB
    # the row cache is gone; the fitted probes past the budget wait on disk until the runner is closed
    assert [p.name.startswith("masc-probe-fitted-") for p in tmp_path.iterdir()] == [True]
    assert tiny.estimators_.spilled
    a, b = roomy.predict(xt), tiny.predict(xt)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    _, _, yt = data(60, seed=1)
    ra, rb = roomy.evaluate([(xt[:30], yt[:30]), (xt[30:], yt[30:])]), tiny.evaluate([(xt, yt)])
    assert [r["test_accuracy"] for r in ra.results] == [r["test_accuracy"] for r in rb.results]
    tiny.close()
    assert list(tmp_path.iterdir()) == []
    # a budget that holds some layers' scatter matrices but not others: both kinds in one fit
    mixed = ProbeRunner(mlp(), probes=("masc",), max_memory=100_000, progress=False,
                        controls=()).fit(tuples(x, yc, y, 32))
    assert mixed.plan_.stream and mixed.plan_.deferred
    c = mixed.predict(xt)
    assert all(torch.equal(c[k], a[k]) for k in c)


def test_save_load_predicts_identically(tmp_path: Path) -> None:
    x, yc, y = data(120)
    xt, _, yt = data(60, seed=1)
    model = mlp()
    probes = ("masc", "ncm", "velpic", "linear", "knn", "lda", "qda")
    runner = ProbeRunner(model, ["2", "4"], probes=probes, progress=False, controls=(),
                         probe_kwargs={"linear": {"epochs": 3}, "qda": {"reg_param": 0.1}}).fit(tuples(x, yc, y, 40))
    runner.save(tmp_path / "saved")
    saved = sorted(p.relative_to(tmp_path / "saved").as_posix() for p in (tmp_path / "saved").rglob("*"))
    assert saved == ["probes", *(f"probes/e{i:04d}.safetensors" for i in range(28)), "runner.json"]
    loaded = ProbeRunner.load(tmp_path / "saved", model)
    before, after = runner.predict(xt), loaded.predict(xt)
    assert before.keys() == after.keys() and len(before) == 2 * len(probes) * 2
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert runner.evaluate([(xt, yt)]).to_dict() == loaded.evaluate([(xt, yt)]).to_dict()
    rows_only = ProbeRunner.load(tmp_path / "saved")
    feats = runner.features(xt)
    assert torch.equal(rows_only.predict(feats)[("4", "masc", "true")], before[("4", "masc", "true")])
    with pytest.raises(InputError, match="fitted components"):
        loaded.estimators_[("2", "masc", "true")].cosines(feats["2"], n_components=0.5)
    with pytest.raises(InputError, match="runner.json"):
        ProbeRunner.load(tmp_path)


def test_save_refuses_what_needs_pickle(tmp_path: Path) -> None:
    x, yc, y = data(60)

    def manhattan(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).sum())

    runner = ProbeRunner(mlp(), ["2"], probes=("knn",), progress=False, train_accuracy=False,
                         probe_kwargs={"knn": {"metric": manhattan}}).fit(tuples(x, yc, y, 30))
    with pytest.raises(InputError, match="without pickle|as JSON"):
        runner.save(tmp_path / "saved")
    assert not (tmp_path / "saved" / "runner.json").exists()


def test_epoch_and_progress_quiet(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    x, yc, y = data(60)
    for progress in (True, False):  # stderr is not a terminal under pytest: quiet either way
        runner = ProbeRunner(mlp(), ["2"], probes=("ncm",), progress=progress).fit(tuples(x, yc, y, 20))
        report = runner.evaluate([(x, y)], epoch=7)
        assert {r["epoch"] for r in report.results} == {7}
    assert capfd.readouterr().err == ""


def test_train_accuracy_subset_is_seeded() -> None:
    x, yc, y = data(150)
    full = ProbeRunner(mlp(), ["2"], probes=("masc",), train_accuracy=True, progress=False).fit(tuples(x, yc, y, 50))
    sub = ProbeRunner(mlp(), ["2"], probes=("masc",), train_accuracy=40, seed=1, progress=False)
    sub.fit(tuples(x, yc, y, 50))
    assert full.n_train_scored_ == 150 and sub.n_train_scored_ == 40
    idx = np.sort(np.random.default_rng(1).choice(150, 40, replace=False))
    pred = full.predict(x)[("2", "masc", "true")].numpy()
    want = float((pred[idx] == y.numpy()[idx]).mean())
    assert sub.train_accuracy_[("2", "masc", "true")]["true"] == pytest.approx(want)
    report = sub.evaluate([(x, y)])
    r = report.results[0]
    assert r["train_ci"]["true"][1] - r["train_ci"]["true"][0] > 2 * 1.96 * math.sqrt(0.25 / 150) * 0.5


def test_numpy_n_components_is_taken_as_the_estimator_takes_it() -> None:
    # np.float32(0.9) is a fraction to MinimumAngleSubspaceClassifier; the runner takes it the same way.
    model = mlp()
    x, yc, y = data(90)
    runner = ProbeRunner(model, ["2"], probes=("masc",), labels="true", n_components=np.float32(0.9),
                         progress=False, train_accuracy=False).fit(tuples(x, yc, y, 30))
    feats = _stacked(model, ["2"], x)["2"].numpy()
    direct = MinimumAngleSubspaceClassifier(np.float32(0.9)).fit(feats, y.numpy())
    np.testing.assert_array_equal(runner.estimators_[("2", "masc", "true")].n_components_, direct.n_components_)
    report = runner.evaluate(tuples(x, yc, y, 30))
    assert json.loads(report.to_json())["masc_n_components"] == float(np.float32(0.9))
    with pytest.raises(InputError, match="n_components must be"):
        ProbeRunner(model, ["2"], n_components=np.float32(1.5), progress=False)
