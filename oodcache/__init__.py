"""oodcache: run a classifier once, cache what post-hoc OOD detectors need, tune them from the cache."""

from __future__ import annotations

__version__ = "0.1.0"
