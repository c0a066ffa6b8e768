"""ReAct + ASH, the ASH repository's ``react_and_ash``: clip at c, then ASH-S, energy.

score(x) = logsumexp(W·a + b), a = ASH shaping of min(h, c), h = cached penultimate features,
(W, b) = cached head. c = the ``percentile``-th percentile of all entries of the ID-val feature
matrix (as ReAct), or the absolute ``threshold`` when given (the official code takes an absolute
clip value: ``react_and_ash@<c>@<p>``). The shaping acts on the *clipped* features x = min(h, c):
the kept units are the k = D − round(D·p/100) largest entries of x (p = ``ash_percentile``);
S (official) multiplies them by exp(s1/s2), s1 = Σ x, s2 = Σ kept x; P and B are options.
Higher = more ID. Tie rule: clipping makes many entries equal c, and the official
``torch.topk`` picks among tied entries in no stated order; here ties at c go to the larger
unclipped activation h, then to the lower unit index (deterministic). Without ties at the k-th
value the kept units are exactly the official ones. With c above every feature it is ASH; with
ash_percentile = 0 and variant P it is ReAct.
Papers: ReAct (Sun, Guo & Li, NeurIPS 2021, arXiv:2111.12797) and ASH (Djurisic et al., ICLR 2023,
arXiv:2209.09858); official code: github.com/andrijazz/ash (``ash.py``, ``react_and_ash``).
Reads: features, head. Statistics: c from ID val. Defaults (trial 0): variant S (official),
ash_percentile = 90 (ASH-S's ImageNet value), c = ReAct's: the 90th ID-val percentile, or on
ImageNet-1K ResNet-50 the absolute 1.0 (the ASH paper publishes no numbers for the pair). Space:
percentile uniform in [50, 99.9], ash_percentile uniform in [50, 99], variant categorical
{P, B, S}. Deviations: the stated tie rule; s1, s2 summed in float64.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import optuna

from oodcache.cache import Split
from oodcache.search.base import PERCENT, CacheInfo, Scorer, Stats
from oodcache.search.methods.ash import VARIANTS, Variant
from oodcache.search.ops import (
    FloatArray,
    as_score,
    ash_shape,
    feature_percentile,
    feature_places,
    head_energy,
)
from oodcache.search.settings import Setting

log = logging.getLogger(__name__)


@dataclass
class ReActASH(Scorer):
    key = "react_ash"
    requires = ("features", "head")
    statistics = ("id_val",)
    domains = {"percentile": PERCENT, "ash_percentile": PERCENT}
    percentile: float = 90.0
    ash_percentile: float = 90.0
    variant: Variant = "S"
    threshold: float | None = None  # absolute c; overrides the percentile when set

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        if info.setting == Setting.IMAGENET1K_RESNET50:
            return cls(threshold=1.0)  # ReAct's published c for this model
        return cls()

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
            self.threshold_ = feature_percentile(stats.id_val, self.percentile)
        log.debug("react_ash threshold_ = %.6g", self.threshold_)
        return self

    def score(self, split: Split) -> FloatArray:
        c, h, places = np.float32(self.threshold_), split.features, feature_places(split)

        def shape(rows: slice, out: np.ndarray) -> np.ndarray:
            # rank = h: the top k of the clipped x, ties at c to the larger raw h (then lower index)
            return ash_shape(
                np.minimum(h[rows], c, out=out),
                self.ash_percentile,
                self.variant,
                rank=h[rows],
                places=None if places is None else places[rows],
                out=out,
            )

        return as_score(head_energy(split, shape))
