"""The ``masc-probe`` command line behind :mod:`masc_probe.cli` (the console entry point): ``_parser`` defines the
flags, ``_values`` parses their values, ``_commands`` turns them into one library call per subcommand and
``_summary`` prints what came back. Nothing here is public API; it imports no torch, so ``--help`` stays light.
"""

from __future__ import annotations

from masc_probe._cli._commands import COMMANDS
from masc_probe._cli._parser import UsageError, build_parser, normalize_argv

__all__ = ["COMMANDS", "UsageError", "build_parser", "normalize_argv"]
