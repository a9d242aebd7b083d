"""The generated sections of benchmarks/RESULTS.md are what their generators make of the committed results files:
a number edited by hand in the markdown, or a results file changed without regenerating, fails here."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TEXT = (BENCH / "RESULTS.md").read_text()


@pytest.fixture(autouse=True)
def _bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))


def _between(begin: str, end: str) -> str:
    assert TEXT.count(begin) == 1, f"RESULTS.md should hold {begin!r} once"
    return begin + TEXT.split(begin, 1)[1].split(end, 1)[0] + end


def test_memorization_section_is_generated() -> None:
    mem = importlib.import_module("memorization")
    assert _between(mem.BEGIN, mem.END) == mem.build_section()


def test_selection_section_is_generated() -> None:
    sel = importlib.import_module("selection")
    table = json.loads(sel.RESULTS.read_text())
    assert _between(sel.BEGIN, sel.END) == sel.markdown(table)


def test_memorization_section_quotes_its_results_file() -> None:
    """An independent read of one number: seed 0's memorizer at 60,000 images, MASC on the corrupted labels, as
    paper_table.json holds it, appears in the six-probe table of the section."""
    cell = json.loads((BENCH / "results" / "paper_table.json").read_text())["cells"]
    run = cell["mlp-mnist/p0.8/n60000/clean/fast"]["runs"]["0"]
    entry = run["probes"]["masc/corrupted"]["without_input"]
    mem = importlib.import_module("memorization")
    section = _between(mem.BEGIN, mem.END)
    row = next(line for line in section.splitlines() if line.startswith("| 0 | ") and "memorizer" in line)
    assert f"{entry['accuracy']:.3f} {entry['layer']}" in row


def _synthetic_run(rate: float, base: float) -> dict:
    """A paper_table.json run of the headline recipe at *rate*: probe p reads base + i/100 after training and
    base − i/1000 at init (layer fc2 / fc4), so every memorizer − init difference is known by construction."""
    probes = ("masc", "ncm", "lda", "qda", "knn", "linear")
    trained = {f"{p}/{lab}": {"without_input": {"layer": "fc2", "accuracy": base + i / 100}}
               for i, p in enumerate(probes) for lab in ("corrupted", "true")}
    init = {f"{p}/{lab}": {"without_input": {"layer": "fc4", "accuracy": base - i / 1000}}
            for i, p in enumerate(probes) for lab in ("corrupted", "true")}
    return {"seed": 0, "rate": rate, "epochs": 90, "memorized": True, "model_test_accuracy": 0.5, "probes": trained,
            "controls": {"random_init": {"model_test_accuracy": 0.1, "probes": init},
                         "raw_input": {f"{p}/corrupted": 0.7 for p in probes}}}


def test_rate_runs_table_and_gaps_follow_the_table() -> None:
    mem = importlib.import_module("memorization")
    table = {"cells": {f"mlp-mnist/p{r:g}/n60000/clean/fast": {"runs": {"0": _synthetic_run(r, 0.6 + r / 10)}}
                       for r in (0.4, 0.2)}}
    runs = mem.rate_runs(table)
    assert [r["rate"] for r in runs] == [0.2, 0.4]  # by rate, whatever the table's order
    rows = mem.six_probe_table(runs, column="rate")
    assert rows[0].startswith("| p | epochs |")
    first = next(line for line in rows if line.startswith("| 0.2 | 90 |"))
    assert "0.620 fc2" in first and "0.670 fc2" in first  # masc (i = 0) and linear (i = 5) at base 0.62
    gaps = mem.rate_gap_table(runs)
    # masc: 0 - 0 = 0; linear: 5/100 + 5/1000 = +0.055
    assert "| 0.4 | 0 | corrupted | +0.000 | +0.011 | +0.022 | +0.033 | +0.044 | +0.055 |" in gaps
    line = next(s for s in mem.conclusion([], [], runs) if "The same protocol at" in s)
    assert "p = 0.2, 0.4" in line and "memorized at epochs 90, 90" in line and "+0.000, +0.000" in line
    # A rate trained only with bf16 autocast is read from its own cell and marked so wherever it is named.
    bf16 = _synthetic_run(0.6, 0.7) | {"training": {"mixed_precision": "bf16"}}
    table["cells"]["mlp-mnist/p0.6/n60000/clean/fast-bf16"] = {"runs": {"0": bf16}}
    runs = mem.rate_runs(table)
    assert [r["rate"] for r in runs] == [0.2, 0.4, 0.6]
    assert any(row.startswith("| 0.6 (bf16) | 90 |") for row in mem.six_probe_table(runs, column="rate"))
    line = next(s for s in mem.conclusion([], [], runs) if "The same protocol at" in s)
    assert "p = 0.2, 0.4, 0.6 (bf16)" in line


def test_controls_rate_table_falls_back_to_the_tables_trained_run() -> None:
    mc = importlib.import_module("memorization_controls")
    table = {"cells": {"mlp-mnist/p0.4/n60000/clean/fast": {"runs": {"0": _synthetic_run(0.4, 0.8)}}}}
    assert mc._table_trained(table, 0.4, "corrupted") == (0.5, (0.8, "fc2"))
    assert mc._table_trained(table, 0.6, "corrupted") == (None, None)


def _selection_entry(acc: float, precision: str | None = None) -> dict:
    pick = {"accuracy": acc, "layer": "fc2", "size": 0.7}
    series = {"trained": {"noisy": pick, "rule_0.99": pick}, "init": {"noisy": pick, "rule_0.99": pick},
              "input": {"noisy": pick, "rule_0.99": pick},
              "differences": {"noisy/init": {"difference": 0.0, "ci": [-0.01, 0.01], "verdict": "no difference"}}}
    entry = {"row": "mlp-mnist", "rate": 0.8, "n_train": 15000, "seed": 0, "epochs": 79, "model_test_accuracy": 0.3,
             "series": {"corrupted": series}}
    return {**entry, "mixed_precision": precision} if precision else entry


def test_bf16_runs_sit_beside_their_fp32_twin_and_count_nowhere_else() -> None:
    mem, sel = importlib.import_module("memorization"), importlib.import_module("selection")
    table = {"a-s0": _selection_entry(0.8), "a-s0-bf16": _selection_entry(0.7, "bf16"), "b-s1": _selection_entry(0.6),
             "c-s0-bf16": _selection_entry(0.5, "bf16")}
    # the twin sits beside a-s0 only; c-s0-bf16 has no fp32 twin and counts as a memorizer of its own
    assert list(sel.counted_entries(table)) == ["a-s0", "b-s1", "c-s0-bf16"]
    assert [k for k, _ in mem.mnist_selection(table)] == ["a-s0", "b-s1", "c-s0-bf16"]
    assert "| mlp-mnist p=0.8 (bf16) | 15,000 | 0 | trained |" in sel.markdown(table)
    (pair,) = mem.precision_pairs(table)
    assert (pair[0][0], pair[1][0]) == ("a-s0", "a-s0-bf16")
    rows = mem.precision_table([pair])
    assert "| a-s0 | fp32 |" in rows[2] and "0.800 fc2 t = 0.7" in rows[2]
    assert "| a-s0 | bf16 |" in rows[3] and "0.700 fc2 t = 0.7" in rows[3]
    assert "a-s0-bf16" not in sel.markdown(table)  # the selection section counts fp32 memorizers only


def test_a_cap_past_the_authors_is_named_and_theirs_is_not() -> None:
    """A run trained past the paper preset's epoch cap (the authors' own rule) says so wherever it is described;
    one within it says nothing."""
    mem = importlib.import_module("memorization")
    from masc_probe.training import preset_config

    paper = preset_config("mlp", "mnist", preset="paper").max_epochs
    assert mem._cap_note({"max_epochs": paper}) == "" and mem._cap_note({}) == ""
    note = mem._cap_note({"max_epochs": paper + 200})
    assert f"the authors' cap being {paper}" in note and f"`--max-epochs {paper + 200}`" in note
