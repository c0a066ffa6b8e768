"""Exact order statistics and threshold masks of a column-scaled matrix, without forming it.

LINe's weight mask for class c compares every entry of P = a ⊙ W (P[k, j] = a_j·W[k, j] in
float64, a_j = |C[j, c]| >= 0) with the p-th percentile of all K·D entries of P. Forming P and
taking ``np.percentile`` costs a K·D selection per class (~25 ms at K = 1,000, D = 2,048); a
search trial needs it for every predicted class. This module does the same exactly, from
parameter-independent tables built once per study, in compiled loops (numba):

* :class:`SortedColumns` — W's columns sorted once. Because x ↦ fl(a·x) is non-decreasing for
  a >= 0 (rounding is monotone), column j of P is sorted in the same order: the entries of P at
  or below a value v are a prefix of each sorted column, found by a binary search that forms
  only the products it compares.
* :class:`Sketch` — a fixed random sample of P's positions, its values sorted per row of a
  (per class). It proposes a bracket around the wanted ranks; exact counts check it and bisect
  it (over the sample's values) until a few hundred entries remain, which are formed and sorted.
* :func:`column_thresholds` — "fl(a_j·W[k, j]) > t" is "W[k, j] > θ_j" for one float32 θ_j,
  the largest float32 x with fl(a_j·x) <= t: the mask becomes one float32 compare.

:func:`percentile` equals ``np.percentile(a[:, None]·W.T, q)`` bit for bit, and
``W > column_thresholds(a, t)`` equals ``a·W > t`` entry for entry (tests/search/
test_scaled_columns.py). Nothing here is approximate: the sample only decides where to look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from oodcache.search.jit import kernel
from oodcache.search.ops import percentile_of_order_statistics, percentile_ranks
from oodcache.search.parallel import parallel_map, workers

F32_MAX = np.float32(np.finfo(np.float32).max)

#: largest bracket (entries) formed and sorted; wider ones are bisected first
BAND = 4096
#: spacing of the coarse copy of each sorted column (SortedColumns.coarse)
STRIDE = 32
#: sample values counted per pass over the columns (the bracket shrinks PIVOTS + 1 times)
PIVOTS = 1


@dataclass(frozen=True)
class SortedColumns:
    """W (K, D) with each column sorted ascending, as ``columns`` (D, K) float32 (−0 → +0), and
    ``coarse`` (D, ⌈K / STRIDE⌉): every STRIDE-th entry of each sorted column."""

    columns: np.ndarray
    coarse: np.ndarray

    @classmethod
    def build(cls, weight: np.ndarray) -> SortedColumns:
        w = np.asarray(weight, np.float32)
        if not np.isfinite(w).all():
            raise ValueError("weights must be finite")
        columns = np.ascontiguousarray(np.sort(w.T, axis=1) + np.float32(0.0))
        coarse = np.ascontiguousarray(columns[:, ::STRIDE])
        columns.flags.writeable = coarse.flags.writeable = False
        return cls(columns, coarse)

    @property
    def shape(self) -> tuple[int, int]:
        """(K, D) of the original matrix."""
        d, k = self.columns.shape
        return k, d


# --------------------------------------------------------------------------- θ per column
@kernel
def _bisect(a: float, t: float) -> np.float32:
    """The largest float32 x <= F32_MAX with fl(a·x) <= t, by bisection over float32's order
    (a > 0): for the rare entries whose products overflow, where ulp steps do not settle."""
    probe = np.empty(1, np.float32)
    bits = probe.view(np.int32)

    def value(key: int) -> float:  # order key (−0 and +0 → 0) to float
        bits[0] = key if key >= 0 else (-key) | -0x80000000
        return float(probe[0])

    lo, hi = -0x7F800000, 0x7F7FFFFF  # −inf, F32_MAX
    if a * value(hi) <= t:
        return np.float32(F32_MAX)
    for _ in range(34):
        mid = (lo + hi) // 2
        if a * value(mid) <= t:
            lo = mid
        else:
            hi = mid
    return np.float32(value(lo))


@kernel
def _threshold(a, t):
    """The largest float32 x with fl(a·x) <= t (a >= 0; see column_thresholds)."""
    inf, top = np.float32(np.inf), np.float32(F32_MAX)
    if not a > 0:  # a = 0: every product is ±0, kept iff 0 > t
        return inf if t >= 0 else -inf
    guess = t / a
    guess = 0.0 if math.isnan(guess) else min(max(guess, -float(top)), float(top))
    theta = np.float32(guess)
    for _ in range(3):  # the guess is within an ulp or two; each pass moves one ulp
        if a * float(theta) > t:
            theta = np.nextafter(theta, -inf)
            continue
        up = np.nextafter(theta, inf)
        if theta < top and a * float(up) <= t:
            theta = up
            continue
        return theta
    return _bisect(a, t)


@kernel
def _thresholds(a, t, rows, todo, out):
    """out[i, j] = _threshold(a[rows[i], j], t[i]) for i in ``todo``."""
    for i in todo:
        ai, ti = a[rows[i]], t[i]
        for j in range(a.shape[1]):
            out[i, j] = _threshold(ai[j], ti)


def column_thresholds(a: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """θ float32, shaped like ``a``, with ``W[k, j] > θ[..., j]`` ⟺ ``fl(a[..., j]·W[k, j]) > t``
    for every finite float32 W[k, j] (a >= 0, float64 products; ``t`` a scalar or one value per
    row of a 2-D ``a``, shape (R, 1)): θ is the largest float32 x with fl(a·x) <= t (−inf when
    there is none, so every entry passes; +inf where a = 0 and t >= 0)."""
    a64, t64 = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(t, np.float64))
    flat_a, flat_t = np.ascontiguousarray(a64).reshape(-1, 1), np.ascontiguousarray(t64).ravel()
    out = np.empty((flat_a.size, 1), np.float32)
    _thresholds(flat_a, flat_t, np.arange(flat_a.size), np.arange(flat_a.size), out)
    return out.reshape(a64.shape)


def row_thresholds(scales: np.ndarray, rows: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(R, D) float32: row i is ``column_thresholds(scales[rows[i]], t[i])``, on the pool."""
    scales = np.ascontiguousarray(scales, np.float64)
    rows, t = np.asarray(rows, np.int64), np.ascontiguousarray(t, np.float64)
    out = np.empty((len(rows), scales.shape[1]), np.float32)
    parallel_map(lambda part: _thresholds(scales, t, rows, part, out), _parts(len(rows)))
    return out


