"""ReAct + DICE: clip penultimate activations at an ID percentile, DICE-mask the weights, energy.

score(x) = logsumexp((W ⊙ M)·min(h, c) + b), h = cached penultimate features, (W, b) = cached head.
c = the ``percentile``-th percentile of all entries of the ID-val feature matrix (as ReAct), or the
absolute ``threshold`` when given. M = 1[V > perc_p(V)], V[k, j] = μ_j·W[k, j] (signed, one
percentile over all K·D entries, strict >), μ = mean of the *unclipped* h over ID train (as DICE).
Higher = more ID. With c above every feature it is DICE; with M all ones it is ReAct.
Paper: Sun & Li, ECCV 2022 (DICE, §"DICE + ReAct"), arXiv:2111.09805.
Official code: github.com/deeplearning-wisc/dice
Reads: features, head. Statistics: c from ID val, μ from ID train (``train``, the full
training list, as in the official code; ``fit`` when there is no
``train`` split). Defaults: percentile = 90 (ReAct), p = 90 (DICE in OpenOOD), trial 0 (our
pairing); ``official`` gives the DICE paper's ImageNet-1K ResNet-50 pairing threshold = 1.0,
p = 10 (docs/methods.md §3.4). Space: percentile uniform in [50, 99.9], p uniform in [10, 99].
Deviations: none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import optuna

from oodcache.cache import Split
from oodcache.search.base import PERCENT, CacheInfo, Scorer, Stats
from oodcache.search.ops import (
    FloatArray,
    as_score,
    dice_weight,
    feature_mean,
    feature_percentile,
    head_energy,
)
from oodcache.search.settings import Setting

log = logging.getLogger(__name__)


@dataclass
class ReActDICE(Scorer):
    key = "react_dice"
    requires = ("features", "head")
    statistics = ("train", "id_val")
    domains = {"percentile": PERCENT, "p": PERCENT}
    percentile: float = 90.0
    p: float = 90.0
    threshold: float | None = None  # absolute c; overrides the percentile when set

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        if info.setting == Setting.IMAGENET1K_RESNET50:
            return cls(p=10.0, threshold=1.0)
        return cls()

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        return {
            "percentile": trial.suggest_float("percentile", 50.0, 99.9),
            "p": trial.suggest_float("p", 10.0, 99.0),
        }

    def fit(self, stats: Stats) -> Self:
        if self.threshold is not None:
            self.threshold_ = float(self.threshold)
        else:
            self.threshold_ = feature_percentile(stats.id_val, self.percentile)
        train = stats.train
        self.mean_ = feature_mean(train)
        self.weight_ = dice_weight(train, self.mean_, self.p)
        log.debug(
            "react_dice threshold_ = %.6g, weight_ keeps %d entries",
            self.threshold_,
            int(np.count_nonzero(self.weight_)),
        )
        return self

    def score(self, split: Split) -> FloatArray:
        c, h = np.float32(self.threshold_), split.features
        return as_score(
            head_energy(split, lambda rows, out: np.minimum(h[rows], c, out=out), self.weight_)
        )
