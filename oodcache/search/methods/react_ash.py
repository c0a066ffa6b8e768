"""ReAct + ASH: clip penultimate activations at an ID percentile, then shape them as ASH, energy.

score(x) = logsumexp(W·a(min(h, c)) + b), h = cached penultimate features, (W, b) = cached head.
c = the ``percentile``-th percentile of all entries of the ID-val feature matrix (as ReAct), or the
absolute ``threshold`` when given; a = ASH's P/B/S shaping at ``ash_percentile`` (k = D −
round(D·p/100) kept units; s1 and s2 are sums of the *clipped* features). Higher = more ID.
Clipping makes many entries equal c, so ASH's top k is often tied; ties go to the larger
unclipped activation (then the lower unit index), i.e. the kept units are the top k of h itself.
With c above every feature it is ASH; with ash_percentile = 0 and variant P it is ReAct.
Papers: ReAct (Sun, Guo & Li, NeurIPS 2021, arXiv:2111.12797) and ASH (Djurisic et al., ICLR 2023,
arXiv:2209.09858); official code github.com/deeplearning-wisc/react, github.com/andrijazz/ash.
Reads: features, head. Statistics: c from ID val. Defaults: percentile = 90 (ReAct), ASH-B at
ash_percentile = 90 (OpenOOD "ash"), trial 0 (our pairing; neither paper publishes this
combination). Space: percentile uniform in [50, 99.9], ash_percentile uniform in [50, 99],
variant categorical {P, B, S}. Deviations: the combination itself is ours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import optuna

from oodcache.cache import Split
from oodcache.search.base import CacheInfo, Scorer, Stats
from oodcache.search.methods.ash import VARIANTS, Variant
from oodcache.search.ops import FloatArray, as_score, ash_shape, energy, percentile

log = logging.getLogger(__name__)


@dataclass
class ReActASH(Scorer):
    key = "react_ash"
    requires = ("features", "head")
    statistics = ("id_val",)
    percentile: float = 90.0
    ash_percentile: float = 90.0
    variant: Variant = "B"
    threshold: float | None = None  # absolute c; overrides the percentile when set

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        return {
            "percentile": trial.suggest_float("percentile", 50.0, 99.9),
            "ash_percentile": trial.suggest_float("ash_percentile", 50.0, 99.0),
            "variant": trial.suggest_categorical("variant", VARIANTS),
        }

    def fit(self, stats: Stats) -> Self:
        if self.threshold is not None:
            self.threshold_ = float(self.threshold)
        else:
            self.threshold_ = percentile(stats.id_val.features, self.percentile)
        log.debug("react_ash threshold_ = %.6g", self.threshold_)
        return self

    def score(self, split: Split) -> FloatArray:
        clipped = np.minimum(split.features, np.float32(self.threshold_))
        shaped = ash_shape(clipped, self.ash_percentile, self.variant, rank=split.features)
        return as_score(energy(split.head(shaped)))
