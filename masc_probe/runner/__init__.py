"""Runner: :class:`ProbeRunner` composes a model, its named layers, several probes and every label set into one
pass over the data. ``_config`` holds the frozen ``RunnerConfig`` passed down to the parts: ``_plan`` (where each
layer's statistics live), ``_forward`` (one forward pass: layer rows and logits), ``_cache`` (reducers and the
on-disk row cache), ``_fit`` and ``_evaluate`` (the two passes), ``_store`` (fitted probes in memory or spilled),
``_persist`` (a fitted runner on disk), ``_checks`` (what a loaded one passes), ``_pretrained`` (a saved runner
found in a folder or on the Hub, loaded, pushed), ``_distributed`` (the few collectives of a multi-process job) and
``_controls`` (the init and input controls, and control models passed by name, run in the same passes).
"""

from __future__ import annotations

from masc_probe.runner._controls import ControlModel
from masc_probe.runner._runner import ProbeRunner

__all__ = ["ControlModel", "ProbeRunner"]
