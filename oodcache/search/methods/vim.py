"""ViM: energy minus a virtual logit, the scaled norm of the residual off the principal space.

On ID train: origin u = −W⁺b; Σ = (1/N)·Σ_i (h_i − u)(h_i − u)ᵀ (centred at u, **not** the mean);
symmetric eigendecomposition, eigenvalues descending; R = the eigenvectors beyond the first D_p
(``dim``); α = mean(max_k f_k) / mean(‖Rᵀ(h − u)‖), f = W h + b.
score(x) = logsumexp(f) − α·‖Rᵀ(h − u)‖. Higher = more ID.
Paper: Wang, Li, Feng & Zhang, CVPR 2022, arXiv:2203.10807. Official code: github.com/haoqiwang/vim
Reads: features, head (f = head(h), as the official code). Statistics: ID train (``train``: the
full training list, sanity images included, as in the official code; the ``fit`` split when the
cache has no ``train`` split). Defaults: dim = the official rule, 1000 if D >= 2048,
512 if D >= 768, else D/2 (``dim=None`` resolves it at fit; ``official`` writes it out), trial 0.
Space: integer dim in [max(1, D/16), D − max(1, D/16)]; R and α follow dim in every trial (the
eigenbasis and the train residual norms for every dim are computed once per train array, and each
search split's residual norms for every dim once per split);
grid {256, 1000} (OpenOOD v1.5), the values inside the space.
Deviations: none (OpenOOD v1.5 fixed dim = 256 and computed R once, so its search had no effect).
Precision: u, Σ and its eigenbasis are float64 (a float32 Σ about u, as the official code's, loses
the trailing eigenvectors when u lies far off the data). The every-dim tables (train, for α; each
search split) project in float32 from the train mean c, adding (c − u)ᵀV from float64: equal to
the float64 projection to 4e-7 relative for every dim of the space on bench_methods' cache (the
stored float32 table alone rounds to 6e-8); α's mean max logit uses float32 logits (3e-10).
Cost of a cold search: pinv(W), one D×D covariance (float64) and eigh, one float32 projection of
train and of each search split on all D eigenvectors: within 2x of the least a trial needs
(bench_methods' ``inherent_cold``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple, Self

import numpy as np
import optuna

from oodcache.cache import Split
from oodcache.search.base import CacheInfo, Domain, Scorer, Stats
from oodcache.search.ops import (
    FloatArray,
    as_score,
    derive,
    energy,
    head_logits,
    readonly,
    row_chunks,
)

log = logging.getLogger(__name__)


def official_dim(d: int) -> int:
    """The official principal dimension D_p for feature dimension D."""
    return 1000 if d >= 2048 else 512 if d >= 768 else max(1, d // 2)


class Basis(NamedTuple):
    origin: np.ndarray  # u (D,)
    vectors: np.ndarray  # eigenvectors (D, D), columns by descending eigenvalue
    mean_max_logit: float  # mean over train of max_k f_k
    mean_residual: np.ndarray  # (D + 1,): [dim] = mean over train of ‖R_dimᵀ(h − u)‖
    centre: np.ndarray  # c (D,) float32: the train mean, where float32 projections are taken
    offset: np.ndarray  # (c − u)ᵀV (D,) float32, from float64
    vectors32: np.ndarray  # ``vectors`` in float32, columns by ascending eigenvalue


def tail_norms(
    h: np.ndarray, centre: np.ndarray, offset: np.ndarray, rev: np.ndarray
) -> np.ndarray:
    """(N, D) float64, [:, i] = ‖(h − u)ᵀV[:, D − 1 − i:]‖ (the residual norm of dim D − 1 − i).

    y = (h − c)ᵀV + (c − u)ᵀV with c the float32 train mean, so that the float32 GEMM rounds
    relative to the spread ‖h − c‖ rather than to ‖h − u‖ (u = −W⁺b may lie far off the data:
    thousands of times ‖h − c‖); the offset (c − u)ᵀV is float64 rounded once to float32, the
    squares are summed in float64, trailing eigenvectors first (``rev``: ascending order)."""
    y = (h - centre) @ rev
    y += offset
    y *= y
    out = y.astype(np.float64)  # then in place: 3x faster than cumsum(..., dtype=float64)
    np.cumsum(out, axis=1, out=out)
    return np.sqrt(out, out=out)


def vim_basis(split: Split) -> Basis:
    """What ViM needs from ID train ``split``, for every dim at once (kept on a prepared split).
    Σ and its eigenbasis are float64; the train projections for α are float32 (``tail_norms``)."""
    features, weight, bias = split.features, split.weight, split.bias

    def compute() -> Basis:
        n, d = features.shape
        w, b = weight.astype(np.float64), bias.astype(np.float64)
        u = -np.linalg.pinv(w) @ b
        cov = np.zeros((d, d))
        for rows in row_chunks(n, 8 * d, 2**26):
            x = features[rows] - u
            cov += x.T @ x
        _, vecs = np.linalg.eigh(cov / n)  # ascending eigenvalues
        rev = np.ascontiguousarray(vecs, np.float32)
        centre = features.mean(axis=0, dtype=np.float64).astype(np.float32)
        offset = ((centre - u) @ vecs).astype(np.float32)
        max_logit = 0.0
        residual = np.zeros(d + 1)
        for rows in row_chunks(n, 16 * d, 2**26):
            h = features[rows]
            max_logit += float((h @ weight.T + bias).max(axis=1).sum(dtype=np.float64))
            residual[d - 1 :: -1] += tail_norms(h, centre, offset, rev).sum(axis=0)
        return Basis(
            u,
            readonly(np.ascontiguousarray(vecs[:, ::-1])),  # descending eigenvalues
            max_logit / n,
            residual / n,
            readonly(centre),
            readonly(offset),
            readonly(rev),
        )

    return derive(split, "vim basis", compute)


def residual_norms(h: np.ndarray, basis: Basis) -> np.ndarray:
    """(N, D) float32, [:, i] = ‖(h − u)ᵀV[:, D − 1 − i:]‖, the residual norm of dim D − 1 − i:
    one float32 projection on the whole eigenbasis (``tail_norms``), then cumulative sums. Kept
    on a prepared split, a trial reads one column."""
    n, d = h.shape
    out = np.empty((n, d), np.float32)
    for rows in row_chunks(n, 24 * d, 2**26):
        out[rows] = tail_norms(h[rows], basis.centre, basis.offset, basis.vectors32)
    return readonly(out)


@dataclass
class ViM(Scorer):
    key = "vim"
    requires = ("features", "head")
    statistics = ("train",)
    domains = {"dim": Domain(0)}
    dim: int | None = None  # principal dimension D_p; None = the official rule

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        return cls(dim=official_dim(info.feature_dim))

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        d = info.feature_dim
        lo = max(1, d // 16)
        return {"dim": trial.suggest_int("dim", lo, max(lo, d - lo))}

    @classmethod
    def grid(cls, info: CacheInfo) -> dict[str, list[Any]] | None:
        d = info.feature_dim
        lo = max(1, d // 16)
        dims = [v for v in (256, 1000) if lo <= v <= d - lo]  # OpenOOD v1.5, where it fits
        return {"dim": dims} if dims else None

    def fit(self, stats: Stats) -> Self:
        train = stats.train
        d = train.features.shape[1]
        dim = official_dim(d) if self.dim is None else int(self.dim)
        if not 0 <= dim < d:
            raise ValueError(f"ViM needs 0 <= dim < D = {d} (a non-empty residual), got {dim}")
        basis = vim_basis(train)
        self.basis_, self.dim_ = basis, dim
        self.origin_ = basis.origin
        self.residual_ = basis.vectors[:, dim:]
        self.alpha_ = basis.mean_max_logit / basis.mean_residual[dim]
        # a prepared split keeps its residual norms for every dim under this basis's tag
        self.table_tag_ = (
            f"vim residual norms, basis of prepared split #{train.tables.serial}"
            if train.tables is not None
            else None
        )
        log.debug("vim dim = %d, alpha_ = %.6g", dim, self.alpha_)
        return self

    def residual_norm(self, split: Split) -> np.ndarray:
        """‖Rᵀ(h − u)‖ per row, float64. A prepared split fitted against a prepared train split
        reads its table of every dim (``residual_norms``, float32: equal to ~4e-7 relative)."""
        h = split.features
        if split.tables is not None and self.table_tag_ is not None:
            table = split.tables.get(self.table_tag_, lambda: residual_norms(h, self.basis_))
            return np.asarray(table[:, h.shape[1] - 1 - self.dim_], np.float64)
        out = np.empty(len(h))
        for rows in row_chunks(len(h), 8 * self.residual_.shape[1], 2**26):
            out[rows] = np.linalg.norm((h[rows] - self.origin_) @ self.residual_, axis=1)
        return out

    def score(self, split: Split) -> FloatArray:
        virtual = self.alpha_ * self.residual_norm(split)
        return as_score(energy(head_logits(split)) - virtual)
