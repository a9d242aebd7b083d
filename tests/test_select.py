"""Choosing a layer and a subspace size without the images that judge it (masc_probe.runner._select)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masc_probe.errors import InputError, UnknownNameError
from masc_probe.runner._select import check_select, choosing_labels, select, split_parts


def test_the_split_is_stratified_disjoint_seeded_and_complete() -> None:
    y = np.repeat(np.arange(4), [10, 21, 7, 2])
    choose, evaluate = split_parts(y, 0.5, seed=3)
    assert len(np.intersect1d(choose, evaluate)) == 0
    assert np.array_equal(np.sort(np.concatenate([choose, evaluate])), np.arange(len(y)))
    for cls, n_c in zip(range(4), [10, 21, 7, 2], strict=True):
        assert np.sum(y[choose] == cls) == int(round(0.5 * n_c))
    again, _ = split_parts(y, 0.5, seed=3)
    other, _ = split_parts(y, 0.5, seed=4)
    assert np.array_equal(choose, again) and not np.array_equal(choose, other)


def _profiles(y: np.ndarray, table: dict[tuple[str, str, str], dict[float | int, np.ndarray]]):
    return {key: (list(by_size), np.stack(list(by_size.values())), [[1] * 3 for _ in by_size])
            for key, by_size in table.items()}


def test_each_network_chooses_on_the_choosing_part_and_is_judged_on_the_other() -> None:
    # Constructed predictions with a known answer: 3 classes, 40 images. Layer "b" at size 0.9 is right on the
    # choosing part only; layer "a" at size 5 is right everywhere but on 2 choosing images. The rule must take
    # "b"/0.9 (it never sees the evaluation part), whose evaluation accuracy is then 0; the oracle (evaluation part)
    # is "a"/5.
    y = np.tile(np.arange(3), 14)[:40]
    index = np.arange(100, 140)
    choose, evaluate = split_parts(y, 0.5, seed=0)
    b_pred = np.where(np.isin(np.arange(40), choose), y, (y + 1) % 3)
    a_pred = y.copy()
    a_pred[choose[:2]] = (y[choose[:2]] + 1) % 3
    wrong = (y + 2) % 3
    table = {("trained", "a", "true"): {0.9: wrong, 5: a_pred}, ("trained", "b", "true"): {0.9: b_pred, 5: wrong},
             ("init", "a", "true"): {0.9: a_pred, 5: wrong}, ("input", "input", "true"): {0.9: wrong, 5: wrong}}
    rows, block = select(_profiles(y, table), y, index, rule="clean", split=0.5, seed=0, corruption=None,
                         num_classes=3)
    mine = next(c for c in block["choices"] if c["network"] == "trained")
    assert (mine["layer"], mine["size"]) == ("b", 0.9)
    assert mine["choosing_accuracy"] == 1.0 and mine["evaluation_accuracy"] == 0.0
    oracle = next(o for o in block["oracle"] if o["network"] == "trained")
    assert (oracle["layer"], oracle["size"], oracle["accuracy"]) == ("a", 5, 1.0)
    init = next(c for c in block["comparisons"] if c["control"] == "init")
    # init chose "a"/0.9, right on every evaluation image; the trained choice on none: b = 0, c = n_eval.
    assert init["discordant"] == [0, len(evaluate)] and init["difference"] == -1.0
    assert init["verdict"] == "removed"
    assert block["choosing_index"] == sorted((index[choose]).tolist())
    assert block["evaluation_index"] == sorted((index[evaluate]).tolist())
    assert {(r["layer"], r["size"]): r["accuracy"] for r in rows if r["control"] is None
            and r["layer"] == "a"} == {("a", 0.9): 0.0, ("a", 5): float(np.mean(a_pred == y))}
    # The parts follow the images' indices, not the order they came in.
    perm = np.random.default_rng(0).permutation(40)
    shuffled = {k: {s: p[perm] for s, p in v.items()} for k, v in table.items()}
    _, again = select(_profiles(y[perm], shuffled), y[perm], index[perm], rule="clean", split=0.5, seed=0,
                      corruption=None, num_classes=3)
    assert again["choices"] == block["choices"] and again["choosing_index"] == block["choosing_index"]
    # A fixed size: only the layer is chosen.
    _, fixed = select(_profiles(y, table), y, index, rule="clean", split=0.5, seed=0, corruption=None,
                      num_classes=3, fixed_size=5)
    mine = next(c for c in fixed["choices"] if c["network"] == "trained")
    assert (mine["layer"], mine["size"]) == ("a", 5)
    with pytest.raises(InputError, match="not in the profile"):
        select(_profiles(y, table), y, index, rule="clean", split=0.5, seed=0, corruption=None, num_classes=3,
               fixed_size=0.99)


def test_noisy_choosing_labels_follow_the_recipe_and_say_when_the_rule_holds() -> None:
    y = np.arange(20_000) % 10
    noisy, rec = choosing_labels(y, "noisy", {"mode": "random", "rate": 0.8}, 10, 0, np.arange(len(y)))
    assert rec["kind"] == "noisy" and rec["condition_holds"] is True
    assert rec["realized_rate"] == pytest.approx(0.8 * 9 / 10, abs=0.01)  # a uniform re-draw keeps 1 in 10
    assert "0.280 on the diagonal against 0.080" in rec["condition"]
    _, rec = choosing_labels(y, "noisy", {"mode": "symmetric", "rate": 0.95}, 10, 0, np.arange(len(y)))
    assert rec["condition_holds"] is False  # 0.05 kept against 0.95 / 9 = 0.106 to each other class
    _, rec = choosing_labels(y, "noisy", {"mode": "asymmetric", "rate": 0.4, "mapping": {0: 1, 1: 0}}, 10, 0,
                             np.arange(len(y)))
    assert rec["condition_holds"] is None and "not known" in rec["condition"]
    same, rec = choosing_labels(y, "noisy", {"mode": "asymmetric", "rate": 0.4}, 10, 0, np.arange(len(y)))
    assert np.array_equal(same, y) and rec["condition_holds"] is None and "no class map" in rec["condition"]
    same, rec = choosing_labels(y, "clean", {"mode": "random", "rate": 0.8}, 10, 0, np.arange(len(y)))
    assert np.array_equal(same, y) and rec["kind"] == "clean"
    same, rec = choosing_labels(y, "noisy", None, 10, 0, np.arange(len(y)))
    assert np.array_equal(same, y) and rec["kind"] == "given" and rec["condition_holds"] is None


def test_bad_settings_are_one_line() -> None:
    with pytest.raises(UnknownNameError, match="select must be one of noisy, clean, none; got 'nosiy'"):
        check_select("nosiy", 0.5, 0)
    with pytest.raises(InputError, match="select_split must be a fraction in"):
        check_select("noisy", 1.0, 0)
    with pytest.raises(InputError, match="select_seed must be an int >= 0"):
        check_select("noisy", 0.5, -1)


# ----------------------------------------------------------------------------- on a small memorizer
def _batches(x: np.ndarray, y: np.ndarray, index: np.ndarray, size: int = 100) -> list[dict[str, torch.Tensor]]:
    return [{"image": torch.tensor(x[i:i + size]), "label": torch.tensor(y[i:i + size]),
             "index": torch.tensor(index[i:i + size])} for i in range(0, len(y), size)]


def test_choosing_on_training_rows_picks_the_memorized_layer_and_a_noisy_test_part_does_not(memorizer) -> None:
    """The paper's MLP memorized 300 digits at p = 0.8. Its probes are fitted on training rows 0-149. Choosing on the
    other (memorized) training rows against their given labels falls on the layer that reads those labels back —
    the last hidden one, agreeing with the model's own memorized output; choosing on unseen test images with
    labels re-drawn at the same rate does not, and reads more on the clean evaluation images."""
    from _training_helpers import _load_digits

    from masc_probe import ProbeRunner, load_model

    model = load_model(memorizer.run_dir)
    train = memorizer.train
    runner = ProbeRunner(model, probes=("masc",), labels="corrupted", controls=(), progress=False,
                         train_accuracy=False)
    runner.fit([{"image": train.x[i:i + 50], "label": train.label[i:i + 50], "true_label": train.true_label[i:i + 50]}
                for i in range(0, 150, 50)])
    x_held, y_held = train.x[150:].numpy(), train.label[150:].numpy()
    on_train = runner.evaluate(_batches(x_held, y_held, np.arange(150, 300)), select="clean").selection
    picked = next(c for c in on_train["choices"] if c["network"] == "trained")
    assert picked["layer"] == "fc4"  # the layer nearest the output, where the memorized labels live
    with torch.no_grad():
        memorized = model(torch.tensor(x_held)).argmax(1).numpy()
    assert np.mean(memorized == y_held) > 0.95  # the network memorized these rows
    assert picked["choosing_accuracy"] > 0.6  # and the chosen layer reads their memorized labels back

    x, y = _load_digits()
    x_test = ((x[300:] / 16.0 - 0.5) / 0.5).astype(np.float32).reshape(-1, 1, 8, 8)
    y_test = y[300:]
    report = runner.evaluate(_batches(x_test, y_test, np.arange(300, len(y))), select="noisy",
                             corruption={"mode": "random", "rate": 0.8})
    block = report.selection
    chosen = next(c for c in block["choices"] if c["network"] == "trained")
    assert block["labels"]["kind"] == "noisy" and block["labels"]["rate"] == 0.8
    assert chosen["layer"] != "fc4"
    # On the same evaluation images, the training-row choice reads less than the noisy test choice.
    at_train_choice = [r for r in report.profile if r["layer"] == picked["layer"] and r["size"] == picked["size"]
                       and r["control"] is None]
    assert at_train_choice and chosen["evaluation_accuracy"] > at_train_choice[0]["accuracy"]


def test_crossfitting_swaps_the_parts_and_averages_the_differences() -> None:
    # Random predictions on 60 images: the swapped decision is the same rule with the parts' roles exchanged, so
    # its comparisons equal a plain selection whose split puts the old evaluation part first.
    rng = np.random.default_rng(5)
    y = np.arange(60) % 3
    index = np.arange(60)
    table = {(net, layer, "true"): {s: rng.integers(0, 3, 60) for s in (0.9, 0.99, 5)}
             for net, layer in (("trained", "a"), ("trained", "b"), ("init", "a"), ("input", "input"))}
    _, block = select(_profiles(y, table), y, index, rule="clean", split=0.5, seed=1, corruption=None,
                      num_classes=3, crossfit=True)
    cross = block["crossfit"]
    assert len(cross["comparisons"]) == len(block["comparisons"]) == 2
    for first, second, mean in zip(block["comparisons"], cross["comparisons"], cross["mean"], strict=True):
        assert mean["difference"] == pytest.approx((first["difference"] + second["difference"]) / 2)
        assert second["n"] == block["n_choose"] and first["n"] == block["n_eval"]
    # By hand: the swapped trained choice is the best candidate on the evaluation part against its true labels.
    ev = np.isin(index, block["evaluation_index"])
    best = max(((layer, s) for (net, layer, _), by in table.items() if net == "trained" for s in by),
               key=lambda c: (np.mean(table[("trained", c[0], "true")][c[1]][ev] == y[ev]),))
    scores = {c: np.mean(table[("trained", c[0], "true")][c[1]][ev] == y[ev])
              for c in [(layer, s) for (net, layer, _), by in table.items() if net == "trained" for s in by]}
    mine = next(c for c in cross["choices"] if c["network"] == "trained")
    assert scores[(mine["layer"], mine["size"])] == max(scores.values()) == scores[best]


def test_the_cli_passes_the_selection_settings_and_n_components_fixes_the_size(digits_run, tmp_path) -> None:
    import json

    from masc_probe.cli import main

    out = tmp_path / "clean"
    common = ["probe", str(digits_run.output_dir), "--probes", "masc", "--layers", "fc2", "--controls", "none",
              "--quiet"]
    assert main([*common, "--select", "clean", "--select-split", "0.3", "--select-seed", "4", "--select-crossfit",
                 "--output-dir", str(out)]) == 0
    block = json.loads((out / "report.json").read_text())["selection"]
    assert (block["rule"], block["split"], block["seed"], block["labels"]["kind"]) == ("clean", 0.3, 4, "clean")
    assert block["fixed_size"] is None and "crossfit" in block
    n = block["n_choose"] + block["n_eval"]
    assert abs(block["n_choose"] - 0.3 * n) <= 10  # per class, rounded
    out = tmp_path / "fixed"
    assert main([*common, "--n-components", "0.9", "--output-dir", str(out)]) == 0
    block = json.loads((out / "report.json").read_text())["selection"]
    assert block["rule"] == "noisy" and block["fixed_size"] == 0.9
    assert {c["size"] for c in block["choices"]} == {0.9}
    assert main(["probe", str(digits_run.output_dir), "--select-split", "1.5"]) == 2
