"""README.md against what it documents: the demo block against the committed demo report (through docs/readme_demo.py
and, independently, against report.json's own numbers), every CLI subcommand and flag, the files it points to."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from masc_probe.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CARD = ROOT / "model_cards" / "mlp-digits-p0.8"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_readme_demo", ROOT / "docs" / "readme_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    return _script()


@pytest.fixture(scope="module")
def block(demo: ModuleType) -> str:
    return demo.current_block(README.read_text(encoding="utf-8"))


def test_demo_block_is_generated_from_the_committed_report(demo: ModuleType, block: str) -> None:
    assert block == demo.demo_block(CARD / "masc" / "report.json"), "run: python docs/readme_demo.py"
    assert demo.main(["--check"]) == 0


def _table(block: str) -> dict[str, dict[str, str]]:
    """The layer table of *block* as {layer: {column: cell}}."""
    lines = [line for line in block.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = dict(zip(head[1:], cells[1:]))
    return rows


def test_demo_block_holds_the_reports_numbers(block: str) -> None:
    # Read report.json directly (not through the report view): each trained-network accuracy rounded to three
    # places, and the star on a hidden layer holding the column's highest accuracy.
    report = json.loads((CARD / "masc" / "report.json").read_text())
    assert f"**Model's own test accuracy: {report['model_test_accuracy']:.3f}**" in block
    table = _table(block)
    trained = [r for r in report["results"] if r.get("control") is None]
    assert {r["layer"] for r in trained} == set(table)
    for r in trained:
        cell = table[r["layer"]][f"{r['probe']} ({r['labels']})"]
        assert cell.strip("*★ ") == f"{r['test_accuracy']:.3f}", (r["layer"], r["probe"], r["labels"])
    for column in {f"{r['probe']} ({r['labels']})" for r in trained}:
        hidden = {r["layer"]: r["test_accuracy"] for r in trained
                  if f"{r['probe']} ({r['labels']})" == column and r["layer"] != "input"}
        starred = [layer for layer in table if table[layer][column].endswith("★")]
        assert len(starred) == 1 and hidden[starred[0]] == max(hidden.values()), column


def test_replace_block_rewrites_only_between_the_markers(demo: ModuleType) -> None:
    text = f"intro\n{demo.BEGIN}\nold\nlines\n{demo.END}\noutro\n"
    assert demo.replace_block(text, "new\n") == f"intro\n{demo.BEGIN}\nnew\n{demo.END}\noutro\n"
    assert demo.current_block(f"a\n{demo.BEGIN}\nx\n{demo.END}\n") == "x\n"


@pytest.mark.parametrize("text, message", [
    ("no markers at all\n", "got 0 and 0"),
    ("<!-- demo:end -->\n<!-- demo:begin -->\n", "in the wrong order"),
    ("<!-- demo:begin -->\n<!-- demo:begin -->\n<!-- demo:end -->\n", "got 2 and 1"),
])
def test_replace_block_refuses_bad_markers(demo: ModuleType, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        demo.replace_block(text, "x\n")


def test_check_fails_on_a_readme_that_drifted(demo: ModuleType, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n{demo.BEGIN}\nstale\n{demo.END}\n")
    assert demo.main(["--check", "--readme", str(readme)]) == 1
    assert demo.main(["--readme", str(readme)]) == 0
    assert demo.main(["--check", "--readme", str(readme)]) == 0
    assert "stale" not in readme.read_text()


def _options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """{subcommand: its long option strings}, '' for the top level (argparse's parsed actions, not its help text)."""
    out = {"": {s for a in parser._actions for s in a.option_strings if s.startswith("--")}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = {s for a in sub._actions for s in a.option_strings if s.startswith("--")}
    return out


def test_readme_names_every_subcommand_and_flag() -> None:
    from masc_probe.cli import build_parser

    text = README.read_text(encoding="utf-8")
    options = _options(build_parser())
    assert set(options) - {""} >= {"run", "train", "probe", "layers", "relabel", "label-issues", "push", "report"}
    missing_commands = [name for name in options if name and f"masc-probe {name}" not in text]
    flags = {flag for found in options.values() for flag in found} - {"--help"}
    missing_flags = sorted(flag for flag in flags if not re.search(re.escape(flag) + r"(?![\w-])", text))
    assert not missing_commands and not missing_flags, (missing_commands, missing_flags)


def test_readme_links_point_at_files_and_the_card_holds_no_weights() -> None:
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)\)", text):
        assert (ROOT / target).exists(), target
    kept = {p.relative_to(CARD).as_posix() for p in CARD.rglob("*") if p.is_file()}
    assert not {p for p in kept if p.endswith((".safetensors", ".bin", ".pt", ".pth", ".pkl"))
                or p.startswith(("checkpoints/", "resume/"))}, kept
    assert {"README.md", "config.json", "metrics.jsonl", "masc/report.json"} <= kept
