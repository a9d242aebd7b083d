"""The CLI's defaults are the library's: a flag left out means the library function's own default.

Each subcommand runs with its library call replaced by a recorder; every keyword the CLI passes must equal the
default of that function's parameter (the CLI may leave a keyword out: then the default applies by itself), and a
flag's help text that names a default names the library's.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest

import masc_probe.pipeline as pipeline
from masc_probe.cli import build_parser, main

# subcommand -> (argv with only the required arguments, the pipeline function it calls)
COMMANDS = {
    "run": (["run"], "run_experiment"),
    "train": (["train"], "train_model"),
    "probe": (["probe", "runs/x"], "probe_source"),
    "relabel": (["relabel", "runs/x"], "relabel_run"),
    "label-issues": (["label-issues", "runs/x"], "label_issues_run"),
}
POSITIONAL = {"source", "run_dir"}
SIGNATURES = {name: inspect.signature(getattr(pipeline, name)).parameters for _, name in COMMANDS.values()}


class _Called(Exception):
    """Raised by the recorder once it has the keywords (the CLI reports it as an unexpected error, exit 1)."""


def _record(monkeypatch: pytest.MonkeyPatch, name: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def recorder(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise _Called(name)

    monkeypatch.setattr(pipeline, name, recorder)
    return seen


def _library_default(name: str, key: str) -> Any:
    parameter = SIGNATURES[name][key]
    assert parameter.default is not inspect.Parameter.empty, f"{name}({key}=…) has no default"
    return parameter.default


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return tuple(a) == tuple(b)
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_cli_default_is_the_library_default(command: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv, name = COMMANDS[command]
    seen = _record(monkeypatch, name)
    assert main(argv) == 1  # the recorder's exception, reported as an unexpected error
    assert "_Called" in capsys.readouterr().err
    library = set(SIGNATURES[name]) - POSITIONAL
    assert set(seen) <= library, f"the CLI passes keywords {name} does not take: {sorted(set(seen) - library)}"
    differ = {key: (value, _library_default(name, key)) for key, value in seen.items()
              if not _same(value, _library_default(name, key))}
    assert not differ, f"`masc-probe {command}` without flags passes {name} (CLI, library): {differ}"


def _help_defaults(command: str) -> dict[str, str]:
    """{dest: what its help text says the default is} for the flags of *command* whose help names one."""
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    found = {}
    for action in sub._actions:
        match = re.search(r"\(default:? ([^;:) ]+)", action.help or "")
        if match and action.option_strings:
            found[action.dest] = match.group(1).strip()
    return found


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_texts_name_the_library_defaults(command: str) -> None:
    _, name = COMMANDS[command]
    parameters = SIGNATURES[name]
    said = {dest: text for dest, text in _help_defaults(command).items()
            if dest in parameters and parameters[dest].default is not None}
    assert said, f"no help text of `masc-probe {command}` names a default: the pattern no longer matches"
    wrong = {dest: (text, _shown(parameters[dest].default)) for dest, text in said.items()
             if not text.startswith(_shown(parameters[dest].default))}
    assert not wrong, f"`masc-probe {command} --help` names other defaults than {name} (help, library): {wrong}"