# --------------------------------------------------------------------------- selection
@kernel
def _search(col, a, v, left, right):
    """#{k : fl(a·col[k]) <= v} of a sorted ``col``, known to lie in [left, right]. The ends are
    tried first (two independent loads): a column wholly on one side needs no search."""
    if left == right or a * float(col[left]) > v:
        return left
    if a * float(col[right - 1]) <= v:
        return right
    left += 1
    right -= 1
    while left < right:
        mid = (left + right) >> 1
        if a * float(col[mid]) <= v:
            left = mid + 1
        else:
            right = mid
    return left


@kernel
def _count(a, columns, v, lo, hi, active, out):
    """Σ_j #{k : fl(a_j·W_sorted[j, k]) <= v} - Σ_j lo[j] over the ``active`` columns j, each
    searched only in [lo[j], hi[j]] (all entries below lo[j] are known <= v, all from hi[j] on
    > v; the other columns have lo = hi); out[j] = that column's count."""
    total = 0
    for j in active:
        out[j] = _search(columns[j], a[j], v, lo[j], hi[j])
        total += out[j] - lo[j]
    return total


@kernel
def _select(
    scales, columns, sketch, rungs, rung_positions, rung_counts, rows, todo, first, last, band, out
):
    """out[i] = the entries at 0-based ranks (first, last) of the products of row rows[i] of
    ``scales`` (its sample: the same row of ``sketch`` and of the rung tables), for i in
    ``todo``. The two rungs around the ranks bracket them (their per-column counts are stored);
    a bisection over the sample's values between the rungs narrows the bracket (exact counts:
    a binary search per column, only in the columns with entries inside) to at most ``band``
    entries, which are formed and partitioned."""
    d, k = columns.shape
    n, m = k * d, sketch.shape[1]
    pos_lo = np.empty(d, np.int64)
    pos_hi = np.empty(d, np.int64)
    probe = np.empty(d, np.int64)
    inf = np.inf
    for r in todo:
        row = rows[r]
        a = scales[row]
        sk = sketch[row]
        i_lo, c_lo, i_hi, c_hi = -1, 0, m, n  # below and above every entry
        pos_lo[:] = 0
        pos_hi[:] = k
        split = False
        for rung in range(len(rungs)):
            c = rung_counts[row, rung]
            if c <= first:
                i_lo, c_lo = rungs[rung], c
                pos_lo[:] = rung_positions[row, rung]
            elif c > last:
                i_hi, c_hi = rungs[rung], c
                pos_hi[:] = rung_positions[row, rung]
                break
            else:  # first < c <= last: the two ranks straddle this rung's value
                probe[:] = rung_positions[row, rung]
                split = True
                break
        active = np.flatnonzero(pos_lo < pos_hi)  # the columns with entries in the bracket
        if not split:
            probe[:] = pos_lo
        while not split and c_hi - c_lo > band and i_hi - i_lo > 1:
            mid = (i_lo + i_hi) >> 1
            c = c_lo + _count(a, columns, sk[mid], pos_lo, pos_hi, active, probe)
            if c <= first:
                i_lo, c_lo = mid, c
                pos_lo[active] = probe[active]
            elif c > last:
                i_hi, c_hi = mid, c
                pos_hi[active] = probe[active]
            else:  # first < c <= last: the two ranks straddle sk[mid]
                split = True
                break
            active = active[pos_lo[active] < pos_hi[active]]
        if split:  # rank first: the largest entry <= sk[mid]; rank last: the next one
            below, above = -inf, inf
            for j in range(d):
                if probe[j] > 0:
                    below = max(below, a[j] * float(columns[j, probe[j] - 1]))
                if probe[j] < k:
                    above = min(above, a[j] * float(columns[j, probe[j]]))
            out[r, 0], out[r, 1] = below, above
            continue
        inside = np.empty(c_hi - c_lo, np.float64)
        at = 0
        for j in range(d):
            for p in range(pos_lo[j], pos_hi[j]):
                inside[at] = a[j] * float(columns[j, p])
                at += 1
        picked = np.partition(inside, np.array([first - c_lo, last - c_lo]))
        out[r, 0] = picked[first - c_lo]
        out[r, 1] = picked[last - c_lo]


