"""Pipeline: what each ``masc-probe`` subcommand calls. ``_run`` trains, probes and relabels end to end
(``run_experiment``, ``train_model``, ``probe_source``, ``relabel_run``, ``layer_table``); ``_inputs`` checks and
loads everything before the first file is written; ``_outputs`` writes the report files all or nothing;
``_config`` holds the frozen settings (``DataConfig``, ``RunConfig``, ``ProbeConfig``) the parts pass on;
``relabel`` is the paper's relabeling experiment and ``_issues`` runs label-issue detection
(:mod:`masc_probe.label_issues`) on a run folder for ``masc-probe label-issues``. This is the top of the
package: it composes data, models, training, the runner, reports and the hub; only the CLI imports it.
"""

from __future__ import annotations

from masc_probe.pipeline._config import DataConfig, ProbeConfig, RunConfig
from masc_probe.pipeline._run import (
    RunResult,
    default_run_dir,
    layer_table,
    probe_source,
    relabel_run,
    run_experiment,
    train_model,
)
from masc_probe.pipeline._issues import label_issues_run

__all__ = ["DataConfig", "ProbeConfig", "RunConfig", "RunResult", "default_run_dir",
           "label_issues_run", "layer_table", "probe_source", "relabel_run", "run_experiment",
           "train_model"]
