"""Pipeline: what each ``masc-probe`` subcommand calls. ``_run`` trains and probes end to end (``run_experiment``),
``_train`` trains (``train_model``), ``_probe`` probes a trained model (``probe_source``), ``_relabel_run`` relabels
a run (``relabel_run``) and ``_layers`` lists a model's layers (``layer_table``); ``_inputs`` checks and loads
everything before the first file is written; ``_outputs`` writes the report files all or nothing; ``_config`` holds
the training settings (``DataConfig``, ``RunConfig``; probing's are the runner's own ``RunnerConfig``);
``relabel`` is the paper's relabeling experiment and ``_issues`` runs label-issue detection
(:mod:`masc_probe.label_issues`) on a run folder for ``masc-probe label-issues``. This is the top of the
package: it composes data, models, training, the runner, reports and the hub; only the CLI imports it.
"""

from __future__ import annotations

from masc_probe.pipeline._config import DataConfig, RunConfig
from masc_probe.pipeline._inputs import default_run_dir
from masc_probe.pipeline._layers import layer_table
from masc_probe.pipeline._outputs import RunResult
from masc_probe.pipeline._probe import probe_source
from masc_probe.pipeline._relabel_run import relabel_run
from masc_probe.pipeline._run import run_experiment
from masc_probe.pipeline._train import train_model
from masc_probe.pipeline._issues import label_issues_run

__all__ = ["DataConfig", "RunConfig", "RunResult", "default_run_dir",
           "label_issues_run", "layer_table", "probe_source", "relabel_run", "run_experiment",
           "train_model"]
