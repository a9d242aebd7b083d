"""``--quiet`` turns progress bars off through the libraries' own switches, never through the process environment.

(tests/test_cli.py holds the commands themselves.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from datasets.utils import are_progress_bars_disabled as datasets_bars_off
from huggingface_hub.utils import are_progress_bars_disabled as hub_bars_off

from masc_probe import cli


def test_quiet_silences_the_libraries_bars_and_leaves_the_environment_alone(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # conftest sets it for the other tests
    seen: dict[str, object] = {}

    def push_run(run_dir: str, repo: str, **kwargs: object) -> str:
        seen.update(env=dict(os.environ), hub=hub_bars_off(), datasets=datasets_bars_off())
        return str(tmp_path / "out")

    monkeypatch.setattr("masc_probe.hub.push_run", push_run)
    before = dict(os.environ)
    assert not hub_bars_off() and not datasets_bars_off()
    assert cli.main(["push", str(tmp_path), "--repo", "me/x", "--dry-run", str(tmp_path / "out"), "--quiet"]) == 0
    assert seen["env"] == before  # nothing written into os.environ (a notebook's next call would inherit it)
    assert seen["hub"] is True and seen["datasets"] is True
    assert dict(os.environ) == before and not hub_bars_off() and not datasets_bars_off()  # restored after

    seen.clear()
    assert cli.main(["push", str(tmp_path), "--repo", "me/x", "--dry-run", str(tmp_path / "out")]) == 0
    assert seen["hub"] is False and seen["datasets"] is False  # without --quiet the bars stay as they were
