"""DICE: sparsify the last layer's weights by their mean contribution, then score by energy.

score(x) = logsumexp((W ⊙ M)·h + b), h = cached penultimate features, (W, b) = cached head,
M = 1[V > perc_p(V)] with V[k, j] = μ_j·W[k, j] (**signed**; one percentile over all K·D entries,
linear interpolation, strict >) and μ = the mean of h over ID train. Higher = more ID. p is the
percent of weights *removed*; with the strict > even p = 0 drops the smallest entry of V, so it
is only an all-ones mask, and DICE equals Energy, when that entry's weight is zero.
Paper: Sun & Li, ECCV 2022, arXiv:2111.09805. Official code: github.com/deeplearning-wisc/dice
Reads: features, head. Statistics: μ on ID train (``train``: the full training list, sanity images included,
as in the official code; the ``fit`` split when the cache has no
``train`` split). Defaults: p = 90 (OpenOOD v1.5, official CIFAR), trial 0; ``official`` gives the
official ImageNet-1K ResNet-50 p = 70. Space: p uniform in [10, 99]; grid {90} (OpenOOD).
Deviations: none (T = 1; the official code's temperature argument is not applied).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import optuna

from oodcache.cache import Split
from oodcache.search.base import PERCENT, CacheInfo, Scorer, Stats
from oodcache.search.ops import FloatArray, as_score, dice_weight, feature_mean, head_energy
from oodcache.search.settings import Setting

log = logging.getLogger(__name__)


@dataclass
class DICE(Scorer):
    key = "dice"
    requires = ("features", "head")
    statistics = ("train",)
    domains = {"p": PERCENT}
    p: float = 90.0

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        if info.setting == Setting.IMAGENET1K_RESNET50:
            return cls(p=70.0)
        return cls()

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        return {"p": trial.suggest_float("p", 10.0, 99.0)}

    @classmethod
    def grid(cls, info: CacheInfo) -> dict[str, list[Any]] | None:
        return {"p": [90.0]}  # OpenOOD v1.5 (search off)

    def fit(self, stats: Stats) -> Self:
        train = stats.train
        self.mean_ = feature_mean(train)
        self.weight_ = dice_weight(train, self.mean_, self.p)
        log.debug(
            "dice mean_ (D=%d), weight_ keeps %d entries",
            self.mean_.size,
            int(np.count_nonzero(self.weight_)),
        )
        return self

    def score(self, split: Split) -> FloatArray:
        return as_score(head_energy(split, weight=self.weight_))
