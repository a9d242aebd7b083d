"""``masc-probe``: flags in, one library call out; :func:`main` is the console script.

The flags are defined in :mod:`masc_probe._cli._parser` (``masc-probe --help`` says what runs by default), each
subcommand's one library call in :mod:`masc_probe._cli._commands`, what it prints in :mod:`masc_probe._cli._summary`.
Here: the console (our progress lines to stdout; warnings and the error alone to stderr) and the exit code.

Every error ends the program with one line on stderr (``MASC_PROBE_DEBUG=1`` adds the traceback) and an exit code:
2 for a usage error (a bad flag, value or name), 1 for anything else (the Hub, I/O, the model itself); nothing is
left half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from masc_probe._cli import COMMANDS, UsageError, build_parser, normalize_argv

__all__ = ["build_parser", "main"]

_EXIT_USAGE = 2  # a bad flag, value or name: the user can fix the command
_EXIT_FAILURE = 1  # anything else: the Hub, the disk, the model's own forward, a bug


def _dispatch(ns: argparse.Namespace) -> int:
    return int(COMMANDS[ns.command](ns) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``masc-probe`` console script; returns the exit code."""
    parser = build_parser()
    try:
        ns = parser.parse_args(normalize_argv(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        _fail(str(exc))
        return _EXIT_USAGE
    with _console(quiet=bool(getattr(ns, "quiet", False)), verbose=bool(getattr(ns, "verbose", False))):
        return _run_guarded(ns)


_CHATTY = ("huggingface_hub", "datasets")  # retry notices and cache chatter; their failures reach us as exceptions


@contextlib.contextmanager
def _console(*, quiet: bool, verbose: bool = False) -> Iterator[None]:
    """Route messages for one command: our progress lines to stdout, warnings and the error alone to stderr.

    Keeping stderr for problems makes a failure exactly one line there. The handlers are bound to this call's
    streams and removed afterwards, so in-process calls (tests, notebooks) never write to a stale stream.
    """
    ours = logging.getLogger("masc_probe")
    fmt = logging.Formatter("%(message)s")
    out, err = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(fmt)
        ours.addHandler(handler)
    saved = {name: logging.getLogger(name).level for name in ("masc_probe", *_CHATTY)}
    propagate = ours.propagate
    ours.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    ours.propagate = False
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with _library_bars_off() if quiet else contextlib.nullcontext():
            yield
    finally:
        for handler in (out, err):
            ours.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        ours.propagate = propagate


@contextlib.contextmanager
def _library_bars_off() -> Iterator[None]:
    """--quiet: huggingface_hub's and datasets' progress bars off through their own switches, restored afterwards
    (the process environment is left alone; our own bars are off through progress=False)."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from huggingface_hub.utils import disable_progress_bars as hub_bars_off

    were_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        with hub_bars_off():
            yield
    finally:
        if not were_off:
            enable_progress_bars()


def _run_guarded(ns: Any) -> int:
    from masc_probe.errors import InputError, MascProbeError

    try:
        return _dispatch(ns)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume training from the last finished epoch")
        return 130
    except Exception as exc:  # one line; with MASC_PROBE_DEBUG=1 the traceback (and its causes) before it
        debug = os.environ.get("MASC_PROBE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
        if debug:
            import traceback

            traceback.print_exc(file=sys.stderr)
        if isinstance(exc, MascProbeError):
            _fail(str(exc))
        else:  # an unexpected failure: its type too
            _fail(f"{type(exc).__name__}: {_first_line(str(exc))}"
                  + ("" if debug else " (set MASC_PROBE_DEBUG=1 for the traceback)"))
        return _EXIT_USAGE if isinstance(exc, InputError) else _EXIT_FAILURE


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _fail(message: str) -> None:
    print(f"masc-probe: error: {_first_line(message)}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
