"""NAC-UE against docs/methods.md §2: bin edges, states, raw counts, coverage and the score,
checked against a slow computation written here from the definition."""

from __future__ import annotations

import bisect
import math
from pathlib import Path

import numpy as np
import pytest

from oodcache.cache import SEARCH_ROLES, Cache, Split
from oodcache.search.base import Stats
from oodcache.search.coverage import bin_edges, bin_index, neuron_states
from oodcache.search.methods.nac import NAC
from oodcache.search.ops import prepare
from oodcache.search.study import load_inputs

# ----------------------------------------------------------------------------- slow reference


def ref_edges(m: int) -> list[float]:
    """docs/methods.md §2.3, term by term, in Python floats (float64)."""
    n = m // 2
    a = [math.log(1 + i * (math.sqrt(1000) - 1) / (n - 1), 1000) for i in range(n)]
    lower = [a[i] for i in range(n - 1)]
    upper = [1 - a[n - 1 - i] for i in range(n)]
    edges = lower + upper
    edges[-1] = 1.01
    return [*edges, 1.2]


def ref_state(o: np.float32, g: np.float32, alpha: float) -> np.float32:
    """σ(α·o·g) in float32, one neuron at a time."""
    x = np.float32(alpha) * (np.float32(o) * np.float32(g))
    with np.errstate(over="ignore"):
        return np.float32(np.float32(1) / (np.float32(1) + np.exp(-x)))


def ref_bin(z: np.float32, edges: list[float]) -> int:
    """The k with edges[k] <= z < edges[k+1] (float64 comparison), or -1."""
    zf = float(z)  # exact: float32 -> float64
    k = bisect.bisect_right(edges, zf) - 1
    if k < 0 or k >= len(edges) - 1:
        return -1
    assert edges[k] <= zf < edges[k + 1]
    return k


def ref_nac(
    fit: dict[str, tuple[np.ndarray, np.ndarray]],
    test: dict[str, tuple[np.ndarray, np.ndarray]],
    params: dict[str, dict[str, float]],
) -> np.ndarray:
    """Slow NAC-UE: loops over layers, neurons and samples."""
    n_test = next(iter(test.values()))[0].shape[0]
    per_layer = []
    for layer, p in params.items():
        edges = ref_edges(int(p["M"]))
        acts, grads = fit[layer]
        n_fit, channels = acts.shape
        t_acts, t_grads = test[layer]
        layer_score = [0.0] * n_test
        for c in range(channels):
            counts = [0] * (len(edges) - 1)
            for i in range(n_fit):
                k = ref_bin(ref_state(acts[i, c], grads[i, c], p["alpha"]), edges)
                if k >= 0:
                    counts[k] += 1
            coverage = [min(cnt / p["O"], 1.0) for cnt in counts]
            for j in range(n_test):
                k = ref_bin(ref_state(t_acts[j, c], t_grads[j, c], p["alpha"]), edges)
                layer_score[j] += coverage[k] if k >= 0 else 0.0
        per_layer.append([s / channels for s in layer_score])
    return np.array([sum(col) / len(per_layer) for col in zip(*per_layer, strict=True)])


def make_split(
    name: str, acts: dict[str, np.ndarray], grads: dict[str, np.ndarray], prepared: bool = False
) -> Split:
    """A split of per-layer arrays; ``prepared`` prepares it as the search does (its sorted
    products are kept: NAC's fast path)."""
    n = next(iter(acts.values())).shape[0]
    z = np.zeros((n, 2), np.float32)
    split = Split(
        name=name,
        role="fit",
        dataset=name,
        labels=np.zeros(n, np.int64),
        logits=z,
        features=z,
        weight=np.eye(2, dtype=np.float32),
        bias=np.zeros(2, np.float32),
        activations=acts,
        gradients=grads,
    )
    return prepare(split) if prepared else split


def random_layers(rng: np.random.Generator, n: int) -> tuple[dict, dict]:
    """Two layers with post-ReLU activations (some exactly 0), signed gradients, a few huge
    products (saturated states 0 and 1) and one dead channel."""
    acts, grads = {}, {}
    for layer, c in (("a", 5), ("b", 3)):
        o = np.maximum(rng.normal(size=(n, c)), 0).astype(np.float32)
        g = (rng.normal(size=(n, c)) * 0.3).astype(np.float32)
        o[rng.random((n, c)) < 0.05] *= 1e4  # saturate some states
        acts[layer], grads[layer] = o, g
    acts["b"][:, 0] = 0.0  # a dead channel: every state is exactly 0.5
    return acts, grads


# ----------------------------------------------------------------------------- bin edges


