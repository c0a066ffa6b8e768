"""oodcache/search/masked_products.py, LINe's compiled per-class masked products: equal to
numpy's masked product and float32 logsumexp for every tile shape (groups of 1 to 9 samples,
K not a multiple of 4), infinite thresholds, groups in any order, and the pool's parts."""

from __future__ import annotations

import numpy as np
import pytest

from oodcache.search import masked_products
from oodcache.search.masked_products import class_scores
from oodcache.search.ops import logsumexp


def reference(w, b, h, order, starts, counts, theta) -> np.ndarray:  # type: ignore[no-untyped-def]
    out = np.empty(len(h))
    for i, (start, n) in enumerate(zip(starts, counts, strict=True)):
        rows = order[start : start + n]
        masked = np.where(w > theta[i], w, np.float32(0))
        out[rows] = logsumexp(np.asarray(h[rows] @ masked.T + b, np.float32))
    return out


@pytest.mark.parametrize("compact", [0.0, 1.01])
@pytest.mark.parametrize("k", [1, 4, 7, 12])
def test_equals_numpy_for_every_tile_shape(
    k: int, compact: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both paths: every class on all units (share 0), or on its kept units copied out (1.01)."""
    monkeypatch.setattr(masked_products, "COMPACT_SHARE", compact)
    rng = np.random.default_rng(k)
    d = 37  # not a multiple of the vector width
    w = rng.normal(size=(k, d)).astype(np.float32)
    b = rng.normal(size=k).astype(np.float32)
    counts = np.array([1, 2, 3, 4, 5, 8, 9])
    h = rng.exponential(size=(counts.sum(), d)).astype(np.float32)
    order = rng.permutation(len(h))  # groups' rows anywhere in h
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    theta = rng.normal(size=(len(counts), d)).astype(np.float32)
    theta[0] = np.inf  # every weight masked: z = b
    theta[1] = -np.inf  # none masked
    theta[2, ::3] = np.inf  # units outside the unit mask
    got = class_scores(w, b, h, order, starts, counts, theta)
    want = reference(w, b, h, order, starts, counts, theta)
    np.testing.assert_allclose(
        got, want, rtol=1e-5, atol=1e-6
    )  # float32 sums, order by vector width
    start, n = starts[0], counts[0]
    only_bias = got[order[start : start + n]]  # float32 exp: numpy's and libm's differ by an ulp
    np.testing.assert_allclose(only_bias, logsumexp(b[None, :]), rtol=1e-7)


def test_parts_on_the_pool_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    k, d = 9, 40
    w = rng.normal(size=(k, d)).astype(np.float32)
    b = rng.normal(size=k).astype(np.float32)
    counts = rng.integers(1, 12, size=30)
    h = rng.exponential(size=(counts.sum(), d)).astype(np.float32)
    order = np.arange(len(h))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    theta = rng.normal(size=(len(counts), d)).astype(np.float32)
    together = class_scores(w, b, h, order, starts, counts, theta)
    monkeypatch.setattr(masked_products, "workers", lambda: 1)
    np.testing.assert_array_equal(class_scores(w, b, h, order, starts, counts, theta), together)
    want = reference(w, b, h, order, starts, counts, theta)
    np.testing.assert_allclose(
        together, want, rtol=1e-5, atol=1e-6
    )  # float32 sums, order by vector width


def test_clip_anchors_give_the_clipped_head() -> None:
    """ĉ from the anchors' logits, corrected for the entries between the anchor and τ, equals
    argmax of the clipped head for τ below, between, on and above the anchors; it is declined
    (None) when τ is far from every anchor."""
    rng = np.random.default_rng(5)
    n, d, k = 300, 50, 21  # k not a multiple of 4; samples with 0..many entries between
    h = rng.exponential(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(k, d)).astype(np.float32)
    b = rng.normal(size=k).astype(np.float32)
    anchors = masked_products.ClipAnchors.build(h, w, b)
    assert len(anchors.taus) == 4 and np.isinf(anchors.taus[-1])
    w_t = np.ascontiguousarray(w.T)
    taus = [*anchors.taus[:-1], *np.quantile(h, [0.5, 0.7, 0.8, 0.85, 0.95, 0.999])]
    for tau in taus:
        want = np.asarray(np.minimum(h, np.float32(tau)) @ w.T + b, np.float32).argmax(axis=1)
        got = anchors.argmax(h, w_t, float(tau))
        assert got is not None, tau
        np.testing.assert_array_equal(got, want, err_msg=f"tau={tau}")
    assert anchors.argmax(h, w_t, float(h.min())) is None
