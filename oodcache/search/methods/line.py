"""LINe: leverage important neurons — clip, then keep the predicted class's important weights and units.

With class means μ_c of ID-train features and contributions C[j, c] = W[c, j]·μ[c, j]:
weight mask M^w_c[k, j] = 1[|C[j, c]|·W[k, j] > perc_{p_w}(all K·D such products)] (signed W), unit mask
m^a_c[j] = 1[C[j, c] > perc_{p_a}(C[·, c])]; at test time h̄ = min(h, τ), ĉ = argmax(W h̄ + b),
score(x) = logsumexp((M^w_ĉ ⊙ W)(m^a_ĉ ⊙ h̄) + b). p_w, p_a are percent *removed*. Higher = more ID.
Paper: Ahn, Park & Kim, CVPR 2023, arXiv:2303.13995.
Official code: github.com/YongHyun-Ahn/LINe-Out-of-Distribution-Detection-by-Leveraging-Important-Neurons
Reads: features, head, labels. Statistics: class means on ID train (``train``: the full
training list, sanity images included, as in the official code; the ``fit`` split when the cache
has no ``train`` split); τ = ``clip_percentile``-th percentile of ID-val features, or the absolute
``clip_threshold`` (official ImageNet-1K ResNet-50: p_w = p_a = 10, τ = 0.8; CIFAR-10 DenseNet-BC-100:
90 / 90 / 1.0; CIFAR-100 DenseNet-BC-100: 90 / 10 / 1.0; trial 0 there).
Space: clip_percentile in [50, 99.9], p_w and p_a in [0, 99]. Masks are built per predicted class
only (never a K×K×D tensor), from float64 products; the clipped features, the masked weights and
the logits are float32 (as the network). Deviations: none. Cost: one K·D-entry percentile per
predicted class per trial — the definition's price (~25 ms per class at K = 1,000, D = 2,048).
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
    derive,
    feature_percentile,
    logsumexp,
    percentile,
    readonly,
)
from oodcache.search.settings import Setting

log = logging.getLogger(__name__)


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, D) mean feature per class, float64; raises if a class has no sample."""
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"classes without ID-train samples: {np.flatnonzero(counts == 0)[:10]}")
    sums = np.zeros((num_classes, features.shape[1]), np.float64)
    np.add.at(sums, labels, features)
    return sums / counts[:, None]


def contributions(split: Split) -> np.ndarray:
    """C (K, D), row c = W[c]·μ_c of ``split`` (ID train), float64; kept on a prepared split."""
    weight = split.weight
    return derive(
        split,
        "line contributions",
        lambda: readonly(weight * class_means(split.features, split.labels, weight.shape[0])),
    )


@dataclass
class LINe(Scorer):
    key = "line"
    requires = ("features", "head")
    statistics = ("train", "id_val")
    domains = {"clip_percentile": PERCENT, "p_w": PERCENT, "p_a": PERCENT}
    clip_percentile: float = 90.0
    p_w: float = 10.0
    p_a: float = 10.0
    clip_threshold: float | None = None  # absolute τ; overrides clip_percentile when set

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        setting = info.setting
        if setting == Setting.IMAGENET1K_RESNET50:
            return cls(p_w=10.0, p_a=10.0, clip_threshold=0.8)
        if setting == Setting.CIFAR10_DENSENET:
            return cls(p_w=90.0, p_a=90.0, clip_threshold=1.0)
        if setting == Setting.CIFAR100_DENSENET:
            return cls(p_w=90.0, p_a=10.0, clip_threshold=1.0)
        return cls()

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        return {
            "clip_percentile": trial.suggest_float("clip_percentile", 50.0, 99.9),
            "p_w": trial.suggest_float("p_w", 0.0, 99.0),
            "p_a": trial.suggest_float("p_a", 0.0, 99.0),
        }

    def fit(self, stats: Stats) -> Self:
        train = stats.train
        self.contribution_ = contributions(train)
        if self.clip_threshold is not None:
            self.tau_ = float(self.clip_threshold)
        else:
            self.tau_ = feature_percentile(stats.id_val, self.clip_percentile)
        self._thresholds: dict[int, tuple[float, float]] = {}
        log.debug("line tau_ = %.6g", self.tau_)
        return self

    def class_masks(
        self, c: int, weight: np.ndarray, products: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(M^w_c (K, D), m^a_c (D,)) for class c. ``products`` is a (K, D) float64 buffer; the two
        percentiles are kept per class for the trial, the masks (K·D each) are rebuilt per use so
        that memory stays O(K·D) whatever the number of predicted classes."""
        contrib = self.contribution_[c]
        np.multiply(np.abs(contrib)[None, :], weight, out=products)
        if c not in self._thresholds:
            t_w, t_a = percentile(products, self.p_w), percentile(contrib, self.p_a)
            self._thresholds[c] = (t_w, t_a)
        t_w, t_a = self._thresholds[c]
        return products > t_w, contrib > t_a

    def score(self, split: Split) -> FloatArray:
        w64 = split.weight.astype(np.float64)
        clipped = np.minimum(split.features, np.float32(self.tau_))
        pred = split.head(clipped).argmax(axis=1)
        out = np.empty(split.n, np.float64)
        products = np.empty(w64.shape)
        for c in np.unique(pred):
            rows = np.flatnonzero(pred == c)
            w_mask, a_mask = self.class_masks(int(c), w64, products)
            wc = np.where(w_mask, split.weight, np.float32(0))
            out[rows] = logsumexp((clipped[rows] * a_mask) @ wc.T + split.bias)
        return as_score(out)
