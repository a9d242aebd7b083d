"""Kept so that ``import masc_probe.editing`` goes on working: the module lives in :mod:`masc_probe.pipeline`."""

from masc_probe.pipeline.editing import edit_with_velpic, final_linear

__all__ = ["edit_with_velpic", "final_linear"]
