"""ASH: prune each sample's penultimate activations to its top k, reshape them, score by energy.

score(x) = logsumexp(W·a(h) + b), h = cached penultimate features, (W, b) = cached head. Per
sample, k = D − round(D·p/100) (round half to even, k >= 1) units are kept, the rest zeroed;
s1 = Σ_j h_j before pruning, s2 = Σ of the kept entries. ASH-P: a = T_k(h); ASH-B: a = s1/k on
kept positions; ASH-S: a = T_k(h)·exp(s1/s2). Higher = more ID. ASH-P at p = 0 is Energy.
Paper: Djurisic et al., ICLR 2023, arXiv:2209.09858. Official code: github.com/andrijazz/ash
Reads: features, head. Statistics: none. Defaults: ASH-B at p = 90 (OpenOOD v1.5 "ash"), trial 0;
``official`` gives the official configs ASH-S@90 (ImageNet-1K ResNet-50) and ASH-S@95 (CIFAR
DenseNet). Space: percentile uniform in [50, 99], variant categorical {P, B, S}; grid ASH-B at
{65, 70, ..., 95} (OpenOOD v1.5).
Deviations: ASH-S uses exp(0) where s2 = 0 (an all-zero ReLU row; the official code gives NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
import optuna

from oodcache.cache import Split
from oodcache.search.base import PERCENT, CacheInfo, Scorer
from oodcache.search.ops import (
    FloatArray,
    as_score,
    ash_shape,
    feature_places,
    feature_sums,
    head_energy,
)
from oodcache.search.settings import Setting

Variant = Literal["P", "B", "S"]
VARIANTS: tuple[Variant, ...] = ("P", "B", "S")


@dataclass
class ASH(Scorer):
    key = "ash"
    requires = ("features", "head")
    domains = {"percentile": PERCENT}
    percentile: float = 90.0
    variant: Variant = "B"

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        setting = info.setting
        if setting == Setting.IMAGENET1K_RESNET50:
            return cls(percentile=90.0, variant="S")
        if setting in (Setting.CIFAR10_DENSENET, Setting.CIFAR100_DENSENET):
            return cls(percentile=95.0, variant="S")
        return cls()

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        return {
            "percentile": trial.suggest_float("percentile", 50.0, 99.0),
            "variant": trial.suggest_categorical("variant", VARIANTS),
        }

    @classmethod
    def grid(cls, info: CacheInfo) -> dict[str, list[Any]] | None:
        return {"percentile": [65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0], "variant": ["B"]}

    def score(self, split: Split) -> FloatArray:
        h, places = split.features, feature_places(split)
        sums = None if self.variant == "P" else feature_sums(split)

        def shape(rows: slice, out: np.ndarray) -> np.ndarray:
            return ash_shape(
                h[rows],
                self.percentile,
                self.variant,
                places=None if places is None else places[rows],
                sums=None if sums is None else sums[rows],
                out=out,
            )

        return as_score(head_energy(split, shape))
