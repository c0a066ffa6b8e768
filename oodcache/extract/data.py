"""Benchmark loaders, by the ``loader`` key of a benchmark YAML: split name -> images, labels."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from oodcache.config import BenchmarkConfig
from oodcache.extract import digits
from oodcache.extract.imagelists import load_imagelists
from oodcache.extract.transforms import Preprocess


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

    def batches(
        self,
        batch_size: int,
        workers: int = 0,
        *,
        start: int = 0,
        stop: int | None = None,
        pin: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Normalised image batches (B, C, H, W) of rows ``start:stop`` (default: all), in split
        order; in pinned memory with ``pin`` where the source decodes images."""
        ...

    def identity(self, start: int, stop: int) -> str:
        """A hash that changes when the images of rows ``start:stop`` change (a finished shard is
        resumed only when it matches)."""
        ...


Loader = Callable[..., dict[str, SplitSource]]


def _digits(cfg: BenchmarkConfig, data: Path | None, **_: object) -> dict[str, SplitSource]:
    sources = {name: spec.source for name, spec in cfg.splits.items()}
    sets: dict[str, SplitSource] = {
        name: s for name, s in digits.build(sources, seed=cfg.seed, options=cfg.options).items()
    }
    return sets


def _imagelist(
    cfg: BenchmarkConfig,
    data: Path | None,
    *,
    preprocess: Preprocess | None = None,
    splits_dir: Path | None = None,
    skip_bad: bool | None = None,
    workers: int = 0,
) -> dict[str, SplitSource]:
    if preprocess is None:
        raise ValueError(f"benchmark {cfg.name!r}: image splits need the arch's preprocessing")
    return dict(
        load_imagelists(
            cfg,
            data,
            preprocess=preprocess,
            splits_dir=splits_dir,
            skip_bad=skip_bad,
            workers=workers,
        )
    )


LOADERS: dict[str, Loader] = {"digits": _digits, "imagelist": _imagelist}
#: Loaders that decode image files (they take the arch's preprocessing and a data root).
IMAGE_LOADERS = frozenset({"imagelist"})


def load_splits(
    cfg: BenchmarkConfig,
    data: Path | None = None,
    *,
    preprocess: Preprocess | None = None,
    splits_dir: Path | None = None,
    skip_bad: bool | None = None,
    workers: int = 0,
) -> dict[str, SplitSource]:
    """Every split of ``cfg``, in config order. Image loaders need ``preprocess`` (the arch's
    transforms) and ``data`` (the data root); they write generated subset lists to ``splits_dir``
    and skip bad images when ``skip_bad`` (default: the benchmark's ``options.skip_bad``)."""
    if cfg.loader not in LOADERS:
        raise KeyError(
            f"benchmark {cfg.name!r}: unknown loader {cfg.loader!r}; known: {sorted(LOADERS)}"
        )
    sets = LOADERS[cfg.loader](
        cfg,
        data,
        preprocess=preprocess,
        splits_dir=splits_dir,
        skip_bad=skip_bad,
        workers=workers,
    )
    for name, s in sets.items():
        if len(s.labels) == 0:
            raise ValueError(f"benchmark {cfg.name!r}: split {name!r} has no samples")
    return sets
