"""oodcache: run a classifier once, cache what post-hoc OOD detectors need, tune them from the cache."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
#: the library API (oodcache/api.py, docs/api.md), imported on first use: `import oodcache` stays
#: light for the command line
__all__ = ["Detector", "Inputs", "Prepared", "create", "methods", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Detector", "Inputs", "Prepared", "create", "methods"):
        from oodcache import api

        return getattr(api, name)
    raise AttributeError(f"module 'oodcache' has no attribute {name!r}")
