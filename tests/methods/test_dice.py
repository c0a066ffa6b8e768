"""DICE against a loop implementation and hand-computed masks (docs/methods.md §3.4)."""

from __future__ import annotations

import numpy as np
import pytest
from method_refs import lse, make_split, perc
from optuna.trial import FixedTrial

from oodcache.search.base import CacheInfo, Stats
from oodcache.search.methods.dice import DICE
from oodcache.search.methods.energy import Energy
from oodcache.search.ops import energy


def dice_loop(
    h_train: np.ndarray, w: np.ndarray, b: np.ndarray, h: np.ndarray, p: float
) -> list[float]:
    k_classes, d = w.shape
    mu = [sum(float(row[j]) for row in h_train) / len(h_train) for j in range(d)]
    v = [[mu[j] * float(w[k, j]) for j in range(d)] for k in range(k_classes)]
    t = perc([x for row in v for x in row], p)
    return [
        lse(
            [
                sum(float(w[k, j] * x[j]) for j in range(d) if v[k][j] > t) + float(b[k])
                for k in range(k_classes)
            ]
        )
        for x in h
    ]


INFO = CacheInfo("digits_resnet", "digits", 3, 6, ("avgpool",), 40)


@pytest.mark.parametrize("p", [0.0, 30.0, 70.0, 90.0])
def test_matches_loop(p: float) -> None:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 6)), rng.normal(size=3)
    train = make_split(np.abs(rng.normal(size=(40, 6))), w, b, name="train", role="train")
    query = make_split(np.abs(rng.normal(size=(9, 6))) * 2, w, b)
    got = DICE(p=p).fit(Stats(fit=train, id_val=query)).score(query)
    want = dice_loop(train.features, train.weight, train.bias, query.features, p)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mask_is_one_signed_percentile_over_all_entries() -> None:
    # μ = 1, so V = W. Sorted V: -5 -4 0.5 1 2 3; the 50th percentile is 0.75: keep 3, 1 and 2.
    # Ranking |V| would keep 3, -5, -4; a per-row median would keep only 3 and 2.
    w = np.array([[3.0, -5.0, 1.0], [0.5, 2.0, -4.0]])
    b = np.array([0.1, -0.2])
    train = make_split(np.ones((4, 3)), w, b, role="train")
    scorer = DICE(p=50.0).fit(Stats(fit=train, id_val=train))
    assert set(zip(*np.nonzero(scorer.weight_), strict=True)) == {(0, 0), (0, 2), (1, 1)}
    query = make_split([[1.0, 2.0, 3.0]], w, b)
    np.testing.assert_allclose(scorer.score(query), [lse([3 + 3 + 0.1, 4 - 0.2])], rtol=1e-6)


def test_mask_is_strict() -> None:
    # Sorted V: 1 2 2 2 2 3 4 5, 50th percentile = 2; ">" keeps 3, 4, 5 only (">=" would keep 7).
    w = np.array([[1.0, 2.0, 2.0, 2.0], [2.0, 3.0, 4.0, 5.0]])
    train = make_split(np.ones((2, 4)), w, np.zeros(2), role="train")
    scorer = DICE(p=50.0).fit(Stats(fit=train, id_val=train))
    assert np.count_nonzero(scorer.weight_) == 3


def test_all_ones_mask_is_energy() -> None:
    # p = 0 prunes the entries equal to min(V) (strict >). Here the unique minimum V = 0 sits on a
    # zero weight (all μ_j > 0, all other W > 0), so the mask changes nothing: DICE equals Energy.
    rng = np.random.default_rng(1)
    w = rng.uniform(0.1, 1.0, size=(4, 5))
    w[2, 3] = 0.0
    b = rng.normal(size=4)
    train = make_split(rng.uniform(0.5, 2.0, size=(30, 5)), w, b, role="train")
    scorer = DICE(p=0.0).fit(Stats(fit=train, id_val=train))
    assert np.count_nonzero(scorer.weight_) == w.size - 1
    for split in (train, make_split(rng.uniform(0, 5, size=(7, 5)), w, b, name="other")):
        assert np.array_equal(scorer.score(split), Energy().score(split))


def test_p0_drops_the_minimum_entry() -> None:
    # With a non-zero weight at min(V), p = 0 is *not* Energy: exactly that entry is removed.
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(4, 5)), rng.normal(size=4)
    train = make_split(rng.uniform(0.5, 2.0, size=(30, 5)), w, b, role="train")
    query = make_split(rng.uniform(0, 3, size=(8, 5)), w, b)
    got = DICE(p=0.0).fit(Stats(fit=train, id_val=train)).score(query)
    v = train.features.mean(axis=0, dtype=np.float64) * train.weight
    pruned = train.weight.copy()
    pruned[np.unravel_index(np.argmin(v), v.shape)] = 0.0
    np.testing.assert_allclose(got, energy(query.features @ pruned.T + b), rtol=1e-6)
    assert not np.allclose(got, Energy().score(query), rtol=1e-4)


def test_statistics_come_from_train() -> None:
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(3, 6)), rng.normal(size=3)
    fit = make_split(rng.uniform(0, 1, (20, 6)), w, b, name="fit", role="fit")
    val = make_split(rng.uniform(0, 1, (20, 6)) ** 3, w, b, name="val")
    train = make_split(rng.uniform(0, 1, (25, 6)) ** 0.2, w, b, name="train", role="train")
    query = make_split(rng.uniform(0, 2, (6, 6)), w, b, name="q")
    with_train = DICE(p=60.0).fit(Stats(fit=fit, id_val=val, train_split=train)).score(query)
    without = DICE(p=60.0).fit(Stats(fit=fit, id_val=val)).score(query)
    np.testing.assert_allclose(
        with_train, dice_loop(train.features, w, b, query.features, 60), rtol=1e-5
    )
    np.testing.assert_allclose(
        without, dice_loop(fit.features, w, b, query.features, 60), rtol=1e-5
    )
    assert not np.allclose(with_train, without, rtol=1e-4)


def test_official_and_space() -> None:
    imagenet = CacheInfo("resnet50", "imagenet", 1000, 2048, ("avgpool",), 1000)
    assert DICE.official(imagenet).p == 70.0
    assert DICE.official(INFO) == DICE() and DICE().p == 90.0
    for info in (INFO, imagenet):
        official = DICE.official(info)
        trial = FixedTrial(DICE.to_trial(official.params()))
        assert DICE(**DICE.space(trial, info)) == official
    assert DICE.grid(INFO) == {"p": [90.0]}
    assert DICE(**DICE.space(FixedTrial({"p": 90.0}), INFO)) == DICE()
