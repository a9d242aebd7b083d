"""Kept so that ``import masc_probe.corruption`` goes on working: the module lives in :mod:`masc_probe.data`."""

from masc_probe.data.corruption import CIFAR10_ASYMMETRIC, MODES, corrupt_labels, corruption_summary

__all__ = ["CIFAR10_ASYMMETRIC", "MODES", "corrupt_labels", "corruption_summary"]
