"""Kept so that ``import masc_probe.relabel`` goes on working: the module lives in :mod:`masc_probe.pipeline`."""

from masc_probe.pipeline.relabel import RelabelResult, probe_checkpoints, relabel

__all__ = ["RelabelResult", "probe_checkpoints", "relabel"]
