"""Benchmark loaders, by the ``loader`` key of a benchmark YAML: split name -> images and labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from oodcache.config import BenchmarkConfig
from oodcache.extract import digits
from oodcache.extract.digits import ImageSet

Loader = Callable[[BenchmarkConfig, "Path | None"], dict[str, ImageSet]]


def _digits(cfg: BenchmarkConfig, data: Path | None) -> dict[str, ImageSet]:
    sources = {name: spec.source for name, spec in cfg.splits.items()}
    return digits.build(sources, seed=cfg.seed, options=cfg.options)


LOADERS: dict[str, Loader] = {"digits": _digits}


def load_splits(cfg: BenchmarkConfig, data: Path | None = None) -> dict[str, ImageSet]:
    if cfg.loader not in LOADERS:
        raise KeyError(
            f"benchmark {cfg.name!r}: unknown loader {cfg.loader!r}; known: {sorted(LOADERS)}"
        )
    sets = LOADERS[cfg.loader](cfg, data)
    for name, s in sets.items():
        if len(s.labels) == 0:
            raise ValueError(f"benchmark {cfg.name!r}: split {name!r} has no samples")
    return sets
