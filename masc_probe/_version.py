"""The package version, defined once (importing it loads nothing else)."""

__version__ = "0.1.0"
