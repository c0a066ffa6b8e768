"""Exact order statistics and threshold masks of a column-scaled matrix, without forming it.

LINe's weight mask for class c compares every entry of P = a ⊙ W (P[k, j] = a_j·W[k, j] in
float64, a_j = |C[j, c]| >= 0) with the p-th percentile of all K·D entries of P. Forming P and
taking ``np.percentile`` costs a K·D selection per class (~25 ms at K = 1,000, D = 2,048); a
search trial needs it for every predicted class. This module does the same exactly, from
parameter-independent tables built once per study:

* :class:`SortedColumns` — W's columns sorted once, as searchable keys. Because x ↦ fl(a·x) is
  non-decreasing for a >= 0 (rounding is monotone), column j of P is sorted in the same order,
  and "fl(a_j·W[k, j]) <= t" is "W[k, j] <= θ_j" for one float32 θ_j (:func:`column_thresholds`,
  exact: the largest float32 x with fl(a_j·x) <= t). Counting the entries of P at or below t is
  then one ``searchsorted`` of D keys.
* :class:`Sketch` — a fixed random sample of P's positions, its values sorted per row of a
  (per class), giving a bracket around any rank; the bracket is checked with exact counts,
  narrowed, and the few entries inside it are formed and partitioned.

:func:`percentile` equals ``np.percentile(a[:, None]·W.T, q)`` bit for bit, and
``W > column_thresholds(a, t)`` equals ``a·W > t`` entry for entry (tests/search/
test_scaled_columns.py). Nothing here is approximate: the sample only decides where to look.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oodcache.search.ops import percentile_of_order_statistics, percentile_ranks

F32_MAX = np.float32(np.finfo(np.float32).max)
_INF32 = np.float32(np.inf)
_DOWN = np.float32(-np.inf)


def _ordered_bits(x: np.ndarray) -> np.ndarray:
    """uint64 keys with the float32 order: negative values flipped, positives offset (−0 → +0)."""
    bits = (np.asarray(x, np.float32) + np.float32(0.0)).view(np.uint32).astype(np.uint64)
    negative = bits >= 0x80000000
    return np.where(negative, bits ^ 0xFFFFFFFF, bits | 0x80000000)


@dataclass(frozen=True)
class SortedColumns:
    """W (K, D) with each column sorted ascending, as ``columns`` (D, K) float32 and one sorted
    uint64 key per entry (column index in the high 32 bits, the value's order in the low 32)."""

    columns: np.ndarray
    keys: np.ndarray

    @classmethod
    def build(cls, weight: np.ndarray) -> SortedColumns:
        w = np.asarray(weight, np.float32)
        if not np.isfinite(w).all():
            raise ValueError("weights must be finite")
        columns = np.ascontiguousarray(np.sort(w.T, axis=1) + np.float32(0.0))  # −0 → +0 (keys)
        d = columns.shape[0]
        keys = (np.arange(d, dtype=np.uint64)[:, None] << np.uint64(32)) | _ordered_bits(columns)
        columns.flags.writeable = False
        keys = keys.ravel()
        keys.flags.writeable = False
        return cls(columns, keys)

    @property
    def shape(self) -> tuple[int, int]:
        """(K, D) of the original matrix."""
        d, k = self.columns.shape
        return k, d

    def counts_at_or_below(self, theta: np.ndarray) -> np.ndarray:
        """#{k : W[k, j] <= θ[..., j]} for each column j (int64, shaped like θ, (D,) or (R, D)).
        Only a θ inside its column's range is searched: below the column it counts 0, at or
        above its largest entry K."""
        k, d = self.shape
        single = np.ndim(theta) == 1
        theta_t = np.atleast_2d(theta).T  # (D, R): each column's queries together
        counts = np.where(theta_t >= self.columns[:, -1:], k, 0)
        cols, rows = np.nonzero((theta_t >= self.columns[:, :1]) & (counts == 0))
        if cols.size:
            queries = (cols.astype(np.uint64) << np.uint64(32)) | _ordered_bits(
                theta_t[cols, rows]
            )
            found = np.searchsorted(self.keys, queries, side="right")
            counts[cols, rows] = found - cols * k
        return counts[:, 0] if single else counts.T

    def extremes(self, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(smallest, largest) product of each column, fl(a_j·min W[:, j]) and fl(a_j·max W[:, j]),
        shaped like ``scales`` (a >= 0 keeps the order)."""
        return scales * self.columns[:, 0], scales * self.columns[:, -1]

    def counts_at_or_below_rows(
        self, scales: np.ndarray, v: np.ndarray, extremes: tuple[np.ndarray, np.ndarray]
    ) -> np.ndarray:
        """(R, D): #{k : fl(scales[r, j]·W[k, j]) <= v[r]} per row r and column j. A column whose
        smallest product is above v counts 0, one whose largest is at or below v counts K; only
        the others need θ (:func:`column_thresholds`) and a search."""
        k, d = self.shape
        smallest, largest = extremes
        v = v[:, None]
        counts = np.where(largest <= v, k, 0)
        cols, rows = np.nonzero(((smallest <= v) & (largest > v)).T)  # column by column
        if cols.size:
            theta = column_thresholds(scales[rows, cols], v[rows, 0])
            queries = (cols.astype(np.uint64) << np.uint64(32)) | _ordered_bits(theta)
            counts[rows, cols] = np.searchsorted(self.keys, queries, side="right") - cols * k
        return counts


def column_thresholds(a: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """θ float32, shaped like ``a``, with ``W[k, j] > θ[..., j]`` ⟺ ``fl(a[..., j]·W[k, j]) > t``
    for every finite float32 W[k, j] (a >= 0, float64 products; ``t`` a scalar or one value per
    row of a 2-D ``a``, shape (R, 1)): θ is the largest float32 x with fl(a·x) <= t (−inf when
    there is none, so every entry passes; +inf where a = 0 and t >= 0)."""
    a = np.asarray(a, np.float64)
    t = np.asarray(t, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        guess = np.clip(t / a, -float(F32_MAX), float(F32_MAX))
    theta = np.where(np.isnan(guess), 0.0, guess).astype(np.float32)
    live = a > 0
    for _ in range(3):  # the guess is within an ulp or two; each pass moves one ulp
        with np.errstate(invalid="ignore", over="ignore"):
            high = live & (a * theta > t)
            theta = np.where(high, np.nextafter(theta, _DOWN), theta)
            up = np.nextafter(theta, _INF32)
            low = live & ~high & (a * up <= t) & (theta < F32_MAX)
        theta = np.where(low, up, theta)
        if not (high.any() or low.any()):
            break
    else:  # still moving (products that overflow): bisect those entries' float32 order
        stuck = np.broadcast_to(high | low, theta.shape)
        theta = np.array(theta, copy=True)
        t_b = np.broadcast_to(t, theta.shape)
        theta[stuck] = _bisect(np.broadcast_to(a, theta.shape)[stuck], t_b[stuck])
    # a = 0: every product is ±0, kept iff 0 > t
    return np.where(live, theta, np.where(t >= 0, _INF32, _DOWN)).astype(np.float32)


def _bisect(a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The largest float32 x <= F32_MAX with fl(a·x) <= t, by bisection over float32's order
    (a > 0; x = −inf satisfies it always). For the rare entries the ulp steps do not settle."""

    def value(key: np.ndarray) -> np.ndarray:  # order key (−0 and +0 → 0) to float32
        bits = np.where(key >= 0, key, (-key) | 0x80000000).astype(np.uint32)
        return bits.view(np.float32)

    lo = np.full(a.shape, -0x7F800000, np.int64)  # −inf
    hi = np.full(a.shape, 0x7F7FFFFF, np.int64)  # F32_MAX
    with np.errstate(over="ignore", invalid="ignore"):
        top = a * value(hi) <= t
        for _ in range(34):
            mid = (lo + hi) // 2
            ok = a * value(mid) <= t
            lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    return np.where(top, F32_MAX, value(lo))


@dataclass(frozen=True)
class Sketch:
    """The values of P = a ⊙ W at ``m`` fixed random positions, sorted, for each row of A (R, D):
    ``values`` (R, m) float64. Only a guide for where an order statistic lies."""

    values: np.ndarray

    @classmethod
    def build(
        cls, scales: np.ndarray, weight: np.ndarray, m: int = 16384, seed: int = 0
    ) -> Sketch:
        k, d = weight.shape
        rng = np.random.default_rng(seed)
        flat = rng.choice(k * d, size=min(m, k * d), replace=False)
        rows, cols = np.divmod(flat, d)
        w = np.asarray(weight, np.float64)[rows, cols]
        values = np.sort(np.asarray(scales, np.float64)[:, cols] * w[None, :], axis=1)
        values.flags.writeable = False
        return cls(values)


#: largest bracket (entries) formed and partitioned directly; wider ones are narrowed first
BAND = 16384
_Z = 4.5  # bracket half-width in binomial standard deviations of the sample
_ROUNDS = 4  # narrowing rounds before the bracket is formed whatever its width


def order_statistics(
    scales: np.ndarray,
    table: SortedColumns,
    sketch: np.ndarray,
    ranks: tuple[int, ...],
    sketch_rows: np.ndarray | None = None,
) -> np.ndarray:
    """(R, len(ranks)): for each row a of ``scales`` (R, D), the entries of P = a ⊙ W (float64)
    at the given 0-based ascending ``ranks`` (one, or two adjacent), exactly: equal to
    ``np.sort((a[:, None]·W.T).ravel())[list(ranks)]``. ``sketch`` (R, m) holds the rows'
    sorted sample values (:class:`Sketch`): it only proposes brackets of sample indices; exact
    counts of the entries at or below each end check them (an end that misses moves to the
    matrix's extreme) and the entries inside the final bracket are formed and partitioned.
    ``sketch_rows``: the rows of ``sketch`` that belong to ``scales``' rows (default: all, in
    order), so that a subset of classes needs no copy of the sketch."""
    scales = np.asarray(scales, np.float64)
    rows, m = len(scales), sketch.shape[1]
    if sketch_rows is None:
        sketch_rows = np.arange(rows)
    k, d = table.shape
    first, last = ranks[0], ranks[-1]
    lo_i, hi_i = _initial_bracket(first, last, k * d, m)
    lo = np.full(rows, lo_i)
    hi = np.full(rows, hi_i)
    extremes = table.extremes(scales)
    # the ends of the index range: just below the smallest product, the largest product
    smallest = np.nextafter(extremes[0].min(axis=1), -np.inf)
    largest = extremes[1].max(axis=1)

    def values(index: np.ndarray, which: np.ndarray) -> np.ndarray:
        inside = np.clip(index, 0, m - 1)
        v = sketch[sketch_rows[which], inside]
        return np.where(index < 0, smallest[which], np.where(index >= m, largest[which], v))

    everyone = np.arange(rows)
    lo_counts = table.counts_at_or_below_rows(scales, values(lo, everyone), extremes)
    hi_counts = table.counts_at_or_below_rows(scales, values(hi, everyone), extremes)
    for _ in range(_ROUNDS):
        below, upto = lo_counts.sum(axis=1), hi_counts.sum(axis=1)
        miss_lo, miss_hi = below > first, upto <= last
        wide = ~miss_lo & ~miss_hi & (upto - below > BAND) & (hi - lo > 2)
        if not (miss_lo.any() or miss_hi.any() or wide.any()):
            break
        new_lo, new_hi = _narrowed(lo, hi, below, upto, first, last, wide)
        new_lo[miss_lo], new_hi[miss_hi] = -1, m  # a miss (rare): go to the extreme
        for index, new, counts, valid in (
            (lo, new_lo, lo_counts, lambda c: c.sum(axis=1) <= first),
            (hi, new_hi, hi_counts, lambda c: c.sum(axis=1) > last),
        ):
            moved = np.flatnonzero(new != index)
            if moved.size:
                fresh = table.counts_at_or_below_rows(
                    scales[moved],
                    values(new[moved], moved),
                    (extremes[0][moved], extremes[1][moved]),
                )
                ok = valid(fresh)  # a narrowed end that misses keeps the old, checked one
                index[moved[ok]], counts[moved[ok]] = new[moved[ok]], fresh[ok]
    blocks = [slice(i, i + 64) for i in range(0, rows, 64)]  # bounds the formed products' memory
    picked = [_pick(scales[b], table, lo_counts[b], hi_counts[b], ranks) for b in blocks]
    return np.concatenate(picked) if picked else np.empty((0, len(ranks)))


def _pick(
    scales: np.ndarray,
    table: SortedColumns,
    lo: np.ndarray,
    hi: np.ndarray,
    ranks: tuple[int, ...],
) -> np.ndarray:
    """(R, len(ranks)): the entries at ``ranks`` of each row, from the brackets whose per-column
    counts are ``lo`` and ``hi`` (R, D): the products inside are formed in float64 (all rows at
    once) and partitioned row by row."""
    k, d = table.shape
    lengths = (hi - lo).ravel()
    starts = (np.arange(d) * k + lo).ravel()  # in the flattened sorted columns
    flat = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    row_of = np.repeat(np.arange(len(scales)), (hi - lo).sum(axis=1))
    band = scales[row_of, flat // k] * table.columns.ravel()[flat].astype(np.float64)
    bounds = np.cumsum([0, *(hi - lo).sum(axis=1)])
    below = lo.sum(axis=1)
    out = np.empty((len(scales), len(ranks)))
    for r in range(len(scales)):
        picks = [rank - int(below[r]) for rank in ranks]
        part = np.partition(band[bounds[r] : bounds[r + 1]], picks)
        out[r] = part[picks]
    return out


def _initial_bracket(first: int, last: int, n: int, m: int) -> tuple[int, int]:
    """Sample indices around the ranks' expected places, _Z binomial deviations out."""
    f_lo, f_hi = (first + 0.5) / n, (last + 0.5) / n
    half_lo = _Z * np.sqrt(m * f_lo * (1 - f_lo)) + 2
    half_hi = _Z * np.sqrt(m * f_hi * (1 - f_hi)) + 2
    return max(-1, int(np.floor(f_lo * m - half_lo))), min(m, int(np.ceil(f_hi * m + half_hi)))


def _narrowed(
    lo: np.ndarray,
    hi: np.ndarray,
    below: np.ndarray,
    upto: np.ndarray,
    first: int,
    last: int,
    wide: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Tighter sample brackets inside [lo, hi] for the ``wide`` rows: the sample points between
    the ends are a uniform sample of the bracket's entries, so the ranks sit near the same
    fractions of them."""
    new_lo, new_hi = lo.copy(), hi.copy()
    w = np.flatnonzero(wide)
    inside = (hi[w] - lo[w]).astype(np.float64)
    width = (upto[w] - below[w]).astype(np.float64)
    f_lo = np.clip((first - below[w] + 0.5) / width, 0.0, 1.0)
    f_hi = np.clip((last - below[w] + 0.5) / width, 0.0, 1.0)
    spread_lo = _Z * np.sqrt(inside * f_lo * (1 - f_lo)) + 2
    spread_hi = _Z * np.sqrt(inside * f_hi * (1 - f_hi)) + 2
    new_lo[w] = np.maximum(lo[w], np.floor(lo[w] + f_lo * inside - spread_lo).astype(int))
    new_hi[w] = np.minimum(hi[w], np.ceil(lo[w] + f_hi * inside + spread_hi).astype(int))
    new_hi[w] = np.maximum(new_hi[w], new_lo[w] + 1)
    return new_lo, new_hi


def percentiles(
    scales: np.ndarray,
    table: SortedColumns,
    sketch: np.ndarray,
    q: float,
    sketch_rows: np.ndarray | None = None,
) -> np.ndarray:
    """(R,): row r is ``np.percentile(scales[r][None, :] * W64, q)`` (linear), bit for bit."""
    k, d = table.shape
    stats = order_statistics(scales, table, sketch, percentile_ranks(k * d, q), sketch_rows)

    def interpolated(row: np.ndarray) -> float:
        return percentile_of_order_statistics(k * d, q, lambda _ranks: list(row))

    return np.array([interpolated(row) for row in stats])


def percentile(a: np.ndarray, table: SortedColumns, sample: np.ndarray, q: float) -> float:
    """``np.percentile(a[None, :] * W64, q)`` for one row ``a`` (D,) and its sketch row."""
    return float(percentiles(a[None, :], table, sample[None, :], q)[0])
