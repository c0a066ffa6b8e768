"""LINe's per-class masked head products and their energy, and its predicted classes, in
compiled loops (numba).

For the samples whose predicted class is c, with one float32 threshold θ_cj per unit j
(``scaled_columns.column_thresholds``: W[k, j] > θ_cj ⟺ |C[j, c]|·W[k, j] > t_w, exactly;
θ_cj = +inf for a unit outside the class's unit mask m^a_c):

    z = (W ⊙ 1[W > θ_c]) h̄ + b,    S = logsumexp(z)

The masked weights are never stored: each 4-output × 4-sample tile reads 4 rows of W and 4
feature rows once, masks the weights in registers and accumulates 16 float32 dot products
(vectorised over the units, so the sums are split differently from a BLAS product: equal to
float32 rounding). A class costs one pass over W per 4 of its samples, against the 2 ms a
numpy mask-then-BLAS pass took per class (the (K, D) masked copy and a 13-row product that
BLAS cannot block). When under COMPACT_SHARE of the units can contribute (in m^a_c, and θ
below the unit's largest weight), their weights and features are copied out first and only
they are multiplied. The energy is numpy's float32 logsumexp (``ops.logsumexp``: shift and exp
in float32, sum in float64). Classes run on the shared pool's threads (the loops hold no GIL).

The predicted class ĉ = argmax(W h̄ + b), h̄ = min(h, τ), needs a head pass per trial (τ moves).
``ClipAnchors`` instead corrects logits computed once per study at a nearby clip value (one row
of Wᵀ per feature entry between the two clip values). Both are float32 evaluations of the same
sum (equal to float32 rounding; a near-tie between two classes could resolve either way, as
between any two float32 evaluations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oodcache.search.jit import kernel
from oodcache.search.parallel import parallel_map, workers

#: share of units below which a class's kept units (θ below the unit's largest weight: in m^a_c
#: and not wholly masked) are copied out, weights and features, before the products; above it the
#: copy costs more than it saves (measured on 2 cores: 0.41 s against 0.51 s at a 35 % share)
COMPACT_SHARE = 0.5
#: largest share of feature entries between τ and the nearest clip anchor for which
#: ``ClipAnchors.argmax`` corrects the anchor's logits (about 1.4x a head pass per unit of share
#: on 2 cores); the anchors' quantiles of the feature entries (+inf is always an anchor)
SPARSE_SHARE = 0.2
ANCHOR_QUANTILES = (0.6, 0.75, 0.9)
#: largest memory for one split's anchors (2 (N, K) float32 arrays per finite anchor, 1 more);
#: a larger split clips by one head pass per trial
ANCHOR_BYTES = 2 << 30

#: float flags for the dot products: reassociation lets the compiler vectorise the sums over
#: units and fuse multiply-adds; no flag that assumes finite values (θ may be ±inf)
_DOT = {"reassoc", "contract"}
_Z32 = np.float32(0.0)


@kernel(fastmath=_DOT)
def _tile4x4(w0, w1, w2, w3, g0, g1, g2, g3, th, z, s, k0):
    """z[s + i, k0 + o] = Σ_j w_o[j]·1[w_o[j] > θ_j]·g_i[j] for o, i < 4."""
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = _Z32
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = _Z32
    for j in range(th.shape[0]):
        t = th[j]
        x0, x1, x2, x3 = w0[j], w1[j], w2[j], w3[j]
        m0 = x0 if x0 > t else _Z32
        m1 = x1 if x1 > t else _Z32
        m2 = x2 if x2 > t else _Z32
        m3 = x3 if x3 > t else _Z32
        y0, y1, y2, y3 = g0[j], g1[j], g2[j], g3[j]
        a00 += m0 * y0
        a01 += m0 * y1
        a02 += m0 * y2
        a03 += m0 * y3
        a10 += m1 * y0
        a11 += m1 * y1
        a12 += m1 * y2
        a13 += m1 * y3
        a20 += m2 * y0
        a21 += m2 * y1
        a22 += m2 * y2
        a23 += m2 * y3
        a30 += m3 * y0
        a31 += m3 * y1
        a32 += m3 * y2
        a33 += m3 * y3
    z[s, k0], z[s + 1, k0], z[s + 2, k0], z[s + 3, k0] = a00, a01, a02, a03
    z[s, k0 + 1], z[s + 1, k0 + 1], z[s + 2, k0 + 1], z[s + 3, k0 + 1] = a10, a11, a12, a13
    z[s, k0 + 2], z[s + 1, k0 + 2], z[s + 2, k0 + 2], z[s + 3, k0 + 2] = a20, a21, a22, a23
    z[s, k0 + 3], z[s + 1, k0 + 3], z[s + 2, k0 + 3], z[s + 3, k0 + 3] = a30, a31, a32, a33


@kernel(fastmath=_DOT)
def _tile4x1(w0, w1, w2, w3, g0, th, z, s, k0):
    """z[s, k0 + o] for o < 4: one sample (a class's last samples when not a multiple of 4)."""
    a0 = a1 = a2 = a3 = _Z32
    for j in range(th.shape[0]):
        t, y = th[j], g0[j]
        x0, x1, x2, x3 = w0[j], w1[j], w2[j], w3[j]
        a0 += (x0 if x0 > t else _Z32) * y
        a1 += (x1 if x1 > t else _Z32) * y
        a2 += (x2 if x2 > t else _Z32) * y
        a3 += (x3 if x3 > t else _Z32) * y
    z[s, k0], z[s, k0 + 1], z[s, k0 + 2], z[s, k0 + 3] = a0, a1, a2, a3


@kernel(fastmath=_DOT)
def _dot(w_row, g, th):
    """One output of one sample (the last outputs when K is not a multiple of 4)."""
    acc = _Z32
    for j in range(th.shape[0]):
        x = w_row[j]
        acc += (x if x > th[j] else _Z32) * g[j]
    return acc


@kernel
def _outputs(rows, g, th, z, k0):
    """z[:, k0 + o] for the (up to 4) rows of weights ``rows`` and every feature row of ``g``."""
    n = len(g)
    n4 = n - n % 4
    if len(rows) < 4:  # the last outputs when K is not a multiple of 4
        for o in range(len(rows)):
            for s in range(n):
                z[s, k0 + o] = _dot(rows[o], g[s], th)
        return
    w0, w1, w2, w3 = rows[0], rows[1], rows[2], rows[3]
    for s in range(0, n4, 4):
        _tile4x4(w0, w1, w2, w3, g[s], g[s + 1], g[s + 2], g[s + 3], th, z, s, k0)
    for s in range(n4, n):
        _tile4x1(w0, w1, w2, w3, g[s], th, z, s, k0)


@kernel
def _class_scores(
    weight, bias, features, order, starts, counts, theta, largest, compact_share, todo, out
):
    """out[order[s]] = logsumexp((W ⊙ 1[W > θ_i]) h̄_s + b) for the samples s of each group i in
    ``todo`` (rows order[starts[i]:starts[i] + counts[i]] of ``features``). ``largest``: each
    unit's largest weight (a unit with θ at or above it contributes nothing)."""
    k, d = weight.shape
    units = np.empty(d, np.int64)
    for i in todo:
        r0, n = starts[i], counts[i]
        kept = 0
        for j in range(d):
            if theta[i, j] < largest[j]:
                units[kept] = j
                kept += 1
        compact = kept < compact_share * d  # then copy out the kept units' weights
        if not compact:
            kept = d
            for j in range(d):
                units[j] = j
        th = theta[i][units[:kept]]
        g = np.empty((n, kept), np.float32)  # the class's features, on the units used
        for s in range(n):
            h = features[order[r0 + s]]
            for q in range(kept):
                g[s, q] = h[units[q]]
        block = np.empty((4, kept), np.float32)
        z = np.empty((n, k), np.float32)
        for k0 in range(0, k, 4):
            width = min(4, k - k0)
            if compact:
                for o in range(width):
                    for q in range(kept):
                        block[o, q] = weight[k0 + o, units[q]]
                _outputs(block[:width], g, th, z, k0)
            else:
                _outputs(weight[k0 : k0 + width], g, th, z, k0)
        for s in range(n):  # ops.logsumexp of the float32 logits
            row = z[s]
            top = row[0] + bias[0]
            for o in range(k):
                row[o] += bias[o]
                top = max(top, row[o])
            total = 0.0
            for o in range(k):
                total += np.exp(np.float32(row[o] - top))
            out[order[r0 + s]] = float(top) + np.log(total)


@kernel(fastmath=_DOT)
def _subtract4(row, e0, e1, e2, e3, w0, w1, w2, w3):
    """row −= e0·w0 + e1·w1 + e2·w2 + e3·w3 (one load and store of ``row`` for four rows)."""
    for o in range(row.shape[0]):
        row[o] -= e0 * w0[o] + e1 * w1[o] + e2 * w2[o] + e3 * w3[o]


@kernel(fastmath=_DOT)
def _subtract1(row, e0, w0):
    for o in range(row.shape[0]):
        row[o] -= e0 * w0[o]


@kernel
def _clipped_argmax(logits, above, shift, features, weight_t, lo, hi, tau, todo, out):
    """out[i] = argmax(logits[i] + shift·above[i] − Σ_{j : lo < h_ij <= hi} |h_ij − τ|·Wᵀ[j]) for
    i in ``todo`` (``above`` unread when shift = 0)."""
    d = features.shape[1]
    row = np.empty(logits.shape[1], np.float32)
    units = np.empty(d, np.int64)
    excess = np.empty(d, np.float32)
    for i in todo:
        h = features[i]
        n = 0
        for j in range(d):
            if lo < h[j] <= hi:
                units[n], excess[n] = j, abs(h[j] - tau)
                n += 1
        row[:] = logits[i]
        if shift != 0:
            row += shift * above[i]
        q = 0
        while q + 4 <= n:
            w0, w1 = weight_t[units[q]], weight_t[units[q + 1]]
            w2, w3 = weight_t[units[q + 2]], weight_t[units[q + 3]]
            _subtract4(row, excess[q], excess[q + 1], excess[q + 2], excess[q + 3], w0, w1, w2, w3)
            q += 4
        for rest in range(q, n):
            _subtract1(row, excess[rest], weight_t[units[rest]])
        out[i] = np.argmax(row)


@dataclass(frozen=True)
class ClipAnchors:
    """One split's head logits at a few clip values τ_a (quantiles of its own feature entries),
    for ĉ = argmax(W min(h, τ) + b) at any τ without a head pass:

        W min(h, τ) + b = L_a + (τ − τ_a)·A_a − Σ_{j : h_j between τ_a and τ} |h_j − τ|·W[:, j]

    with L_a = W min(h, τ_a) + b and A_a = W 1[h > τ_a] (float32, one product each, once per
    study), and τ_a = +inf giving the unclipped logits (A = 0). The anchor with the fewest
    entries between it and τ is used, one row of Wᵀ per such entry; when more than
    SPARSE_SHARE of the entries lie between, one head pass is cheaper and ``argmax`` declines."""

    taus: np.ndarray  # (A,) float32 ascending, then +inf
    logits: tuple[np.ndarray, ...]  # L per anchor, (N, K) float32
    above: tuple[np.ndarray, ...]  # A per finite anchor
    sample: np.ndarray  # sorted sample of the entries (to count the entries between)

    @classmethod
    def build(
        cls,
        features: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray,
        quantiles: tuple[float, ...] = ANCHOR_QUANTILES,
        sample_size: int = 65536,
        seed: int = 0,
    ) -> ClipAnchors:
        h = np.asarray(features, np.float32)
        w_t = np.asarray(weight, np.float32).T
        b = np.asarray(bias, np.float32)
        flat = h.ravel()
        pick = np.random.default_rng(seed).choice(flat.size, min(sample_size, flat.size), False)
        sample = np.sort(flat[pick]) if flat.size else np.zeros(1, np.float32)
        taus = np.unique(np.quantile(sample, quantiles).astype(np.float32))
        logits = [np.asarray(np.minimum(h, t) @ w_t + b, np.float32) for t in taus]
        above = [np.asarray((h > t).astype(np.float32) @ w_t, np.float32) for t in taus]
        logits.append(np.asarray(h @ w_t + b, np.float32))
        return cls(np.append(taus, np.float32(np.inf)), tuple(logits), tuple(above), sample)

    @staticmethod
    def fits(rows: int, classes: int) -> bool:
        """Whether the anchors of a split of ``rows`` samples and ``classes`` logits stay within
        ANCHOR_BYTES."""
        return (2 * len(ANCHOR_QUANTILES) + 1) * rows * classes * 4 <= ANCHOR_BYTES

    def argmax(self, features: np.ndarray, weight_t: np.ndarray, tau: float) -> np.ndarray | None:
        """(N,) argmax(W min(h, τ) + b) of the split's ``features``, or None (see the class)."""
        tau32 = np.float32(tau)
        between = [self._share(min(tau32, t), max(tau32, t)) for t in self.taus]
        best = int(np.argmin(between))
        if between[best] > SPARSE_SHARE:
            return None
        anchor = self.taus[best]
        finite = bool(np.isfinite(anchor))
        shift = np.float32(tau32 - anchor) if finite else np.float32(0)
        above = self.above[best] if finite else self.logits[best]  # unread when shift = 0
        lo, hi = min(tau32, anchor), max(tau32, anchor)
        out = np.empty(len(features), np.int64)
        args = (self.logits[best], above, shift, features, weight_t, lo, hi, tau32)
        parts = np.array_split(np.arange(len(features)), 4 * workers())
        parallel_map(lambda part: _clipped_argmax(*args, part, out), parts)
        return out

    def _share(self, lo: float, hi: float) -> float:
        """Estimated share of the entries in (lo, hi], from the sample."""
        inside = np.searchsorted(self.sample, hi, "right") - np.searchsorted(
            self.sample, lo, "right"
        )
        return float(inside) / self.sample.size


def class_scores(
    weight: np.ndarray,
    bias: np.ndarray,
    features: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    theta: np.ndarray,
    largest: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) float64: sample s of group i (rows ``order[starts[i]:starts[i] + counts[i]]`` of
    ``features`` (N, D) float32) scores logsumexp((W ⊙ 1[W > θ_i]) h_s + b), with W (K, D)
    float32, b (K,) and ``theta`` (groups, D) float32 thresholds per unit. ``largest``: W's
    column maxima (computed when not given)."""
    weight = np.ascontiguousarray(weight, np.float32)
    features = np.ascontiguousarray(features, np.float32)
    theta = np.ascontiguousarray(theta, np.float32)
    bias = np.ascontiguousarray(bias, np.float32)
    order = np.asarray(order, np.int64)
    starts, counts = np.asarray(starts, np.int64), np.asarray(counts, np.int64)
    if largest is None:
        largest = weight.max(axis=0) if len(weight) else np.full(weight.shape[1], -np.inf)
    largest = np.ascontiguousarray(largest, np.float32)
    out = np.empty(len(features), np.float64)
    # parts of about equal work (a group costs its samples, plus one pass for its masks)
    work = np.cumsum(counts + 1)
    parts = 4 * workers()
    cuts = np.searchsorted(work, work[-1] * np.arange(1, parts) / parts) if len(work) else []
    chunks = [c for c in np.split(np.arange(len(counts)), np.unique(cuts)) if c.size]

    def run(todo: np.ndarray) -> None:
        _class_scores(
            weight, bias, features, order, starts, counts, theta, largest, COMPACT_SHARE, todo, out
        )

    parallel_map(run, chunks)
    return out