def order_statistics(
    scales: np.ndarray,
    table: SortedColumns,
    sketch: Sketch,
    ranks: tuple[int, ...],
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """(R, len(ranks)): for each row a of ``scales`` (or each of the given ``rows``), the
    entries of P = a ⊙ W (float64) at the given 0-based ascending ``ranks`` (one, or two
    adjacent), exactly: equal to ``np.sort((a[:, None]·W.T).ravel())[list(ranks)]``.
    ``sketch`` (:class:`Sketch`, built for these scales and this table) only decides where to
    look: exact counts narrow its bracket, and the entries inside the final one are formed and
    partitioned. Rows run on the pool's threads."""
    scales = np.ascontiguousarray(scales, np.float64)
    rows = np.arange(len(scales)) if rows is None else np.asarray(rows, np.int64)
    out = np.empty((len(rows), 2))
    first, last = ranks[0], ranks[-1]

    def run(part: np.ndarray) -> None:
        _select(
            scales,
            table.columns,
            sketch.values,
            sketch.rungs,
            sketch.rung_positions,
            sketch.rung_counts,
            rows,
            part,
            first,
            last,
            BAND,
            out,
        )

    parallel_map(run, _parts(len(rows)))
    return out[:, : len(ranks)]


def _parts(n: int) -> list[np.ndarray]:
    """0..n-1 in a few runs for the pool's threads."""
    return np.array_split(np.arange(n), max(1, min(n, 4 * workers())))


@dataclass(frozen=True)
class Sketch:
    """For each row a of A (R, D): the values of P = a ⊙ W at ``m`` fixed random entries, sorted
    (``values``, (R, m) float64), and at every ``step``-th of them (the ``rungs``, sample
    indices) the exact count of P's entries at or below, per column (``rung_positions``,
    (R, rungs, D)) and in all (``rung_counts``, (R, rungs)). Two rungs bracket any rank, with
    about K·D·step/m entries between them; the sample's values between two rungs guide the
    rest of the search."""

    values: np.ndarray
    rungs: np.ndarray
    rung_positions: np.ndarray
    rung_counts: np.ndarray

    @classmethod
    def build(
        cls,
        scales: np.ndarray,
        table: SortedColumns,
        m: int = 16384,
        step: int = 256,
        seed: int = 0,
    ) -> Sketch:
        scales = np.ascontiguousarray(scales, np.float64)
        k, d = table.shape
        rng = np.random.default_rng(seed)
        flat = rng.choice(k * d, size=min(m, k * d), replace=False)
        cols, places = np.divmod(flat, k)  # entries of the sorted columns: any entries of W
        w = table.columns[cols, places].astype(np.float64)
        values = np.sort(scales[:, cols] * w[None, :], axis=1)
        rungs = np.arange(0, values.shape[1], max(1, step))
        positions = np.empty((len(scales), len(rungs), d), np.uint16 if k < 2**16 else np.int64)
        counts = np.empty((len(scales), len(rungs)), np.int64)
        parallel_map(
            lambda part: _rung_positions(
                scales, table.columns, values, rungs, part, positions, counts
            ),
            _parts(len(scales)),
        )
        for array in (values, rungs, positions, counts):
            array.flags.writeable = False
        return cls(values, rungs, positions, counts)


@kernel
def _rung_positions(scales, columns, values, rungs, todo, positions, counts):
    """positions[r, i, j] = #{k : fl(scales[r, j]·W_sorted[j, k]) <= values[r, rungs[i]]} and
    counts[r, i] their sum over j, for r in ``todo`` (a merge of each column with the rungs)."""
    d, k = columns.shape
    for r in todo:
        counts[r, :] = 0
        for j in range(d):
            aj, col, p = scales[r, j], columns[j], 0
            for i in range(len(rungs)):
                v = values[r, rungs[i]]
                while p < k and aj * float(col[p]) <= v:
                    p += 1
                positions[r, i, j] = p
                counts[r, i] += p


def percentiles(
    scales: np.ndarray,
    table: SortedColumns,
    sketch: Sketch,
    q: float,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """(R,): row r is ``np.percentile(scales[r][None, :] * W64, q)`` (linear), bit for bit, for
    every row of ``scales`` or the given ``rows``."""
    k, d = table.shape
    stats = order_statistics(scales, table, sketch, percentile_ranks(k * d, q), rows)

    def interpolated(row: np.ndarray) -> float:
        return percentile_of_order_statistics(k * d, q, lambda _ranks: list(row))

    return np.array([interpolated(row) for row in stats])


def percentile(a: np.ndarray, table: SortedColumns, sketch: Sketch, q: float) -> float:
    """``np.percentile(a[None, :] * W64, q)`` for one row ``a`` (D,), its sketch of one row."""
    return float(percentiles(a[None, :], table, sketch, q)[0])
