"""ReAct against an independent numpy/scipy computation and hand-computed cases (docs/methods.md §3.1).

c = perc_p of the *flattened* N×D ID-val feature matrix (linear interpolation), or an absolute c;
h̄ = min(h, c); S = LSE(W h̄ + b) with the cached head. Official ImageNet-1K ResNet-50: c = 1.0.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from method_refs import make_split
from optuna.trial import FixedTrial
from scipy.special import logsumexp

from oodcache.cache import Split
from oodcache.search.base import CacheInfo, Stats
from oodcache.search.methods.energy import Energy
from oodcache.search.methods.react import ReAct
from oodcache.search.study import _enqueued_constants

SMALL = CacheInfo("digits_resnet", "digits", 3, 4, ("avgpool",), 40)
R50_IMAGENET = CacheInfo("resnet50", "imagenet", 1000, 2048, ("avgpool",), 1000)
R50_CLASSIC = CacheInfo("resnet50", "imagenet_classic", 1000, 2048, ("avgpool",), 1000)
VIT_IMAGENET = CacheInfo("vit_b_16", "imagenet", 1000, 768, ("layer_norm",), 50000)
R18_CIFAR = CacheInfo("resnet18_32x32", "cifar10", 10, 512, ("avgpool",), 1000)


def react_reference(
    h: np.ndarray, w: np.ndarray, b: np.ndarray, val: np.ndarray, p: float
) -> np.ndarray:
    """The definition, float64: c over every entry of the ID-val matrix, then clip and LSE."""
    c = np.percentile(np.asarray(val, np.float64).reshape(-1), p, method="linear")
    clipped = np.minimum(np.asarray(h, np.float64), c)
    return np.asarray(logsumexp(clipped @ np.asarray(w, np.float64).T + b, axis=1))


# ------------------------------------------------------------------------- the threshold c

# Flattened and sorted: 0 0 0 10 20 30. perc_50: index 2.5 -> 5; perc_90: index 4.5 -> 25.
# A per-column percentile (medians 0, 20), a per-sample one (5, 10, 15, means 10) or the mean of
# per-column values would all give something else.
VAL = [[0.0, 10.0], [0.0, 20.0], [0.0, 30.0]]


@pytest.mark.parametrize("prepared", [False, True])
@pytest.mark.parametrize(
    ("p", "c"), [(0.0, 0.0), (50.0, 5.0), (60.0, 10.0), (90.0, 25.0), (100.0, 30.0)]
)
def test_threshold_is_a_percentile_of_the_flattened_matrix(
    prepared: bool, p: float, c: float
) -> None:
    val = make_split(VAL, np.eye(2), np.zeros(2), prepared=prepared)
    scorer = ReAct(percentile=p).fit(Stats(fit=val, id_val=val))
    assert scorer.threshold_ == c


def test_threshold_comes_from_id_val_only() -> None:
    w, b = np.eye(2), np.zeros(2)
    fit = make_split([[100.0, 100.0]], w, b, name="fit", role="fit")
    train = make_split([[-5.0, -5.0]], w, b, name="train", role="train")
    val = make_split(VAL, w, b, name="val")
    scorer = ReAct(percentile=50.0).fit(Stats(fit=fit, id_val=val, train_split=train))
    assert scorer.threshold_ == 5.0


def test_absolute_threshold_overrides_the_percentile() -> None:
    val = make_split(VAL, np.eye(2), np.zeros(2))
    scorer = ReAct(percentile=50.0, threshold=1.0).fit(Stats(fit=val, id_val=val))
    assert scorer.threshold_ == 1.0


# ------------------------------------------------------------------------- clipping and energy


def test_hand_computed_clip_then_energy() -> None:
    # W = I, b = (0, 0.5), c = 1: h = (0.5, 3) -> (0.5, 1); (-2, 1) is unchanged (only min, no
    # lower clip; an entry equal to c stays c); (4, 4) -> (1, 1).
    w, b = np.eye(2), np.array([0.0, 0.5])
    query = make_split([[0.5, 3.0], [-2.0, 1.0], [4.0, 4.0]], w, b)
    got = ReAct(threshold=1.0).fit(Stats(fit=query, id_val=query)).score(query)
    want = [
        math.log(math.exp(0.5) + math.exp(1.5)),
        math.log(math.exp(-2.0) + math.exp(1.5)),
        math.log(math.exp(1.0) + math.exp(1.5)),
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32 and got.shape == (3,)


def test_uses_the_cached_head_not_the_cached_logits() -> None:
    # Scores come from W·min(h, c) + b, not from the split's stored logits.
    w, b = np.array([[1.0, -1.0], [0.5, 2.0]]), np.array([0.1, -0.3])
    query = make_split([[0.2, 0.7], [3.0, 0.1]], w, b)
    doctored = Split(
        query.name,
        query.role,
        query.dataset,
        query.labels,
        np.zeros_like(query.logits),  # logits that ReAct must not read
        query.features,
        query.weight,
        query.bias,
    )
    scorer = ReAct(threshold=100.0).fit(Stats(fit=query, id_val=query))
    np.testing.assert_allclose(scorer.score(doctored), Energy().score(query), rtol=1e-6)


@pytest.mark.parametrize("prepared", [False, True])
@pytest.mark.parametrize("p", [0.0, 37.5, 50.0, 90.0, 99.9, 100.0])
def test_matches_reference(prepared: bool, p: float) -> None:
    rng = np.random.default_rng(7)
    w, b = rng.normal(size=(5, 8)), rng.normal(size=5)
    val = make_split(rng.exponential(size=(30, 8)), w, b, name="val", prepared=prepared)
    fit = make_split(rng.exponential(size=(10, 8)) * 5, w, b, name="fit", role="fit")
    query = make_split(rng.exponential(size=(12, 8)) * 2, w, b, name="q", prepared=prepared)
    scorer = ReAct(percentile=p).fit(Stats(fit=fit, id_val=val))
    want_c = np.percentile(val.features.astype(np.float64), p)
    assert scorer.threshold_ == pytest.approx(want_c, rel=1e-6)
    got = scorer.score(query)
    want = react_reference(query.features, w, b, val.features, p)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_infinite_or_high_threshold_is_energy_exactly() -> None:
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    query = make_split(rng.exponential(size=(9, 6)), w, b)
    for c in (math.inf, float(query.features.max())):
        scorer = ReAct(threshold=c).fit(Stats(fit=query, id_val=query))
        assert np.array_equal(scorer.score(query), Energy().score(query))


def test_percentile_100_is_energy_exactly_on_id_val() -> None:
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    val = make_split(rng.exponential(size=(20, 6)), w, b, prepared=True)
    scorer = ReAct(percentile=100.0).fit(Stats(fit=val, id_val=val))
    assert np.array_equal(scorer.score(val), Energy().score(val))


# ------------------------------------------------------------------------- official / search


@pytest.mark.parametrize("info", [R50_IMAGENET, R50_CLASSIC])
def test_official_imagenet_resnet50_is_the_absolute_constant(info: CacheInfo) -> None:
    # §3.1 / §9.1: the paper's ResNet-50 threshold c = 1.0, used as a constant (not p = 90 of
    # whatever ID-val split the cache holds).
    official = ReAct.official(info)
    assert official.threshold == 1.0
    val = make_split(VAL, np.eye(2), np.zeros(2))
    assert official.fit(Stats(fit=val, id_val=val)).threshold_ == 1.0


@pytest.mark.parametrize("info", [SMALL, VIT_IMAGENET, R18_CIFAR])
def test_official_elsewhere_is_percentile_90(info: CacheInfo) -> None:
    official = ReAct.official(info)
    assert official == ReAct() and official.percentile == 90.0 and official.threshold is None


@pytest.mark.parametrize("info", [SMALL, R50_IMAGENET])
def test_trial0_reaches_the_scorer_with_the_official_constant(info: CacheInfo) -> None:
    # What run_search enqueues as trial 0 must rebuild exactly the official scorer, the
    # absolute threshold included (the space only suggests the percentile).
    official = ReAct.official(info)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(ReAct.to_trial(official.params()))
    trial = study.ask()
    params = ReAct.space(trial, info)
    params.update(_enqueued_constants(trial, ReAct, params))
    assert ReAct(**params) == official


def test_space_and_grid() -> None:
    assert ReAct(**ReAct.space(FixedTrial({"percentile": 97.5}), SMALL)) == ReAct(percentile=97.5)
    assert ReAct.grid(SMALL) == {"percentile": [85.0, 90.0, 95.0, 99.0]}
    assert ReAct.searchable()
