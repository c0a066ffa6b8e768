"""LHAct: lower- and higher-tail activation shaping of penultimate features, then energy.

h' = max(h, t_l); a = h' where h' < t_h, else h'/√(1 + (h'/t_h)^(2n)) + t_l (n = 2 in the official
code); score(x) = logsumexp(W·a + b). Values below t_l are raised to t_l, [t_l, t_h) passes, and at t_h
the output drops to t_h/√2 + t_l and then decays towards t_l. Higher = more ID.
Paper: Yuan et al., ACM MM 2023. Official code: github.com/ystyuan/LHAct
Reads: features, head. Statistics: ID val (percentile parameterisation). Thresholds are either the
absolute ``low_threshold``/``high_threshold`` (official ImageNet-1K ResNet-50 constants
t_l = 0.21940805315971373, t_h = 1.3520756840705868, used as trial 0 there) or percentiles of all
ID-val feature entries. Space: low_percentile in [0, 50], high_percentile in [80, 99.9], n fixed 2.
Deviations: the official repository ships only the absolute constants and not the percentiles behind
them; the percentile defaults (10, 95) are ours, used as trial 0 wherever no official constant exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import optuna

from oodcache.cache import Split
from oodcache.search.base import PERCENT, CacheInfo, Domain, Scorer, Stats
from oodcache.search.ops import FloatArray, as_score, feature_percentile, head_energy
from oodcache.search.settings import Setting

log = logging.getLogger(__name__)

IMAGENET_RESNET50 = {"low_threshold": 0.21940805315971373, "high_threshold": 1.3520756840705868}


def lhact_shape(
    h: np.ndarray, t_low: float, t_high: float, n: int = 2, *, out: np.ndarray | None = None
) -> np.ndarray:
    """The LHAct activation a(h) elementwise (see module docstring), in h's dtype, into ``out``
    (C-contiguous, h's shape) when given. Only the entries at or above t_h decay, so only they
    go through the decay's arithmetic."""
    h = np.asarray(h)
    t_l, t_h = np.asarray(t_low, h.dtype), np.asarray(t_high, h.dtype)
    hp = np.maximum(h, t_l, out=out)
    flat = hp.reshape(-1)  # a view: hp is C-contiguous
    top = np.flatnonzero(flat >= t_h)
    if top.size:
        v = flat[top]
        ratio_sq = np.square(v / t_h)
        flat[top] = v / np.sqrt(1 + ratio_sq**n) + t_l  # (h/t_h)^(2n) as (·²)^n
    return hp


@dataclass
class LHAct(Scorer):
    key = "lhact"
    requires = ("features", "head")
    statistics = ("id_val",)
    domains = {"low_percentile": PERCENT, "high_percentile": PERCENT, "n": Domain(1)}
    low_percentile: float = 10.0
    high_percentile: float = 95.0
    low_threshold: float | None = None  # absolute t_l; overrides low_percentile when set
    high_threshold: float | None = None  # absolute t_h; overrides high_percentile when set
    n: int = 2

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        if info.setting == Setting.IMAGENET1K_RESNET50:
            return cls(**IMAGENET_RESNET50)  # type: ignore[arg-type]
        return cls()

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        return {
            "low_percentile": trial.suggest_float("low_percentile", 0.0, 50.0),
            "high_percentile": trial.suggest_float("high_percentile", 80.0, 99.9),
        }

    def fit(self, stats: Stats) -> Self:
        val = stats.id_val
        lo, hi = self.low_threshold, self.high_threshold
        self.t_low_ = float(lo) if lo is not None else feature_percentile(val, self.low_percentile)
        self.t_high_ = (
            float(hi) if hi is not None else feature_percentile(val, self.high_percentile)
        )
        if not self.t_low_ < self.t_high_:
            raise ValueError(f"LHAct needs t_l < t_h, got {self.t_low_:.4g} >= {self.t_high_:.4g}")
        log.debug("lhact t_low_ = %.6g, t_high_ = %.6g", self.t_low_, self.t_high_)
        return self

    def score(self, split: Split) -> FloatArray:
        h, t_low, t_high, n = split.features, self.t_low_, self.t_high_, self.n
        return as_score(
            head_energy(split, lambda rows, out: lhact_shape(h[rows], t_low, t_high, n, out=out))
        )
