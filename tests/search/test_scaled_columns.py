"""Exact selection over a column-scaled matrix (oodcache/search/scaled_columns.py), LINe's
perc_{p_w}: equal to np.percentile of the formed float64 products bit for bit, and the float32
column thresholds give the same mask as comparing the products."""

from __future__ import annotations

import numpy as np
import pytest

from oodcache.search import scaled_columns as sc
from oodcache.search.ops import percentile_of_sorted

QS = [0.0, 1e-4, 0.3, 10.0, 33.3, 50.0, 62.5, 77.7, 90.0, 99.0, 99.99, 100.0]


def awkward(rng: np.random.Generator, k: int, d: int, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """W (k, d) float32 and scales (d,) with ties, zeros, −0, zero and extreme scales."""
    w = rng.normal(0, 1, (k, d)).astype(np.float32)
    a = np.abs(rng.normal(0, 1, d))
    if kind % 3 == 0:  # many ties within and across columns
        w = np.round(w, 1).astype(np.float32)
    if kind % 4 == 0:  # zeros and a negative zero
        w[rng.random((k, d)) < 0.2] = 0.0
        w[0, 0] = np.float32(-0.0)
    if kind % 5 == 0:  # columns with a zero scale, and tied scales
        a[rng.random(d) < 0.3] = 0.0
        a = np.round(a, 1)
    if kind % 7 == 0:  # tiny and huge scales (products near under- and overflow of float32 θ)
        a = a * 10.0 ** rng.integers(-300, 300, d)
    return w, a


@pytest.mark.parametrize("kind", range(21))
def test_percentile_equals_numpy_bit_for_bit(kind: int) -> None:
    rng = np.random.default_rng(kind)
    k, d = int(rng.integers(1, 30)), int(rng.integers(1, 40))
    w, a = awkward(rng, k, d, kind)
    table = sc.SortedColumns.build(w)
    m = int(rng.integers(1, 64))
    sketch = sc.Sketch.build(a[None, :], table, m=m, step=int(rng.integers(1, m + 1)), seed=kind)
    products = a[None, :] * w.astype(np.float64)
    for q in QS:
        want = np.percentile(products, q)
        got = sc.percentile(a, table, sketch, q)
        assert got == want, (q, got, want)


def test_many_rows_and_narrowing_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small BAND forces the bisection between rungs (and ranks straddling a sample value); a
    tiny sketch gives wide brackets; a huge BAND partitions the rungs' bracket whole; a sample
    of every entry makes rungs and bisection land on the wanted entries themselves."""
    rng = np.random.default_rng(7)
    k, d, r = 60, 50, 9
    w = rng.normal(0, 1, (k, d)).astype(np.float32)
    scales = np.abs(rng.normal(0, 1, (r, d)))
    scales[3] = 0.0  # a class whose products are all zero
    table = sc.SortedColumns.build(w)
    for band, m, step in ((16, 512, 64), (64, 5, 2), (1 << 20, 40, 40), (4, k * d, 300)):
        monkeypatch.setattr(sc, "BAND", band)
        sketch = sc.Sketch.build(scales, table, m=m, step=step)
        for q in QS:
            got = sc.percentiles(scales, table, sketch, q)
            want = [np.percentile(s[None, :] * w.astype(np.float64), q) for s in scales]
            assert got.tolist() == want, (band, m, q)
            rows = np.array([8, 3, 0, 3])  # a subset of the rows (classes), in any order
            some = sc.percentiles(scales, table, sketch, q, rows)
            assert some.tolist() == [want[r] for r in rows], (band, m, q)


@pytest.mark.parametrize("kind", range(14))
def test_column_thresholds_give_the_product_mask(kind: int) -> None:
    rng = np.random.default_rng(100 + kind)
    w, a = awkward(rng, 25, 30, kind)
    products = a[None, :] * w.astype(np.float64)
    cuts = [0.0, -0.0, np.inf, -np.inf, 1e-300, -1e-300]
    cuts += rng.choice(products.ravel(), 10).tolist()  # exactly on products (ties at t)
    cuts += (rng.normal(0, 1, 10) * np.abs(products).max()).tolist()
    for t in cuts:
        theta = sc.column_thresholds(a, t)
        assert theta.dtype == np.float32
        np.testing.assert_array_equal(w > theta[None, :], products > t, err_msg=f"t={t!r}")


def test_thresholds_for_many_rows_match_one_by_one() -> None:
    rng = np.random.default_rng(3)
    w, _ = awkward(rng, 20, 16, 0)
    scales = np.abs(rng.normal(0, 1, (5, 16)))
    t = rng.normal(0, 1, 5)
    many = sc.column_thresholds(scales, t[:, None])
    for row, (s, tr) in enumerate(zip(scales, t, strict=True)):
        np.testing.assert_array_equal(many[row], sc.column_thresholds(s, tr))
    rows = np.array([4, 0, 4, 2])  # any rows, repeated, in any order
    picked = sc.row_thresholds(scales, rows, t[rows])
    np.testing.assert_array_equal(picked, many[rows])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_percentile_of_sorted_equals_numpy(dtype: type) -> None:
    """The O(1) percentile of sorted entries (ReAct's c, DICE's, LINe's perc_{p_a}) and the
    shared interpolation, against np.percentile, bit for bit, in the entries' dtype."""
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 10, 1001):
        x = (rng.normal(size=n) * 10.0 ** rng.integers(-3, 3)).astype(dtype)
        x[: n // 4] = x[0]  # ties
        ordered = np.sort(x)
        for q in [*QS, 12.345678, 87.654321, 50.00001]:
            assert percentile_of_sorted(ordered, q) == float(np.percentile(x, q)), (n, q)


def test_sketch_rungs_count_exactly() -> None:
    rng = np.random.default_rng(11)
    w, _ = awkward(rng, 40, 30, 12)  # ties and zeros
    scales = np.abs(rng.normal(0, 1, (3, 30)))
    scales[1, ::4] = 0.0
    sketch = sc.Sketch.build(scales, sc.SortedColumns.build(w), m=200, step=7)
    assert sketch.rungs.tolist() == list(range(0, 200, 7))
    for r, a in enumerate(scales):
        products = a[None, :] * w.astype(np.float64)
        assert (np.diff(sketch.values[r]) >= 0).all()
        for i, rung in enumerate(sketch.rungs):
            below = (products <= sketch.values[r, rung]).sum(axis=0)
            np.testing.assert_array_equal(sketch.rung_positions[r, i], below)
            assert sketch.rung_counts[r, i] == below.sum()
