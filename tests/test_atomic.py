"""The package's one atomic-write rule (masc_probe._atomic): whole files only, with the mode the umask gives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from masc_probe import _atomic
from masc_probe.report import ProbeReport


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_files_land_with_the_mode_a_plain_open_gives(tmp_path: Path, umask: int) -> None:
    report = ProbeReport([{"layer": "fc1", "probe": "masc", "labels": "true", "test_accuracy": 0.5}], n_test=10)
    before = os.umask(umask)
    try:
        with open(tmp_path / "reference.txt", "w") as fh:  # the independent reference: what open() creates
            fh.write("x")
        report.plot(tmp_path / "plot.png")
        written = [
            _atomic.write_text(tmp_path / "a.txt", "text"),
            # safetensors creates its own file: the rule must hold for writers that pick their own mode
            _atomic.write_with(tmp_path / "b.safetensors", lambda p: save_file({"t": torch.zeros(2)}, str(p))),
            tmp_path / "plot.png",
        ]
        report.to_json(tmp_path / "report.json")
        written.append(tmp_path / "report.json")
    finally:
        os.umask(before)
    want = stat.S_IMODE((tmp_path / "reference.txt").stat().st_mode)
    assert want == 0o666 & ~umask
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: want for p in written}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["reference.txt", *(p.name for p in written)])


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = _atomic.write_text(tmp_path / "report.md", "old")

    def broken(path: Path) -> None:
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _atomic.write_with(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
