"""NAC's fast path (sorted products, p-bands, runs) against the straightforward definition.

The definition, written here: ẑ = σ(α·o·g) in float32 for every state, its bin by a float64
search of the edges, counts of the fit split, coverage min(C/O, 1), and the mean over channels
and layers of the coverage gathered at each state's bin. The fast path must give the same bins
and counts exactly and the same scores to 1e-6, including o·g = 0, saturated states, huge and
tiny α, states next to the edges, and a float32 sigmoid that is not monotone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from oodcache.cache import Split
from oodcache.search import coverage, parallel
from oodcache.search.base import Stats
from oodcache.search.coverage import (
    STATE_RTOL,
    bin_edges,
    fast_bin_index,
    sort_products,
    sorted_products,
    state_bands,
)
from oodcache.search.methods import nac
from oodcache.search.methods.nac import NAC
from oodcache.search.ops import prepare

Layers = dict[str, tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------- the definition
def def_states(o: np.ndarray, g: np.ndarray, alpha: float) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = np.float32(alpha) * (o.astype(np.float32) * g.astype(np.float32))
        return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float32)


def def_bins(z: np.ndarray, edges: np.ndarray) -> np.ndarray:
    k = np.searchsorted(edges, z.astype(np.float64), side="right") - 1
    return np.where(k >= len(edges) - 1, -1, k)


def def_nac(
    fit: Layers,
    test: Layers,
    params: dict[str, dict[str, float]],
    states: Callable[[np.ndarray, np.ndarray, float], np.ndarray] = def_states,
    edges_of: Callable[[int], np.ndarray] = bin_edges,
) -> np.ndarray:
    per_layer = []
    for layer, p in params.items():
        edges = edges_of(int(p["M"]))
        (fo, fg), (to, tg) = fit[layer], test[layer]
        channels = np.arange(fo.shape[1])
        bins = def_bins(states(fo, fg, p["alpha"]), edges)
        counts = np.zeros((len(edges) - 1, fo.shape[1]))
        ok = bins >= 0
        np.add.at(counts, (bins[ok], np.broadcast_to(channels, bins.shape)[ok]), 1)
        coverage = np.minimum(counts / p["O"], 1.0)
        bins = def_bins(states(to, tg, p["alpha"]), edges)
        phi = np.where(bins >= 0, coverage[np.maximum(bins, 0), channels[None, :]], 0.0)
        per_layer.append(phi.mean(axis=1))
    return np.asarray(np.mean(per_layer, axis=0), dtype=np.float32)


# ----------------------------------------------------------------------------- data
def split(layers: Layers, *, prepared: bool = True) -> Split:
    """A split of these layers, prepared as the search's are unless ``prepared`` is False."""
    n = next(iter(layers.values()))[0].shape[0]
    acts = {k: np.array(o) for k, (o, _) in layers.items()}
    grads = {k: np.array(g) for k, (_, g) in layers.items()}
    z = np.zeros((n, 2), np.float32)
    w, b = np.eye(2, dtype=np.float32), np.zeros(2, np.float32)
    plain = Split("s", "id_val", "s", np.zeros(n, np.int64), z, z, w, b, acts, grads)
    return prepare(plain) if prepared else plain


def random_layers(rng: np.random.Generator, n: int, channels: dict[str, int]) -> Layers:
    """Post-ReLU activations (exact zeros, a dead channel, a few huge), signed gradients spanning
    1e-9..1e-2, and products at the band bounds of a few edges."""
    out: Layers = {}
    for layer, c in channels.items():
        o = rng.lognormal(0.0, 1.5, (n, c)) * (rng.random((n, c)) > 0.1)
        o[:, 0] = 0.0
        o[rng.random((n, c)) < 0.01] *= 1e6
        g = np.exp(rng.uniform(np.log(1e-9), np.log(1e-2), (n, c))) * rng.choice([-1, 1], (n, c))
        g[rng.random((n, c)) < 0.02] = 0.0
        out[layer] = (o.astype(np.float32), g.astype(np.float32))
    return out


