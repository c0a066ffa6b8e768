"""KNN against a loop implementation: normalisation on both sides, the K-th distance (§5.1)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from optuna.trial import FixedTrial

from oodcache.cache import Split
from oodcache.search.base import CacheInfo, Stats
from oodcache.search.methods import knn
from oodcache.search.methods.knn import KNN
from oodcache.search.ops import prepare


def make_split(h: object, *, name: str = "s", role: str = "id_val") -> Split:
    h = np.asarray(h, np.float32)
    w, b = np.ones((2, h.shape[1]), np.float32), np.zeros(2, np.float32)
    labels = np.zeros(len(h), np.int64)
    return Split(name, role, name, labels, np.asarray(h @ w.T + b), h, w, b)


def knn_loop(bank: np.ndarray, queries: np.ndarray, k: int) -> list[float]:
    def unit(v: list[float]) -> list[float]:
        n = sum(x * x for x in v) ** 0.5
        return [x / n for x in v]

    zb = [unit(row) for row in bank.tolist()]
    out = []
    for q in queries.tolist():
        zq = unit(q)
        d2 = sorted(sum((a - b) ** 2 for a, b in zip(zq, z, strict=True)) for z in zb)
        out.append(-d2[k - 1])
    return out


def stats_for(bank: Split) -> Stats:
    return Stats(fit=bank, id_val=bank, train_split=bank)


@pytest.mark.parametrize("k", [1, 3, 7, 30])
def test_matches_loop(k: int) -> None:
    rng = np.random.default_rng(0)
    bank = make_split(rng.normal(size=(30, 5)), name="train", role="train")
    query = make_split(rng.normal(size=(9, 5)) * 3)
    got = KNN(k=k).fit(stats_for(bank)).score(query)
    np.testing.assert_allclose(got, knn_loop(bank.features, query.features, k), atol=1e-5)


def test_kth_not_mean_and_normalised_both_sides() -> None:
    rng = np.random.default_rng(1)
    bank = make_split(np.abs(rng.normal(size=(40, 6))), name="train", role="train")
    query = make_split(np.abs(rng.normal(size=(10, 6))))
    scorer = KNN(k=5).fit(stats_for(bank))
    got = scorer.score(query)
    # rescaling queries or bank rows changes nothing
    scale_q = rng.uniform(0.1, 10, size=(10, 1))
    scale_b = rng.uniform(0.1, 10, size=(40, 1))
    np.testing.assert_allclose(
        KNN(k=5).fit(stats_for(bank)).score(make_split(query.features * scale_q)), got, atol=1e-5
    )
    scaled_bank = make_split(bank.features * scale_b, name="train", role="train")
    np.testing.assert_allclose(KNN(k=5).fit(stats_for(scaled_bank)).score(query), got, atol=1e-5)
    # ...whereas the mean of the 5 nearest distances, or raw features, would differ
    zb = bank.features / np.linalg.norm(bank.features, axis=1, keepdims=True)
    zq = query.features / np.linalg.norm(query.features, axis=1, keepdims=True)
    d2 = np.sort(((zq[:, None, :] - zb[None, :, :]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(got, -d2[:, 4], atol=1e-5)
    assert not np.allclose(got, -d2[:, :5].mean(axis=1), atol=1e-3)
    raw = np.sort(((query.features[:, None] - bank.features[None]) ** 2).sum(-1), axis=1)
    assert not np.allclose(got, -raw[:, 4], atol=1e-3)


def test_chunks_give_the_same_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    bank = make_split(rng.normal(size=(50, 4)), name="train", role="train")
    query = make_split(rng.normal(size=(13, 4)))
    whole = KNN(k=4).fit(stats_for(bank)).score(query)
    monkeypatch.setattr(knn, "CHUNK_BYTES", 1)  # one query row per chunk
    chunked = KNN(k=4).fit(stats_for(bank)).score(query)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)  # float32 BLAS may round differently
    np.testing.assert_allclose(chunked, knn_loop(bank.features, query.features, 4), atol=1e-5)


def test_zero_query_is_finite() -> None:
    bank = make_split(np.eye(3) + 0.1, name="train", role="train")
    got = KNN(k=2).fit(stats_for(bank)).score(make_split(np.zeros((1, 3))))
    np.testing.assert_allclose(got, [-1.0], atol=1e-6)  # distance from 0 to a unit vector


def test_bank_is_the_train_split() -> None:
    rng = np.random.default_rng(3)
    fit = make_split(rng.normal(size=(20, 4)), name="fit", role="fit")
    train = make_split(rng.normal(size=(25, 4)) + 1, name="train", role="train")
    query = make_split(rng.normal(size=(5, 4)))
    got = KNN(k=3).fit(Stats(fit=fit, id_val=query, train_split=train)).score(query)
    np.testing.assert_allclose(got, knn_loop(train.features, query.features, 3), atol=1e-5)
    fallback = KNN(k=3).fit(Stats(fit=fit, id_val=query)).score(query)
    np.testing.assert_allclose(fallback, knn_loop(fit.features, query.features, 3), atol=1e-5)


def test_scoring_the_bank_finds_each_sample_itself() -> None:
    """Why ``oodcache score`` warns before scoring a train/fit split with KNN: self-matches."""
    bank = make_split(np.random.default_rng(4).normal(size=(10, 3)), name="train", role="train")
    got = KNN(k=1).fit(stats_for(bank)).score(bank)
    np.testing.assert_allclose(got, 0.0, atol=1e-5)  # K = 1 finds the sample itself


def test_k_larger_than_bank() -> None:
    bank = make_split(np.ones((4, 3)), name="train", role="train")
    with pytest.raises(ValueError, match="bank size 4"):
        KNN(k=5).fit(stats_for(bank))


def test_bank_kept_on_a_prepared_split_only() -> None:
    h = np.random.default_rng(5).normal(size=(8, 3)).astype(np.float32)
    plain = make_split(h, name="train", role="train")
    assert KNN(k=2).fit(stats_for(plain)).bank_ is not KNN(k=2).fit(stats_for(plain)).bank_
    kept = prepare(plain)
    first = KNN(k=2).fit(stats_for(kept)).bank_
    assert KNN(k=3).fit(stats_for(kept)).bank_ is first
    np.testing.assert_array_equal(first, KNN(k=2).fit(stats_for(plain)).bank_)


def test_official_and_space() -> None:
    small = CacheInfo("digits_resnet", "digits", 5, 128, ("avgpool",), 30)
    digits = CacheInfo("digits_resnet", "digits", 5, 128, ("avgpool",), 488)
    imagenet = CacheInfo("resnet50", "imagenet", 1000, 2048, ("avgpool",), 1000, (), 100_000)
    full = CacheInfo("resnet50", "imagenet_classic", 1000, 2048, ("avgpool",), 1000, (), 1_281_167)
    assert KNN.official(digits) == KNN() == KNN(k=50)
    assert KNN.official(small) == KNN(k=30)
    # knn-ood: k = 1000 on the full 1.28M bank, proportionally less on a sampled one
    assert KNN.official(full) == KNN(k=1000)
    assert KNN.official(imagenet) == KNN(k=78)  # round(1000 * 100,000 / 1,281,167)
    tiny = dataclasses.replace(imagenet, train_size=500)
    assert KNN.official(tiny) == KNN(k=1)  # round(0.39) = 0, at least 1
    for info in (small, digits, imagenet, full):
        official = KNN.official(info)
        trial = FixedTrial(KNN.to_trial(official.params()))
        assert KNN(**KNN.space(trial, info)) == official
    assert KNN.grid(imagenet) == {"k": [50, 100, 200, 500, 1000]}
    assert KNN.space(FixedTrial({"k": 2000}), imagenet) == {"k": 2000}  # bounded by the bank
    assert KNN.grid(digits) == {"k": [50, 100, 200]}
    assert KNN.grid(small) is None
    for k in (50, 100, 200):
        KNN.space(FixedTrial({"k": k}), digits)


def test_kept_nearest_table_equals_a_fresh_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prepared queries (against a prepared bank) read the k-th column of a kept sorted table;
    every k, also beyond the kept columns (a fresh search), gives the bits of a plain search."""
    rng = np.random.default_rng(9)
    b, h = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(15, 6)).astype(np.float32)
    bank = prepare(make_split(b, name="train", role="train"))
    kept, plain = prepare(make_split(h)), make_split(h)
    monkeypatch.setattr(knn, "NEAREST_KEPT", 10)
    for k in (1, 2, 7, 10, 11, 40):
        scorer = KNN(k=k).fit(stats_for(bank))
        np.testing.assert_array_equal(scorer.score(kept), scorer.score(plain))
        np.testing.assert_allclose(scorer.score(kept), knn_loop(bank.features, h, k), atol=1e-5)
    assert kept.tables is not None
    assert [t for t in kept.tables._values if "knn distances" in t] == [
        f"knn distances to the bank of prepared split #{bank.tables.serial}, 10 nearest"
    ]
    assert plain.tables is None
