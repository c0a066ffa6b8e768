"""ReAct: clip penultimate activations at an ID percentile, then score by energy.

score(x) = logsumexp(W·min(h, c) + b), h = cached penultimate features, (W, b) = cached head.
c = the ``percentile``-th percentile of all entries of the ID-val feature matrix (N×D, flattened,
linear interpolation), or the absolute ``threshold`` when given (the paper's ImageNet ResNet-50
constant is c = 1.0). Higher = more ID. c = +inf recovers Energy.
Paper: Sun, Guo & Li, NeurIPS 2021, arXiv:2111.12797. Official code: github.com/deeplearning-wisc/react
Reads: features, head. Statistics: ID val (as OpenOOD v1.5). Defaults: percentile = 90 (paper,
OpenOOD), trial 0; ``official`` gives the paper's ImageNet-1K ResNet-50 constant threshold = 1.0
(docs/methods.md §3.1, §9.1), trial 0 there. Space: percentile uniform in [50, 99.9];
grid {85, 90, 95, 99} (OpenOOD v1.5). Deviations: none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import optuna

from oodcache.cache import Split
from oodcache.search.base import PERCENT, CacheInfo, Scorer, Stats
from oodcache.search.ops import FloatArray, as_score, feature_percentile, head_energy
from oodcache.search.settings import Setting

log = logging.getLogger(__name__)


@dataclass
class ReAct(Scorer):
    key = "react"
    requires = ("features", "head")
    statistics = ("id_val",)
    domains = {"percentile": PERCENT}
    percentile: float = 90.0
    threshold: float | None = None  # absolute c; overrides the percentile when set

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        if info.setting == Setting.IMAGENET1K_RESNET50:
            return cls(threshold=1.0)  # the 90th percentile on ~2,000 ImageNet val images
        return cls()

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        return {"percentile": trial.suggest_float("percentile", 50.0, 99.9)}

    @classmethod
    def grid(cls, info: CacheInfo) -> dict[str, list[Any]] | None:
        return {"percentile": [85.0, 90.0, 95.0, 99.0]}  # OpenOOD v1.5

    def fit(self, stats: Stats) -> Self:
        if self.threshold is not None:
            self.threshold_ = float(self.threshold)
        else:
            self.threshold_ = feature_percentile(stats.id_val, self.percentile)
        log.debug("react threshold_ = %.6g", self.threshold_)
        return self

    def score(self, split: Split) -> FloatArray:
        c, h = np.float32(self.threshold_), split.features
        return as_score(head_energy(split, lambda rows, out: np.minimum(h[rows], c, out=out)))
