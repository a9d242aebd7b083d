"""The ``>>>`` examples in the package's docstrings run, as written, against the code they document.

Every module is imported and its doctests collected (scikit-learn and PyTorch run theirs the same way); an example
that needs the network, a GPU or a run folder is written as a plain code block instead, so that every ``>>>`` here
is one that runs.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import masc_probe

MODULES = sorted(m.name for m in pkgutil.walk_packages(masc_probe.__path__, "masc_probe."))


def _examples(name: str) -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(importlib.import_module(name)) if t.examples]


@pytest.mark.parametrize("name", [m for m in MODULES if _examples(m)])  # doctest's own SKIP: see the last test
def test_docstring_examples_run(name: str) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _examples(name):
        runner.run(test, clear_globs=True)
    failed, attempted = runner.summarize(verbose=False)
    assert attempted and not failed, f"{failed} of {attempted} examples of {name} failed (run with -s to see them)"


def test_no_example_is_written_as_a_doctest_that_never_runs() -> None:
    skipped = [f"{t.name}:{ex.lineno}" for name in MODULES for t in _examples(name) for ex in t.examples
               if ex.options.get(doctest.SKIP)]
    assert not skipped, f"examples marked +SKIP are doctests that never run; write them as code blocks: {skipped}"
