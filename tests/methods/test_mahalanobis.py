"""Mahalanobis (OpenOOD "mds") against loops: class means, one shared covariance (§5.3)."""

from __future__ import annotations

import numpy as np
import pytest

from oodcache.cache import Split
from oodcache.search.base import CacheInfo, Stats
from oodcache.search.methods.mahalanobis import Mahalanobis


def make_split(
    h: object, labels: object, *, k: int = 3, name: str = "s", role: str = "id_val"
) -> Split:
    h = np.asarray(h, np.float32)
    w, b = np.ones((k, h.shape[1]), np.float32), np.zeros(k, np.float32)
    y = np.asarray(labels, np.int64)
    return Split(name, role, name, y, np.asarray(h @ w.T + b), h, w, b)


def mds_loop(train: Split, query: Split, *, shared: bool = True) -> np.ndarray:
    h, y = train.features.astype(np.float64), train.labels
    classes = sorted(set(y.tolist()))
    means = {c: sum(h[i] for i in range(len(h)) if y[i] == c) / (y == c).sum() for c in classes}
    if shared:
        cov = sum(np.outer(h[i] - means[y[i]], h[i] - means[y[i]]) for i in range(len(h))) / len(h)
        precisions = {c: np.linalg.inv(cov) for c in classes}
    else:  # per-class covariance: a different method, used to show the test can tell
        precisions = {c: np.linalg.inv(np.cov(h[y == c].T, bias=True)) for c in classes}
    out = []
    for x in query.features.astype(np.float64):
        out.append(max(-(x - means[c]) @ precisions[c] @ (x - means[c]) for c in classes))
    return np.array(out)


def data(seed: int = 0) -> tuple[Split, Split]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], 40)
    centres = rng.normal(size=(3, 5)) * 3
    spread = np.array([[1, 1, 1, 1, 1], [3, 0.3, 1, 2, 1], [0.2, 2, 0.5, 1, 4]])[y]
    train = make_split(
        centres[y] + rng.normal(size=(120, 5)) * spread, y, name="train", role="train"
    )
    query = make_split(rng.normal(size=(15, 5)) * 3, np.zeros(15))
    return train, query


def test_matches_loop_with_shared_covariance() -> None:
    train, query = data()
    got = Mahalanobis().fit(Stats(fit=train, id_val=query)).score(query)
    np.testing.assert_allclose(got, mds_loop(train, query), rtol=1e-5)
    assert not np.allclose(got, mds_loop(train, query, shared=False), rtol=1e-2)


def test_statistics_from_train() -> None:
    train, query = data(1)
    fit, _ = data(2)
    got = Mahalanobis().fit(Stats(fit=fit, id_val=query, train_split=train)).score(query)
    np.testing.assert_allclose(got, mds_loop(train, query), rtol=1e-5)


def test_singular_covariance_uses_the_pseudo_inverse() -> None:
    train, query = data(3)
    h = train.features.copy()
    h[:, 2] = 0.0  # a dead unit: zero variance
    dead = make_split(h, train.labels, name="train", role="train")
    got = Mahalanobis().fit(Stats(fit=dead, id_val=query)).score(query)
    assert np.isfinite(got).all()
    # the dead unit is ignored: same as the 4 live units alone
    live = make_split(np.delete(h, 2, axis=1), train.labels, name="train", role="train")
    q_live = make_split(np.delete(query.features, 2, axis=1), query.labels)
    np.testing.assert_allclose(got, mds_loop(live, q_live), rtol=1e-5)


def test_bad_labels() -> None:
    h = np.random.default_rng(4).normal(size=(6, 2))
    with pytest.raises(ValueError, match="labels"):
        Mahalanobis().fit(
            Stats(fit=make_split(h, [0, 1, 2, 0, 1, -1]), id_val=make_split(h, [0] * 6))
        )
    with pytest.raises(ValueError, match="without ID-train samples"):
        Mahalanobis().fit(
            Stats(fit=make_split(h, [0, 1, 0, 1, 0, 1]), id_val=make_split(h, [0] * 6))
        )


def test_no_search() -> None:
    info = CacheInfo("digits_resnet", "digits", 5, 128, ("avgpool",), 488)
    assert not Mahalanobis.searchable() and Mahalanobis.official(info).params() == {}
