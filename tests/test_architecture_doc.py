"""docs/architecture.md stays true to the tree, and the public face is what __init__ files say it is.

The layout's tree is read as a tree: a module named under ``probes/`` must be ``masc_probe/probes/<name>``, so a file
moved to another folder (or a folder left out) fails here, not only a file renamed.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "masc_probe"


def _layout_block() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def _layout_paths(block: str) -> tuple[set[str], set[str]]:
    """``(files, folders)`` the layout names, as paths under masc_probe/: two spaces of indent per folder level; a
    line starts with one folder (``name/``) or with one or more module names, then says what they hold."""
    files: set[str] = set()
    folders: set[str] = set()
    stack: list[str] = []  # the folders open above the current line
    for line in block.splitlines()[2:]:  # after the opening "masc_probe/" line
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2 - 1
        first = line.split()[0]
        if re.fullmatch(r"[a-z_]+/", first):
            stack = stack[:depth] + [first[:-1]]
            folders.add("/".join(stack))
            continue
        names = re.match(r"((?:[A-Za-z_]\w*\.py\s+)+)", line.strip() + " ")
        if names is None:  # the second line of a description
            continue
        for name in names.group(1).split():
            files.add("/".join([*stack[:depth], name]))
    return files, folders


def test_the_layout_names_exactly_the_modules_of_the_package() -> None:
    files, folders = _layout_paths(_layout_block())
    on_disk = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py" or p.parent == PACKAGE}
    dirs = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*") if p.is_dir() and "__" not in p.name}
    assert sorted(files ^ on_disk) == [], "named but absent, or present but not named (by path)"
    assert sorted(folders ^ dirs) == []


def test_the_public_names_are_the_lazy_exports_and_typed_alike() -> None:
    """``masc_probe`` loads its exports lazily; each is named once in _EXPORTS, imported under TYPE_CHECKING from
    the same module (so type checkers and IDEs see every one), and resolves to that module's object."""
    import masc_probe

    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    typed = {alias.name: node.module for node in guarded.body if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    assert typed == masc_probe._EXPORTS
    assert set(masc_probe.__all__) == {"__version__", *masc_probe._EXPORTS}
    for name, module in masc_probe._EXPORTS.items():
        assert getattr(masc_probe, name) is getattr(importlib.import_module(module), name), name


def test_every_subpackage_exports_what_it_says() -> None:
    """Each subpackage's ``__all__`` names objects it defines or imports, and its docstring is the subpackage's."""
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        module = importlib.import_module(f"masc_probe.{init.parent.name}")
        assert module.__doc__, f"{init.relative_to(ROOT)} has no docstring"
        missing = [name for name in getattr(module, "__all__", ()) if not hasattr(module, name)]
        assert not missing and module.__all__, (init.relative_to(ROOT), missing)
