"""Rewrite the README's demo block from the committed demo report, so the two never drift.

The block between ``<!-- demo:begin -->`` and ``<!-- demo:end -->`` in README.md is rendered from
``model_cards/mlp-digits-p0.8/masc/report.json`` by the report's own view and markdown layout, as ``masc-probe``
prints it after the demo, less the tables of the choice (the headline sentences state it): the facts line, the
sentences the report derives from its comparisons, and the trained network's layer table. ``tests/test_readme.py``
holds README.md to it.

Usage (after regenerating the model card with ``masc-probe push RUN --repo masc-probe/mlp-digits-p0.8 --dry-run
model_cards/mlp-digits-p0.8``)::

    python docs/readme_demo.py            # rewrite the block in README.md
    python docs/readme_demo.py --check    # exit 1, naming the file, when README.md's block differs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REPORT = ROOT / "model_cards" / "mlp-digits-p0.8" / "masc" / "report.json"
BEGIN, END = "<!-- demo:begin -->", "<!-- demo:end -->"


def demo_block(report_path: str | Path = REPORT) -> str:
    """The README's demo block (markers excluded) for the report.json at *report_path*.

    Args:
        report_path: A report.json written by ``masc-probe``.

    Returns:
        Markdown text ending with a newline.

    Raises:
        InputError: The file does not hold a report ``ProbeReport.from_dict`` reads.
    """
    from masc_probe.report import ProbeReport, build_view
    from masc_probe.report._markdown import facts, layer_table, lead

    view = build_view(ProbeReport.from_dict(json.loads(Path(report_path).read_text(encoding="utf-8"))))
    line = facts(view)
    return "\n".join([*([line, ""] if line else []), *lead(view), *layer_table(view)]) + "\n"


def replace_block(text: str, block: str) -> str:
    """*text* with what lies between its one pair of demo markers replaced by *block*.

    Raises:
        InputError: The markers are missing, repeated or out of order.
    """
    from masc_probe.errors import InputError

    counts = (text.count(BEGIN), text.count(END))
    if counts != (1, 1) or text.index(BEGIN) > text.index(END):
        raise InputError(f"expected one {BEGIN} followed by one {END}, got {counts[0]} and {counts[1]}"
                         + (" in the wrong order" if counts == (1, 1) else ""))
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + "\n" + block + END + rest.split(END, 1)[1]


def current_block(text: str) -> str:
    """What lies between the demo markers of *text* (the leading newline after the begin marker dropped)."""
    replace_block(text, "")  # the same marker checks
    return text.split(BEGIN, 1)[1].split(END, 1)[0].removeprefix("\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md differs")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--report", type=Path, default=REPORT)
    ns = parser.parse_args(argv)
    text = ns.readme.read_text(encoding="utf-8")
    new = replace_block(text, demo_block(ns.report))
    if ns.check:
        if new != text:
            print(f"{ns.readme}: the demo block differs from {ns.report}; run python docs/readme_demo.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        from masc_probe import _atomic

        _atomic.write_text(ns.readme, new)
        print(f"wrote {ns.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
