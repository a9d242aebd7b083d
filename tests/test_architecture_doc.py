"""docs/architecture.md stays true to the tree: every module it names exists, every module is named in it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "masc_probe"


def _layout_block() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_the_layout_names_exactly_the_modules_of_the_package() -> None:
    block = _layout_block()
    named_files = set(re.findall(r"\b([A-Za-z_][\w]*\.py)\b", block))
    named_dirs = set(re.findall(r"^ +([a-z_]+)/", block, flags=re.M))
    files = {p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"} | {"__init__.py"}
    dirs = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    dirs |= {p.name for p in PACKAGE.glob("*/*") if p.is_dir() and not p.name.startswith("__")}
    assert named_files == files
    assert named_dirs == dirs


def test_every_subpackage_says_what_lives_there() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 25, f"{init.relative_to(ROOT)} needs a paragraph saying what lives there"