def with_band_edges(layers: Layers, alpha: float, m: int, rng: np.random.Generator) -> Layers:
    """Replace some states by products exactly at, just inside and just outside every p-band
    bound and at the float32 logit of every edge (o = 1, g = p)."""
    lo, hi = state_bands(bin_edges(m), alpha)
    finite = np.concatenate([lo[np.isfinite(lo)], hi[np.isfinite(hi)]])
    up, down = np.float32(np.inf), np.float32(-np.inf)
    e = bin_edges(m)
    inner = e[(e > 0) & (e < 1)]
    crossing = (np.log(inner) - np.log1p(-inner)) / np.float32(alpha)
    near = np.concatenate(
        [finite, np.nextafter(finite, up), np.nextafter(finite, down), crossing.astype(np.float32)]
    )
    for _ in range(1, 40):
        near = np.concatenate([near, np.nextafter(near[-len(crossing) :], up)])
    out = {}
    for layer, (o, g) in layers.items():
        o, g = o.copy(), g.copy()
        cells = rng.choice(o.size, size=min(o.size // 2, near.size), replace=False)
        o.flat[cells] = 1.0
        g.flat[cells] = near[: cells.size]
        out[layer] = (o, g)
    return out


@pytest.fixture(params=["default", "small"])
def steps(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Default chunk and band-piece sizes, or tiny ones: then run boundaries fall on chunk starts
    and every band is cut into pieces (the long-band path)."""
    if request.param == "small":
        monkeypatch.setattr(coverage, "_CHUNK", 7)
        monkeypatch.setattr(coverage, "_PIECE", 5)
    return str(request.param)


PARAMS = [
    {"a": {"alpha": 1.0, "M": 50, "O": 3}, "b": {"alpha": 300.0, "M": 500, "O": 50}},
    {"a": {"alpha": 1e-8, "M": 1000, "O": 1}, "b": {"alpha": 5e-3, "M": 10, "O": 400}},  # tiny
    {"a": {"alpha": 1e7, "M": 2000, "O": 7}, "b": {"alpha": 3e4, "M": 100, "O": 2}},  # huge
    {"a": {"alpha": 1e30, "M": 12, "O": 5}, "b": {"alpha": 1e-30, "M": 500, "O": 9}},
]


@pytest.mark.parametrize("params", PARAMS, ids=["official-like", "tiny", "huge", "extreme"])
def test_bins_equal_the_definition(params: dict[str, dict[str, float]], steps: str) -> None:
    rng = np.random.default_rng(0)
    for layer, layers in random_layers(rng, 300, {"a": 64, "b": 8}).items():
        p = params[layer]
        o, g = with_band_edges({layer: layers}, p["alpha"], int(p["M"]), rng)[layer]
        edges = bin_edges(int(p["M"]))
        expected = def_bins(def_states(o, g, p["alpha"]), edges)
        assert np.array_equal(fast_bin_index(o, g, p["alpha"], edges), expected)


@pytest.mark.parametrize("params", PARAMS, ids=["official-like", "tiny", "huge", "extreme"])
def test_counts_and_scores_equal_the_definition(
    params: dict[str, dict[str, float]], steps: str
) -> None:
    rng = np.random.default_rng(1)
    fit = random_layers(rng, 400, {"a": 64, "b": 8})
    test = random_layers(rng, 500, {"a": 64, "b": 8})
    fit, test = (
        {
            k: with_band_edges({k: v}, params[k]["alpha"], int(params[k]["M"]), rng)[k]
            for k, v in d.items()
        }
        for d in (fit, test)
    )
    scorer = NAC(layers=params).fit(Stats(split(fit), split(fit)))
    for layer, p in params.items():
        edges = bin_edges(int(p["M"]))
        bins = def_bins(def_states(*fit[layer], p["alpha"]), edges)
        for k in range(len(edges) - 1):
            counts = np.minimum((bins == k).sum(0) / p["O"], 1.0)
            assert np.array_equal(scorer.coverage_[layer][k], counts), (layer, k)
    got = scorer.score(split(test))
    expected = def_nac(fit, test, params)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert got.dtype == np.float32 and np.isfinite(got).all()


def test_large_split_uses_chunks_and_threads_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More entries than 4 chunks: several chunks per thread, and the score does not depend on the
    number of threads (integer-valued sums)."""
    rng = np.random.default_rng(2)
    channels = {"a": 1100, "b": 8}
    fit, test = random_layers(rng, 200, channels), random_layers(rng, 500, channels)
    assert 500 * 1100 > 4 * coverage._CHUNK
    params = {"a": {"alpha": 3e3, "M": 50, "O": 10}, "b": {"alpha": 0.3, "M": 1000, "O": 5}}
    expected = def_nac(fit, test, params)
    got = {}
    for workers in (1, 2, 3):
        monkeypatch.setattr(coverage, "workers", lambda w=workers: w)
        monkeypatch.setattr(parallel, "workers", lambda w=workers: w)
        got[workers] = NAC(layers=params).fit(Stats(split(fit), split(fit))).score(split(test))
        np.testing.assert_allclose(got[workers], expected, rtol=0, atol=1e-6)
    assert np.array_equal(got[1], got[2]) and np.array_equal(got[1], got[3])


# ----------------------------------------------------------------------------- the bound used
def test_float32_sigmoid_within_state_rtol_on_a_dense_sweep() -> None:
    """|σ₃₂(t) − σ(t)| <= STATE_RTOL·σ(t) for float32 t in [−120, 30]: every 509th float32, plus
    every 3rd float32 within 2¹² ulps of the logit of each edge of M = 50 and 500."""
    lo, hi = np.float32(-120.0).view(np.int32), np.float32(30.0).view(np.int32)
    neg = np.arange(0x80000000 | 0, lo.astype(np.int64) + 1, 509, dtype=np.int64)  # -0 .. -120
    pos = np.arange(0, int(hi) + 1, 509, dtype=np.int64)
    bits = [neg.astype(np.uint32).view(np.int32), pos.astype(np.int32)]
    for m in (50, 500):
        e = bin_edges(m)
        e = e[(e > 0) & (e < 1)]
        t = ((np.log(e) - np.log1p(-e)).astype(np.float32)).view(np.int32).astype(np.int64)
        window = (t[:, None] + np.arange(-(1 << 12), 1 << 12, 3)[None, :]).ravel()
        bits.append(window.astype(np.int32))
    t = np.concatenate(bits).view(np.float32)
    t = t[np.isfinite(t)]
    z32 = def_states(t, np.ones_like(t), 1.0).astype(np.float64)
    exact = 1.0 / (1.0 + np.exp(-t.astype(np.float64)))
    rel = np.abs(z32 - exact) / exact
    assert rel.max() <= STATE_RTOL, rel.max()
    assert rel.max() > 0  # the sweep really hits rounding


def test_band_bounds_are_certain() -> None:
    """Just below lo_k the state is below e_k, just above hi_k it is at or above e_k."""
    for alpha in (1e-6, 0.01, 1.0, 3e3, 1e7):
        for m in (10, 50, 1000):
            edges = bin_edges(m)
            lo, hi = state_bands(edges, alpha)
            assert lo.dtype == np.float32 and (lo <= hi).all()
            assert (lo[1:] >= hi[:-1]).all()  # disjoint and ordered
            below = np.nextafter(lo, np.float32(-np.inf))
            above = np.nextafter(hi, np.float32(np.inf))
            ok_lo, ok_hi = np.isfinite(below), np.isfinite(above)
            z_lo = def_states(below[ok_lo], np.ones(ok_lo.sum(), np.float32), alpha)
            z_hi = def_states(above[ok_hi], np.ones(ok_hi.sum(), np.float32), alpha)
            assert (z_lo < edges[ok_lo]).all() and (z_hi >= edges[ok_hi]).all()
    with pytest.raises(ValueError, match="alpha"):
        state_bands(bin_edges(10), 0.0)


def test_non_monotone_sigmoid_inside_a_band(monkeypatch: pytest.MonkeyPatch, steps: str) -> None:
    """A float32 sigmoid that wiggles by an ulp (allowed by STATE_RTOL) around an edge: entries
    whose sorted order disagrees with their bin become exceptions, and bins stay exact."""
    original: Callable[[np.ndarray, float], np.ndarray] = coverage.states_of_products

    def wiggly(products: np.ndarray, alpha: float) -> np.ndarray:
        z = original(products, alpha)
        odd = (np.asarray(products, np.float32).view(np.int32) & 1).astype(bool)
        return np.asarray(
            np.where(odd, np.nextafter(z, np.float32(1)), np.nextafter(z, np.float32(0)))
        )

    monkeypatch.setattr(coverage, "states_of_products", wiggly)
    edges = np.array([0.0, 0.3, 0.5, 0.7, 1.01, 1.2])
    alpha = 1.0
    logit = np.log(edges[1:4]) - np.log1p(-edges[1:4])
    centre = np.concatenate([logit, [0.0]]).astype(np.float32).view(np.int32).astype(np.int64)
    key = np.where(centre < 0, -(centre & 0x7FFFFFFF), centre)  # float32 order as integers
    key = (key[:, None] + np.arange(-3000, 3000)[None, :]).ravel()
    p = np.where(key < 0, (-key) | -(1 << 31), key).astype(np.int32).view(np.float32)
    p = p.reshape(60, -1)
    o = np.ones_like(p)
    bins = fast_bin_index(o, p, alpha, edges)
    assert np.array_equal(bins, def_bins(wiggly(p, alpha), edges))
    sp = sort_products(o, p)
    assert sp is not None
    runs = coverage.runs_of(sp, edges, alpha, state_bands(edges, alpha))
    assert runs is not None and runs.pos.size > 0  # the exception path really ran
    # scores too: fit and score on halves of these states, bins (0.3, 0.5, 0.7) between
    half = {"a": (o[::2], p[::2])}
    rest = {"a": (o[1::2], p[1::2])}
    monkeypatch.setattr(nac, "bin_edges", lambda m: edges)
    params = {"a": {"alpha": alpha, "M": 6, "O": 1000}}  # Φ = C/1000: every count shows
    got = NAC(layers=params).fit(Stats(split(half), split(half))).score(split(rest))
    expected = def_nac(half, rest, params, lambda o, g, a: wiggly(o * g, a), lambda m: edges)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_block_of_zero_products_on_the_wrong_side(
    monkeypatch: pytest.MonkeyPatch, steps: str
) -> None:
    """The states of o·g = 0 are computed once for the whole block; a sigmoid that puts them above
    0.5 while the tiny positive products next to them fall below still gives the exact bins."""
    original: Callable[[np.ndarray, float], np.ndarray] = coverage.states_of_products

    def odd_zero(products: np.ndarray, alpha: float) -> np.ndarray:
        p = np.asarray(products, np.float32)
        z = original(p, alpha)
        shifted = np.where(p == 0, np.nextafter(z, np.float32(1)), np.nextafter(z, np.float32(0)))
        return np.asarray(np.where(np.abs(p) < 1e-6, shifted, z))

    monkeypatch.setattr(coverage, "states_of_products", odd_zero)
    rng = np.random.default_rng(8)
    g = np.concatenate([np.zeros(400), rng.uniform(-1e-9, 1e-9, 400), rng.normal(0, 1, 400)])
    g = rng.permutation(g).astype(np.float32).reshape(40, 30)
    o = np.ones_like(g)
    edges = bin_edges(50)
    bins = fast_bin_index(o, g, 1.0, edges)
    assert np.array_equal(bins, def_bins(odd_zero(o * g, 1.0), edges))
    sp = sort_products(o, g)
    assert sp is not None
    runs = coverage.runs_of(sp, edges, 1.0, state_bands(edges, 1.0))
    assert runs is not None and runs.pos.size > 0


def test_bands_set_boundaries_and_exceptions_are_rare(steps: str) -> None:
    """With numpy's sigmoid a band's boundary goes where its states cross the edge, so almost no
    state is an exception, even when every state is in one band (tiny α: ẑ ≈ 0.5)."""
    rng = np.random.default_rng(6)
    o, g = random_layers(rng, 400, {"a": 100})["a"]
    for alpha, m in ((1e-9, 50), (1e-3, 1000), (30.0, 2000)):
        edges = bin_edges(m)
        sp = sort_products(o, g)
        assert sp is not None
        bands = state_bands(edges, alpha)
        runs = coverage.runs_of(sp, edges, alpha, bands)
        assert runs is not None
        inside = int(
            (np.searchsorted(sp.p, bands[1], "right") - np.searchsorted(sp.p, bands[0])).sum()
        )
        assert inside > 0
        assert runs.pos.size <= 0.01 * inside, (alpha, runs.pos.size, inside)


# ------------------------------------------------------------- kept sorts and fallbacks
def test_sorted_products_kept_on_a_prepared_split_only() -> None:
    rng = np.random.default_rng(3)
    layers = random_layers(rng, 50, {"a": 7})
    o, g = layers["a"]
    kept = split(layers)
    first = sorted_products(kept, "a")
    assert first is not None and sorted_products(kept, "a") is first
    assert np.array_equal(np.sort((o * g).ravel()), first.p)
    assert np.array_equal(first.p, (o * g)[first.row, first.col])
    assert sorted_products(split(layers, prepared=False), "a") is None  # direct path
    assert sorted_products(split(layers), "a") is not first  # a new store sorts again
    with pytest.raises(ValueError, match="read-only"):
        kept.activations["a"][0, 0] = 1.0  # a prepared split's arrays cannot change


def test_fallbacks_match_the_definition() -> None:
    """Non-finite products and α <= 0 (states then fall as o·g rises) take the direct path."""
    rng = np.random.default_rng(4)
    layers = random_layers(rng, 40, {"a": 6, "b": 3})
    o, g = layers["a"]
    o, g = o.copy(), g.copy()
    o[0, 0], g[0, 0] = 3e38, 10.0  # o·g = inf
    layers["a"] = (o, g)
    assert sort_products(o, g) is None
    params = {"a": {"alpha": 1.0, "M": 50, "O": 2}, "b": {"alpha": -2.0, "M": 50, "O": 2}}
    got = NAC(layers=params).fit(Stats(split(layers), split(layers))).score(split(layers))
    np.testing.assert_allclose(got, def_nac(layers, layers, params), rtol=0, atol=1e-6)
    edges = bin_edges(50)
    expected = def_bins(def_states(o, g, 1.0), edges)
    assert np.array_equal(fast_bin_index(o, g, 1.0, edges), expected)
    o, g = layers["b"]
    expected = def_bins(def_states(o, g, -2.0), edges)
    assert np.array_equal(fast_bin_index(o, g, -2.0, edges), expected)


def test_prepared_and_plain_splits_score_alike() -> None:
    rng = np.random.default_rng(5)
    fit, test = random_layers(rng, 80, {"a": 16}), random_layers(rng, 90, {"a": 16})
    params = {"a": {"alpha": 10.0, "M": 100, "O": 4}}
    scores = []
    for prepared in (True, False):
        scorer = NAC(layers=params).fit(Stats(split(fit, prepared=prepared), split(fit)))
        scores.append(scorer.score(split(test, prepared=prepared)))
    assert np.array_equal(scores[0], scores[1])


def test_test_splits_take_the_direct_path_with_the_same_scores() -> None:
    """Replay scores a test split once, unprepared: it is not sorted (nothing kept), same scores."""
    rng = np.random.default_rng(7)
    fit, test = random_layers(rng, 60, {"a": 9, "b": 4}), random_layers(rng, 70, {"a": 9, "b": 4})
    params = {"a": {"alpha": 50.0, "M": 50, "O": 3}, "b": {"alpha": 2.0, "M": 500, "O": 1}}
    scorer = NAC(layers=params).fit(Stats(split(fit), split(fit)))
    test_split, val_split = split(test, prepared=False), split(test)
    direct = scorer.score(test_split)
    assert test_split.tables is None
    sorted_ = scorer.score(val_split)
    assert val_split.tables is not None and len(val_split.tables) == 2
    np.testing.assert_allclose(direct, sorted_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(direct, def_nac(fit, test, params), rtol=0, atol=1e-6)
