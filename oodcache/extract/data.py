"""Benchmark loaders, by the ``loader`` key of a benchmark YAML: split name -> images and labels."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from oodcache.config import BenchmarkConfig
from oodcache.extract import digits


class SplitSource(Protocol):
    """The images of one split, as the extract loop consumes them."""

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        """(N,) class indices, -1 for OOD."""
        ...

    @property
    def pixel_std(self) -> tuple[float, ...]:
        """Per-channel normalisation std (scales ODIN's step)."""
        ...

    def batches(self, batch_size: int, workers: int = 0) -> Iterator[torch.Tensor]:
        """Normalised image batches (B, C, H, W) in split order."""
        ...


Loader = Callable[[BenchmarkConfig, "Path | None"], dict[str, SplitSource]]


def _digits(cfg: BenchmarkConfig, data: Path | None) -> dict[str, SplitSource]:
    sources = {name: spec.source for name, spec in cfg.splits.items()}
    sets: dict[str, SplitSource] = {
        name: s for name, s in digits.build(sources, seed=cfg.seed, options=cfg.options).items()
    }
    return sets


LOADERS: dict[str, Loader] = {"digits": _digits}


def load_splits(cfg: BenchmarkConfig, data: Path | None = None) -> dict[str, SplitSource]:
    if cfg.loader not in LOADERS:
        raise KeyError(
            f"benchmark {cfg.name!r}: unknown loader {cfg.loader!r}; known: {sorted(LOADERS)}"
        )
    sets = LOADERS[cfg.loader](cfg, data)
    for name, s in sets.items():
        if len(s.labels) == 0:
            raise ValueError(f"benchmark {cfg.name!r}: split {name!r} has no samples")
    return sets
