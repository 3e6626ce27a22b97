"""Matplotlib setup for figures; it lives in `cifarkit.plotting` (below data, which also draws),
re-exported here for the analysis modules and older imports."""

from cifarkit.plotting import pyplot, save

__all__ = ["pyplot", "save"]
