"""LHAct against an independent computation and hand-computed values (docs/methods.md §3.2).

h' = max(h, t_l); a = h' if h' < t_h (strict) else h'/√(1 + (h'/t_h)^(2n)) + t_l, n = 2;
S = LSE(W a + b). Thresholds: absolute constants (official ImageNet-1K ResNet-50) or percentiles
of the flattened ID-val feature matrix.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from method_refs import make_split
from optuna.trial import FixedTrial
from scipy.special import logsumexp

from oodcache.search.base import CacheInfo, Stats
from oodcache.search.methods.energy import Energy
from oodcache.search.methods.lhact import LHAct, lhact_shape

SMALL = CacheInfo("digits_resnet", "digits", 3, 4, ("avgpool",), 40)
R50_IMAGENET = CacheInfo("resnet50", "imagenet", 1000, 2048, ("avgpool",), 1000)
R50_CLASSIC = CacheInfo("resnet50", "imagenet_classic", 1000, 2048, ("avgpool",), 1000)
VIT_IMAGENET = CacheInfo("vit_b_16", "imagenet", 1000, 768, ("layer_norm",), 50000)
T_H = 1.3520756840705868
T_L = 0.21940805315971373


def shape_scalar(x: float, t_l: float, t_h: float, n: int = 2) -> float:
    """The definition for one entry, in Python floats."""
    x = max(x, t_l)
    if x < t_h:
        return x
    return x / math.sqrt(1.0 + (x / t_h) ** (2 * n)) + t_l


def lhact_reference(
    h: np.ndarray, w: np.ndarray, b: np.ndarray, t_l: float, t_h: float, n: int = 2
) -> np.ndarray:
    a = np.vectorize(lambda x: shape_scalar(float(x), t_l, t_h, n), otypes=[np.float64])(h)
    return np.asarray(logsumexp(a @ np.asarray(w, np.float64).T + b, axis=1))


# ------------------------------------------------------------------------- the shape function


@pytest.mark.parametrize(
    ("x", "want"),
    [
        (-1.0, 0.2),  # raised to t_l
        (0.0, 0.2),
        (0.2, 0.2),  # = t_l
        (0.5, 0.5),  # [t_l, t_h) passes unchanged
        (0.999, 0.999),
        (1.0, 1 / math.sqrt(2) + 0.2),  # at t_h (strict <): the drop to t_h/√2 + t_l
        (2.0, 2 / math.sqrt(17) + 0.2),  # (2/1)^4 = 16
        (100.0, 100 / math.sqrt(1 + 1e8) + 0.2),  # decays towards t_l
    ],
)
def test_shape_hand_values(x: float, want: float) -> None:
    got = lhact_shape(np.array([[x]]), 0.2, 1.0)
    assert got[0, 0] == pytest.approx(want, rel=1e-12)


def test_shape_exponent_is_2n() -> None:
    # n = 1: 2/√(1 + 2²) + t_l; n = 3: 2/√(1 + 2⁶) + t_l.
    h = np.array([[2.0]])
    assert lhact_shape(h, 0.2, 1.0, 1)[0, 0] == pytest.approx(2 / math.sqrt(5) + 0.2, rel=1e-12)
    assert lhact_shape(h, 0.2, 1.0, 3)[0, 0] == pytest.approx(2 / math.sqrt(65) + 0.2, rel=1e-12)


def test_official_constants_drop_at_t_h() -> None:
    # §3.2: just below t_h the output is ≈ t_h, at t_h it drops to t_h/√2 + t_l ≈ 1.175.
    h = np.array([[np.nextafter(T_H, 0.0), T_H, 1e6]])
    below, at, far = lhact_shape(h, T_L, T_H)[0]
    assert below == np.nextafter(T_H, 0.0)
    assert at == pytest.approx(T_H / math.sqrt(2) + T_L, rel=1e-12)
    assert at == pytest.approx(1.1754, abs=1e-4)
    assert far == pytest.approx(T_L, abs=1e-5)


def test_shape_float32_matches_float64() -> None:
    rng = np.random.default_rng(0)
    h = rng.exponential(size=(50, 16)).astype(np.float32)
    got = lhact_shape(h, T_L, T_H)
    assert got.dtype == np.float32
    want = np.vectorize(lambda x: shape_scalar(float(x), T_L, T_H))(h)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


# ------------------------------------------------------------------------- thresholds


# Flattened, sorted: 0 1 2 3 4 5 6 7 8 9 (index = value). perc_10 -> 0.9, perc_95 -> 8.55.
VAL = np.arange(10.0).reshape(2, 5)[::-1].T  # rows (5, 0), (6, 1), ..., (9, 4)


@pytest.mark.parametrize("prepared", [False, True])
def test_percentile_thresholds_over_the_flattened_id_val(prepared: bool) -> None:
    w, b = np.eye(2), np.zeros(2)
    fit = make_split([[100.0, 100.0]], w, b, name="fit", role="fit")
    val = make_split(VAL, w, b, name="val", prepared=prepared)
    scorer = LHAct().fit(Stats(fit=fit, id_val=val))  # defaults 10, 95
    assert scorer.t_low_ == pytest.approx(0.9, rel=1e-6)  # float32 features
    assert scorer.t_high_ == pytest.approx(8.55, rel=1e-6)
    scorer = LHAct(low_percentile=50.0, high_percentile=100.0).fit(Stats(fit=fit, id_val=val))
    assert (scorer.t_low_, scorer.t_high_) == (4.5, 9.0)


def test_absolute_thresholds_override_each_percentile() -> None:
    w, b = np.eye(2), np.zeros(2)
    val = make_split(VAL, w, b)
    stats = Stats(fit=val, id_val=val)
    both = LHAct(low_threshold=T_L, high_threshold=T_H).fit(stats)
    assert (both.t_low_, both.t_high_) == (T_L, T_H)
    low_only = LHAct(low_threshold=0.5, high_percentile=95.0).fit(stats)
    assert (low_only.t_low_, low_only.t_high_) == (0.5, pytest.approx(8.55))
    high_only = LHAct(low_percentile=10.0, high_threshold=3.0).fit(stats)
    assert (high_only.t_low_, high_only.t_high_) == (pytest.approx(0.9), 3.0)


def test_thresholds_must_be_ordered() -> None:
    val = make_split(VAL, np.eye(2), np.zeros(2))
    with pytest.raises(ValueError, match="t_l < t_h"):
        LHAct(low_threshold=2.0, high_threshold=2.0).fit(Stats(fit=val, id_val=val))
    with pytest.raises(ValueError, match="t_l < t_h"):
        LHAct(low_percentile=50.0, high_percentile=40.0).fit(Stats(fit=val, id_val=val))


# ------------------------------------------------------------------------- scores


def test_hand_computed_score() -> None:
    # W = I, b = 0, t_l = 0.2, t_h = 1: h = (0.1, 0.5) -> (0.2, 0.5); h = (1, 2) -> (1/√2 + 0.2,
    # 2/√17 + 0.2).
    query = make_split([[0.1, 0.5], [1.0, 2.0]], np.eye(2), np.zeros(2))
    scorer = LHAct(low_threshold=0.2, high_threshold=1.0).fit(Stats(fit=query, id_val=query))
    a, c = 1 / math.sqrt(2) + 0.2, 2 / math.sqrt(17) + 0.2
    want = [math.log(math.exp(0.2) + math.exp(0.5)), math.log(math.exp(a) + math.exp(c))]
    np.testing.assert_allclose(scorer.score(query), want, rtol=1e-6)


@pytest.mark.parametrize("prepared", [False, True])
@pytest.mark.parametrize(("q_l", "q_h"), [(0.0, 80.0), (10.0, 95.0), (50.0, 99.9)])
def test_matches_reference(prepared: bool, q_l: float, q_h: float) -> None:
    rng = np.random.default_rng(5)
    w, b = rng.normal(size=(5, 8)), rng.normal(size=5)
    val = make_split(rng.exponential(size=(30, 8)), w, b, name="val", prepared=prepared)
    query = make_split(rng.exponential(size=(12, 8)) * 2, w, b, name="q", prepared=prepared)
    scorer = LHAct(low_percentile=q_l, high_percentile=q_h).fit(Stats(fit=query, id_val=val))
    flat = val.features.astype(np.float64).ravel()
    t_l, t_h = np.percentile(flat, q_l), np.percentile(flat, q_h)
    assert (scorer.t_low_, scorer.t_high_) == (pytest.approx(t_l), pytest.approx(t_h))
    want = lhact_reference(query.features, w, b, t_l, t_h)
    np.testing.assert_allclose(scorer.score(query), want, rtol=1e-5, atol=1e-6)


def test_official_constants_match_reference() -> None:
    rng = np.random.default_rng(6)
    w, b = rng.normal(size=(6, 10)) * 0.3, rng.normal(size=6)
    query = make_split(rng.exponential(size=(20, 10)) * 0.8, w, b)
    scorer = LHAct.official(R50_IMAGENET).fit(Stats(fit=query, id_val=query))
    want = lhact_reference(query.features, w, b, T_L, T_H)
    np.testing.assert_allclose(scorer.score(query), want, rtol=1e-5, atol=1e-6)


def test_thresholds_outside_the_features_give_energy_exactly() -> None:
    # t_l = min h (max(h, t_l) = h) and t_h above every entry (all pass): a = h, so S = Energy.
    rng = np.random.default_rng(8)
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    val = make_split(rng.exponential(size=(15, 6)), w, b)
    scorer = LHAct(low_percentile=0.0, high_threshold=float(val.features.max()) * 2)
    assert np.array_equal(scorer.fit(Stats(fit=val, id_val=val)).score(val), Energy().score(val))


# ------------------------------------------------------------------------- official / search


@pytest.mark.parametrize("info", [R50_IMAGENET, R50_CLASSIC])
def test_official_imagenet_resnet50_constants(info: CacheInfo) -> None:
    official = LHAct.official(info)
    assert (official.low_threshold, official.high_threshold, official.n) == (T_L, T_H, 2)


@pytest.mark.parametrize("info", [SMALL, VIT_IMAGENET])
def test_official_elsewhere_is_the_percentile_default(info: CacheInfo) -> None:
    official = LHAct.official(info)
    assert official == LHAct()
    assert (official.low_percentile, official.high_percentile) == (10.0, 95.0)
    assert official.low_threshold is None and official.high_threshold is None


def test_space() -> None:
    params = LHAct.space(FixedTrial({"low_percentile": 0.0, "high_percentile": 99.9}), SMALL)
    assert LHAct(**params) == LHAct(low_percentile=0.0, high_percentile=99.9)
    assert LHAct.grid(SMALL) is None  # not in OpenOOD
