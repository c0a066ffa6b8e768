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
only (never a K×K×D tensor): M^w_c from float64 products, exactly; the clipped features, the
masked weights and the logits are float32 (as the network). Deviations: none.
Cost per trial (all scored splits together, ``score_all``): ĉ from each split's logits at the
nearest of a few clip values, kept for the study, corrected for the entries between that value
and τ (``masked_products.ClipAnchors``; one head pass when τ is far from all of them);
perc_{p_w} over each class's K·D products by exact selection (``oodcache.search.scaled_columns``:
W's columns sorted once per study, a sampled sketch per class with exact per-column counts at
every 256th sample value, exact counts by binary search) instead of a fresh K·D percentile,
and perc_{p_a} from C's rows sorted once per study, both equal to np.percentile bit for bit
(tests/search/test_scaled_columns.py); M^w_c as one float32 threshold per unit (W[k, j] > θ_cj
⟺ |C[j, c]|·W[k, j] > t_w, exactly; θ_cj = +inf outside m^a_c); then the masked products and
their energy class by class in compiled loops that mask W in registers
(``oodcache.search.masked_products``). The logits' float32 sums are split differently from a
per-class BLAS product: equal to float32 rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import optuna

from oodcache.cache import Split
from oodcache.search import scaled_columns
from oodcache.search.base import PERCENT, CacheInfo, Scorer, Stats
from oodcache.search.masked_products import ClipAnchors, class_scores
from oodcache.search.ops import (
    FloatArray,
    as_score,
    derive,
    feature_percentile,
    percentile_of_sorted,
    readonly,
)
from oodcache.search.scaled_columns import Sketch, SortedColumns, column_thresholds
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


@dataclass(frozen=True)
class LineTables:
    """Parameter-independent LINe tables of one ID-train split (built once per study on a prepared
    split): C and |C|, C's rows sorted (for perc_{p_a}), W's columns sorted and a sketch of each
    class's products |C[c, j]|·W[k, j] (for perc_{p_w}), and Wᵀ (D, K) for the masked products."""

    contribution: np.ndarray
    scales: np.ndarray
    contribution_sorted: np.ndarray
    columns: SortedColumns
    sketch: Sketch
    weight: np.ndarray
    weight_t: np.ndarray

    @classmethod
    def build(cls, train: Split) -> LineTables:
        contribution = contributions(train)
        scales = readonly(np.abs(contribution))
        columns = SortedColumns.build(train.weight)
        return cls(
            contribution,
            scales,
            readonly(np.sort(contribution, axis=1)),
            columns,
            Sketch.build(scales, columns),
            readonly(np.ascontiguousarray(train.weight, np.float32)),
            readonly(np.ascontiguousarray(train.weight.T, np.float32)),
        )

    def thresholds(
        self, classes: np.ndarray, p_w: float, p_a: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """For the given classes (R,): t_w = perc_{p_w} of each class's K·D products
        |C[c, j]|·W[k, j] (R,), exactly as np.percentile, and the unit masks
        m^a_c = 1[C[c] > perc_{p_a}(C[c])] (R, D) bool."""
        t_w = scaled_columns.percentiles(self.scales, self.columns, self.sketch, p_w, classes)
        t_a = [percentile_of_sorted(self.contribution_sorted[c], p_a) for c in classes]
        return t_w, self.contribution[classes] > np.array(t_a)[:, None]

    def weight_thresholds(self, classes: np.ndarray, p_w: float, p_a: float) -> np.ndarray:
        """(R, D) float32 θ with M^w_c[k, j] ⊙ m^a_c[j] = 1[W[k, j] > θ[c, j]] for the given
        classes: θ = column_thresholds(|C[c]|, t_w) on the units of m^a_c, +inf elsewhere."""
        t_w, units = self.thresholds(classes, p_w, p_a)
        theta = scaled_columns.row_thresholds(self.scales, classes, t_w)
        theta[~units] = np.inf
        return theta


def line_tables(train: Split) -> LineTables:
    """:class:`LineTables` of ``train`` (kept on a prepared split)."""
    return derive(train, "line tables", lambda: LineTables.build(train))


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
        self.tables_ = line_tables(stats.train)
        if self.clip_threshold is not None:
            self.tau_ = float(self.clip_threshold)
        else:
            self.tau_ = feature_percentile(stats.id_val, self.clip_percentile)
        log.debug("line tau_ = %.6g", self.tau_)
        return self

    def class_masks(self, c: int, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M^w_c (K, D) bool, m^a_c (D,) bool): M^w_c[k, j] = 1[|C[j, c]|·W[k, j] > t_w]."""
        t_w, units = self.tables_.thresholds(np.array([c]), self.p_w, self.p_a)
        theta = column_thresholds(self.tables_.scales[c], t_w[0])
        return np.asarray(weight, np.float32) > theta, units[0]

    def predicted(self, split: Split, clipped: np.ndarray) -> np.ndarray:
        """ĉ = argmax(W h̄ + b) of ``split`` (h̄ = ``clipped``): on a prepared split, from its
        logits at a nearby clip value, kept for the study (``masked_products.ClipAnchors``, up
        to 2 GiB per split); else, or when τ is far from every anchor, by one head pass."""
        if split.tables is not None and ClipAnchors.fits(split.n, len(split.bias)):
            anchors = derive(
                split,
                "line clip anchors",
                lambda: ClipAnchors.build(split.features, split.weight, split.bias),
            )
            pred = anchors.argmax(split.features, self.tables_.weight_t, self.tau_)
            if pred is not None:
                return pred
        return np.asarray(clipped @ split.weight.T + split.bias, np.float32).argmax(axis=1)

    def score(self, split: Split) -> FloatArray:
        return self.score_all([split])[0]

    def score_all(self, splits: Sequence[Split]) -> list[FloatArray]:
        """Scores of ``splits`` (same head), each class's masks built once for all of them."""
        weight, bias = splits[0].weight, splits[0].bias
        for split in splits[1:]:
            if not (np.array_equal(split.weight, weight) and np.array_equal(split.bias, bias)):
                raise ValueError("LINe.score_all: the splits have different heads")
        sizes = [s.n for s in splits]
        clipped = np.empty((sum(sizes), weight.shape[1]), np.float32)
        offsets = np.cumsum([0, *sizes])
        for split, start, stop in zip(splits, offsets[:-1], offsets[1:], strict=True):
            np.minimum(split.features, np.float32(self.tau_), out=clipped[start:stop])
        bounds = zip(splits, offsets[:-1], offsets[1:], strict=True)
        pred = np.concatenate([self.predicted(s, clipped[a:b]) for s, a, b in bounds])
        order = np.argsort(pred, kind="stable")
        classes, starts, counts = np.unique(pred[order], return_index=True, return_counts=True)
        theta = self.tables_.weight_thresholds(classes, self.p_w, self.p_a)
        out = class_scores(self.tables_.weight, bias, clipped, order, starts, counts, theta)
        return [as_score(out[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