def test_bin_edges_check_values_m50() -> None:
    e = bin_edges(50)
    assert e.dtype == np.float64 and e.shape == (50,)
    expected = {
        0: 0.0,
        1: 0.1191,
        2: 0.1835,
        23: 0.4940,
        24: 0.5,
        25: 0.5060,
        46: 0.8165,
        47: 0.8809,
        48: 1.01,
        49: 1.2,
    }
    for i, v in expected.items():
        assert e[i] == pytest.approx(v, abs=5e-5), i
    assert e[0] == 0.0 and e[24] == 0.5 and e[48] == 1.01 and e[49] == 1.2
    assert (np.diff(e) > 0).all()
    # symmetric around 0.5 (e_i + e_{48-i} = 1) up to the raised last edges
    np.testing.assert_allclose(e[1:24] + e[47:24:-1], 1.0, atol=1e-12)


@pytest.mark.parametrize(("m", "width"), [(50, 6.0e-3), (500, 5.6e-4), (1000, 2.8e-4)])
def test_bin_edges_smallest_width(m: int, width: float) -> None:
    e = bin_edges(m)
    assert len(e) == m
    assert np.diff(e).min() == pytest.approx(width, rel=0.03)
    assert np.argmin(np.diff(e)) in (m // 2 - 2, m // 2 - 1)  # finest next to 0.5
    np.testing.assert_allclose(e, ref_edges(m), rtol=0, atol=1e-15)


@pytest.mark.parametrize("m", [49, 51, 3, 2, 0])
def test_bin_edges_odd_or_tiny_m_raises(m: int) -> None:
    with pytest.raises(ValueError, match="even"):
        bin_edges(m)


# ----------------------------------------------------------------------------- states and bins


@pytest.mark.parametrize("m", [50, 500, 1000])
def test_zero_product_state_is_half_and_lands_in_bin_starting_at_half(m: int) -> None:
    o = np.array([[0.0, 3.0, 0.0]], np.float32)
    g = np.array([[5.0, 0.0, -0.0]], np.float32)
    z = neuron_states(o, g, alpha=1e3)
    assert z.dtype == np.float32
    assert (z == 0.5).all()
    edges = bin_edges(m)
    k = bin_index(z, edges)
    assert (k == m // 2 - 1).all()
    assert edges[m // 2 - 1] == 0.5
    just_below = np.array([np.nextafter(np.float32(0.5), np.float32(0))], np.float32)
    assert bin_index(just_below, edges)[0] == m // 2 - 2


def test_saturated_states_use_the_outer_bins() -> None:
    edges = bin_edges(50)
    z = neuron_states(np.array([1e4, 1e4], np.float32), np.array([1.0, -1.0], np.float32), 1.0)
    assert z[0] == 1.0 and z[1] == 0.0
    k = bin_index(z, edges)
    assert k[0] == 50 - 3  # [e_{M-3}, 1.01)
    assert k[1] == 0


def test_state_sign_and_scale() -> None:
    o = np.array([2.0], np.float32)
    g = np.array([0.5], np.float32)
    assert neuron_states(o, g, 1.0)[0] == pytest.approx(1 / (1 + math.exp(-1.0)), rel=1e-6)
    assert neuron_states(o, -g, 1.0)[0] == pytest.approx(1 / (1 + math.exp(1.0)), rel=1e-6)
    assert neuron_states(o, g, 3.0)[0] == pytest.approx(1 / (1 + math.exp(-3.0)), rel=1e-6)


# ----------------------------------------------------------------------------- the pipeline


PARAMS = {
    "a": {"alpha": 2.0, "M": 50, "O": 3},
    "b": {"alpha": 30.0, "M": 12, "O": 7},
}


@pytest.mark.parametrize("prepared", [False, True])
def test_nac_matches_slow_reference_on_random_arrays(prepared: bool) -> None:
    rng = np.random.default_rng(0)
    fit_acts, fit_grads = random_layers(rng, 60)
    test_acts, test_grads = random_layers(rng, 25)
    fit = make_split("fit", fit_acts, fit_grads, prepared)
    test = make_split("test", test_acts, test_grads, prepared)
    nac = NAC(layers=PARAMS).fit(Stats(fit=fit, id_val=fit))
    got = nac.score(test)
    assert got.dtype == np.float32 and got.shape == (25,)
    expected = ref_nac(
        {k: (fit_acts[k], fit_grads[k]) for k in PARAMS},
        {k: (test_acts[k], test_grads[k]) for k in PARAMS},
        PARAMS,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # scores are not trivially constant, so the comparison means something
    assert np.ptp(expected) > 0.05


def test_raw_counts_and_coverage() -> None:
    rng = np.random.default_rng(1)
    acts, grads = random_layers(rng, 40)
    fit = make_split("fit", acts, grads)
    nac = NAC(layers={"a": {"alpha": 2.0, "M": 50, "O": 1}}).fit(Stats(fit=fit, id_val=fit))
    cov = nac.coverage_["a"]
    assert cov.shape == (49, 5)
    # O = 1: a bin is covered as soon as one sample falls into it
    assert set(np.unique(cov)) <= {0.0, 1.0}
    edges = ref_edges(50)
    for c in range(5):
        ks = {ref_bin(ref_state(acts["a"][i, c], grads["a"][i, c], 2.0), edges) for i in range(40)}
        assert set(np.flatnonzero(cov[:, c])) == ks


def test_o_is_a_count() -> None:
    rng = np.random.default_rng(2)
    acts, grads = random_layers(rng, 50)
    fit = make_split("fit", acts, grads)
    test = make_split("test", *random_layers(rng, 20))
    stats = Stats(fit=fit, id_val=fit)

    def fitted(o: int, layer: str = "b") -> NAC:
        return NAC(layers={layer: {"alpha": 30.0, "M": 12, "O": o}}).fit(stats)

    big = fitted(1000)  # larger than every count (50 samples): coverage = count / O, no clipping
    counts = big.coverage_["b"] * 1000
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
    assert (counts.sum(axis=0) == 50).all()  # raw counts: every fit sample in one bin per neuron
    assert counts[:, 0].max() == 50  # the dead channel: all states in the bin at 0.5
    assert counts[5, 0] == 50 and bin_edges(12)[5] == 0.5
    bigger = fitted(2000)
    np.testing.assert_allclose(big.coverage_["b"], 2 * bigger.coverage_["b"], rtol=1e-12)
    np.testing.assert_allclose(big.score(test), 2 * bigger.score(test), rtol=1e-6)
    # O below the counts clips at 1
    small = fitted(5)
    np.testing.assert_array_equal(small.coverage_["b"], np.minimum(np.round(counts) / 5, 1.0))
    assert small.coverage_["b"].max() == 1.0


def test_dead_channel_scores_its_coverage_at_half() -> None:
    n = 10
    fit = make_split(
        "fit", {"x": np.zeros((n, 1), np.float32)}, {"x": np.ones((n, 1), np.float32)}
    )
    test = make_split(
        "test",
        {"x": np.array([[0.0], [1.0], [1.0]], np.float32)},
        {"x": np.array([[3.0], [0.0], [0.01]], np.float32)},
    )
    nac = NAC(layers={"x": {"alpha": 1.0, "M": 50, "O": 4}}).fit(Stats(fit=fit, id_val=fit))
    # o·g = 0 -> ẑ = 0.5 -> the bin [0.5, 0.506), which holds all 10 fit states: min(10/4, 1) = 1;
    # ẑ = σ(0.01) = 0.5025 lies in the same bin
    np.testing.assert_array_equal(nac.score(test), [1.0, 1.0, 1.0])
    far = make_split(
        "far", {"x": np.array([[1.0]], np.float32)}, {"x": np.array([[0.5]], np.float32)}
    )
    assert nac.score(far)[0] == 0.0  # σ(0.5) = 0.62: a bin no fit sample covered


def test_layer_mean_is_unweighted_over_neurons_then_layers() -> None:
    """A 1-neuron layer weighs as much as a 4-neuron one."""
    fit = make_split(
        "fit",
        {"one": np.zeros((4, 1), np.float32), "four": np.zeros((4, 4), np.float32)},
        {"one": np.ones((4, 1), np.float32), "four": np.ones((4, 4), np.float32)},
    )
    test = make_split(
        "test",
        {"one": np.zeros((1, 1), np.float32), "four": np.array([[0, 0, 0, 1]], np.float32)},
        {"one": np.ones((1, 1), np.float32), "four": np.full((1, 4), 5.0, np.float32)},
    )
    layers = {"one": {"alpha": 1.0, "M": 50, "O": 4}, "four": {"alpha": 1.0, "M": 50, "O": 4}}
    nac = NAC(layers=layers).fit(Stats(fit=fit, id_val=fit))
    # layer "one": 1.0; layer "four": 3 of 4 neurons covered = 0.75; mean 0.875 (pooled: 0.8)
    assert nac.score(test)[0] == pytest.approx(0.875)


def test_nac_matches_slow_reference_on_toy_cache(toy_cache: Path) -> None:
    with Cache(toy_cache, allowed_roles=SEARCH_ROLES) as cache:
        inputs = load_inputs(cache, NAC)
    official = NAC.official(inputs.info)
    params = official.layers
    assert list(params) == ["avgpool", "layer3", "layer2", "layer1"]
    assert {p["M"] for p in params.values()} == {50, 500}
    nac = official.fit(inputs.stats)
    rows = np.r_[0:40, 100:120]  # a subset keeps the slow loops short
    fit, val, ood = inputs.stats.fit, inputs.id_val, inputs.ood_val
    expected = ref_nac(
        {k: (fit.activations[k], fit.gradients[k]) for k in params},
        {
            k: (
                np.r_[val.activations[k][rows], ood.activations[k][rows]],
                np.r_[val.gradients[k][rows], ood.gradients[k][rows]],
            )
            for k in params
        },
        params,
    )
    got = np.r_[nac.score(val)[rows], nac.score(ood)[rows]]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert expected[: len(rows)].mean() > expected[len(rows) :].mean()  # ID covered better
    # the toy model has zero avgpool activations: their ẑ is exactly 0.5 (the bin at 0.5)
    z = neuron_states(fit.activations["avgpool"], fit.gradients["avgpool"], 100.0)
    assert (z == 0.5).any()
