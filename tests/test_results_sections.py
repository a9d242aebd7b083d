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
