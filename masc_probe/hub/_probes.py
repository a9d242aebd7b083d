"""The fitted probes of a run folder, as a push with ``with_probes`` publishes them under ``masc/probes/``.

A run folder holds its fitted probes in ``probes/`` (``runner.json`` + safetensors, written by ``masc-probe run`` or
``probe`` with ``--save-probes``). They are published only when they belong to the run's ``report.json``: the same
(layer, probe, label set) results, the same data fingerprint and the same training accuracies to the last bit — so
that a user who pulls them with ``ProbeRunner.from_pretrained`` gets the report's numbers back.
"""

from __future__ import annotations

from pathlib import Path

from masc_probe.errors import InputError
from masc_probe.report import ProbeReport
from masc_probe.runner._persist import read_settings
from masc_probe.runner._pretrained import HUB_FOLDER, runner_files

PROBES_DIR = HUB_FOLDER
PROBES_WHAT = ("the fitted probes (`runner.json` + one safetensors file per probe): "
               "`ProbeRunner.from_pretrained(repo_id, model=...)` scores new data with them, no refitting")
RUN_PROBES = "probes"  # the run folder's sub-folder


def probe_files(run: Path, report: ProbeReport) -> dict[str, Path]:
    """``{path in repo: local file}`` of the fitted probes in *run*/probes, checked against *report*.

    Raises:
        InputError: If the run folder holds no fitted probes, or probes fitted for another report.
    """
    folder = run / RUN_PROBES
    if not (folder / "runner.json").is_file():
        raise InputError(f"pushing with the probes needs {folder}/runner.json, got a run folder without fitted "
                         "probes; probe it with `masc-probe probe RUN --save-probes` first")
    saved = read_settings(folder)
    fitted = {(e["layer"], e["probe"], e["labels"]) for e in saved["estimators"]}
    trained = [r for r in report.results if r.get("control") is None]  # a control model's probes are not saved
    reported = {(r["layer"], r["probe"], r["labels"]) for r in trained}
    stale = f"; the probes in {folder} were fitted for another report (probe the run again with --save-probes)"
    if fitted != reported:
        diff = sorted(fitted ^ reported)[:3]
        raise InputError(f"the fitted probes must be the report's results, got {len(fitted)} probes for "
                         f"{len(reported)} results (e.g. {diff} in only one){stale}")
    fingerprint = (report.provenance or {}).get("data_fingerprint")
    if fingerprint != saved.get("data_fingerprint"):
        raise InputError(f"the fitted probes must come from the report's data {fingerprint!r}, got "
                         f"{saved.get('data_fingerprint')!r}{stale}")
    scores = {(t["layer"], t["probe"], t["labels"]): t["scores"] for t in saved["train_accuracy"]}
    for r in trained:
        key = (r["layer"], r["probe"], r["labels"])
        if r.get("train_accuracy") is not None and scores.get(key) != r["train_accuracy"]:
            raise InputError(f"the fitted probe {key} must have the report's training accuracy "
                             f"{r['train_accuracy']}, got {scores.get(key)}{stale}")
    return runner_files(folder, PROBES_DIR)
