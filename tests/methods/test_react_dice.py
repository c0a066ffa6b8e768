"""ReAct + DICE against a loop composition: clip at an ID-val percentile, DICE-mask, energy."""

from __future__ import annotations

import numpy as np
from method_refs import lse, make_split, perc
from optuna.trial import FixedTrial

from oodcache.cache import Split
from oodcache.search.base import CacheInfo, Stats
from oodcache.search.methods.dice import DICE
from oodcache.search.methods.react_dice import ReActDICE


def loop(
    train: Split,
    val: Split,
    query: Split,
    percentile: float,
    p: float,
    threshold: float | None = None,
    clip_mean: bool = False,
) -> list[float]:
    w, b = train.weight.tolist(), train.bias.tolist()
    c = threshold if threshold is not None else perc(val.features.ravel().tolist(), percentile)
    rows = [[min(x, c) if clip_mean else x for x in row] for row in train.features.tolist()]
    mu = [sum(r[j] for r in rows) / len(rows) for j in range(len(w[0]))]
    v = [[mu[j] * w[k][j] for j in range(len(mu))] for k in range(len(w))]
    t = perc([x for row in v for x in row], p)
    out = []
    for h in query.features.tolist():
        hc = [min(x, c) for x in h]
        out.append(
            lse(
                [
                    sum(w[k][j] * hc[j] for j in range(len(hc)) if v[k][j] > t) + b[k]
                    for k in range(len(w))
                ]
            )
        )
    return out


def data(seed: int = 0) -> tuple[Split, Split, Split]:
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(3, 8)), rng.normal(size=3)
    scales = np.geomspace(0.2, 5, 8)  # units on different scales, so clipping moves μ's ranking
    train = make_split(rng.exponential(size=(40, 8)) * scales, w, b, name="train", role="train")
    val = make_split(rng.exponential(size=(30, 8)), w, b, name="val")
    query = make_split(rng.exponential(size=(10, 8)) * 2, w, b, name="q", role="near")
    return train, val, query


def test_matches_loop() -> None:
    train, val, query = data()
    stats = Stats(fit=val, id_val=val, train_split=train)
    for percentile, p in ((90.0, 90.0), (60.0, 30.0), (99.0, 0.0)):
        got = ReActDICE(percentile=percentile, p=p).fit(stats).score(query)
        np.testing.assert_allclose(got, loop(train, val, query, percentile, p), rtol=1e-5)


def test_mean_is_of_unclipped_train_features() -> None:
    train, val, query = data(2)
    stats = Stats(fit=val, id_val=val, train_split=train)
    got = ReActDICE(percentile=50.0, p=70.0).fit(stats).score(query)
    np.testing.assert_allclose(got, loop(train, val, query, 50, 70), rtol=1e-5)
    assert not np.allclose(got, loop(train, val, query, 50, 70, clip_mean=True), rtol=1e-4)


def test_threshold_overrides_percentile() -> None:
    train, val, query = data(1)
    stats = Stats(fit=val, id_val=val, train_split=train)
    got = ReActDICE(percentile=10.0, p=50.0, threshold=0.7).fit(stats).score(query)
    np.testing.assert_allclose(got, loop(train, val, query, 10, 50, threshold=0.7), rtol=1e-5)


def test_percentile_100_is_dice_on_id_val_only() -> None:
    train, val, query = data(2)
    stats = Stats(fit=val, id_val=val, train_split=train)
    both = ReActDICE(percentile=100.0, p=60.0).fit(stats)
    dice = DICE(p=60.0).fit(stats)
    assert np.array_equal(both.score(val), dice.score(val))
    assert not np.allclose(both.score(query), dice.score(query), rtol=1e-4)


def test_official_and_space() -> None:
    digits = CacheInfo("digits_resnet", "digits", 5, 128, ("avgpool",), 488)
    imagenet = CacheInfo("resnet50", "imagenet", 1000, 2048, ("avgpool",), 1000)
    assert ReActDICE.official(imagenet) == ReActDICE(p=10.0, threshold=1.0)
    official = ReActDICE.official(digits)
    assert official == ReActDICE() == ReActDICE(percentile=90.0, p=90.0, threshold=None)
    trial = FixedTrial(ReActDICE.to_trial(official.params()))
    assert ReActDICE(**ReActDICE.space(trial, digits)) == official
