"""KNN: negative squared distance to the K-th nearest ID-train feature, all L2-normalised.

z = h/(‖h‖₂ + 1e-10) for the bank and the query alike; score(x) = −‖z(x) − z_(K)‖², z_(K) the K-th
nearest neighbour of z(x) in the normalised ID-train bank (exact search; the K-th distance, not a
mean; squared and plain distance rank identically). Higher = more ID.
Paper: Sun, Ming, Zhu & Li, ICML 2022, arXiv:2204.06507.
Official code: github.com/deeplearning-wisc/knn-ood
Reads: features. Statistics: the bank is the ID-train split (the ``fit`` split when the cache has
no ``train`` split). The bank must be disjoint from every scored set: scores of the split the bank
came from (and of a ``fit`` split drawn from the same training images) include self-matches at
distance 0 and are optimistic; scoring a split with role ``train`` or ``fit`` logs a warning.
Defaults: k = 50 (OpenOOD v1.5, official CIFAR), trial 0; ``official`` gives k = 1000 (official
ImageNet-1K ResNet-50). Both are capped at the fit-split size. Space: integer k log-uniform in
[1, min(2000, fit-split size)] (the fit size stands for the bank size, which ``CacheInfo`` lacks);
grid {50, 100, 200, 500, 1000} (OpenOOD v1.5) up to that size.
Deviations: none. Queries are processed in chunks so that no (queries × bank) block exceeds
``CHUNK_BYTES``; distances use ‖a‖² + ‖b‖² − 2a·b in float32 on exactly normalised vectors. The
search splits' 2,000 nearest distances are computed once and kept (memo), so a trial is a lookup.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import optuna

from oodcache.cache import Split
from oodcache.search.base import CacheInfo, Scorer, Stats
from oodcache.search.ops import (
    FloatArray,
    as_score,
    l2_normalize,
    memo,
    readonly,
    row_chunks,
)
from oodcache.search.settings import Setting

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 2**20  #: budget of one (queries × bank) distance block


#: nearest distances kept per query row, so that every k up to this (the space's upper bound)
#: reads a memoised sorted table instead of searching the bank again
NEAREST_KEPT = 2000


def normalized_bank(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z (N, D) float32, ‖z‖² (N,) float32) of the bank, memoised per read-only array."""

    def compute() -> tuple[np.ndarray, np.ndarray]:
        z = np.empty(features.shape, np.float32)
        for rows in row_chunks(len(features), 8 * features.shape[1], 2**26):
            z[rows] = l2_normalize(features[rows])
        return readonly(z), readonly(np.einsum("ij,ij->i", z, z))

    return memo("knn_bank", (features,), compute)


def nearest_sq_distances(
    queries: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray, k: int
) -> np.ndarray:
    """(N, k) squared L2 distances, ascending, from each L2-normalised query row to its k nearest
    rows of the normalised bank, exact; no (queries × bank) block exceeds ``CHUNK_BYTES``."""
    out = np.empty((len(queries), k), np.float32)
    for rows in row_chunks(len(queries), 4 * len(bank), CHUNK_BYTES):
        z = l2_normalize(queries[rows]).astype(np.float32)
        block = z @ bank.T
        block *= -2.0
        block += bank_sq[None, :]
        if k < block.shape[1]:
            block.partition(k - 1, axis=1)
        near = np.sort(block[:, :k], axis=1)
        near += np.einsum("ij,ij->i", z, z)[:, None]
        out[rows] = np.maximum(near, 0.0)
    return out


def kth_sq_distance(
    queries: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray, k: int
) -> np.ndarray:
    """Squared distance (N,) to the k-th nearest bank row. For a read-only query array (a cached
    split) and k <= ``NEAREST_KEPT``, the ``NEAREST_KEPT`` nearest distances are computed once
    and memoised: a search trial then costs a column read whatever k it tries."""
    kept = min(NEAREST_KEPT, len(bank))
    if k > kept or queries.flags.writeable:
        return nearest_sq_distances(queries, bank, bank_sq, k)[:, k - 1]
    table = memo(
        "knn_nearest",
        (queries, bank),
        lambda: readonly(nearest_sq_distances(queries, bank, bank_sq, kept)),
    )
    return table[:, k - 1]


@dataclass
class KNN(Scorer):
    key = "knn"
    requires = ("features",)
    statistics = ("train",)
    k: int = 50

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        imagenet = info.setting == Setting.IMAGENET1K_RESNET50
        return cls(k=min(1000 if imagenet else 50, info.fit_size))

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        return {"k": trial.suggest_int("k", 1, max(1, min(2000, info.fit_size)), log=True)}

    @classmethod
    def grid(cls, info: CacheInfo) -> dict[str, list[Any]] | None:
        ks = [k for k in (50, 100, 200, 500, 1000) if k <= info.fit_size]  # OpenOOD v1.5
        return {"k": ks} if ks else None

    def fit(self, stats: Stats) -> Self:
        train = stats.train
        if not 1 <= self.k <= train.n:
            raise ValueError(
                f"KNN needs 1 <= k <= the bank size {train.n} (split {train.name!r}), got "
                f"k = {self.k}; choose a smaller k"
            )
        self.bank_, self.bank_sq_ = normalized_bank(train.features)
        self.bank_split_ = train.name
        log.debug("knn bank_ = %s (%d x %d), k = %d", train.name, *self.bank_.shape, self.k)
        return self

    def score(self, split: Split) -> FloatArray:
        if split.role in ("train", "fit") or split.name == self.bank_split_:
            log.warning(
                "knn: split %r (role %s) overlaps the ID-train bank %r; its scores include "
                "self-matches and are optimistic",
                split.name,
                split.role,
                self.bank_split_,
            )
        return as_score(-kth_sq_distance(split.features, self.bank_, self.bank_sq_, self.k))
