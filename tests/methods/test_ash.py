"""ASH against a loop implementation, the kept-unit counts and the Energy identity (§3.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optuna.trial import FixedTrial

from oodcache.cache import Split
from oodcache.search.base import CacheInfo, Stats
from oodcache.search.methods.ash import ASH
from oodcache.search.methods.energy import Energy
from oodcache.search.ops import ash_kept, ash_mask, ash_shape, descending_places, prepare


def make_split(h: object, w: object, b: object, *, name: str = "s", role: str = "id_val") -> Split:
    h, w, b = (np.asarray(x, np.float32) for x in (h, w, b))
    logits = np.asarray(h @ w.T + b, np.float32)
    labels = np.zeros(len(h), np.int64)
    return Split(name, role, name, labels, logits, h, w, b)


def lse(v: list[float]) -> float:
    m = max(v)
    return m + math.log(sum(math.exp(x - m) for x in v))


def ash_loop(h: np.ndarray, w: np.ndarray, b: np.ndarray, p: float, variant: str) -> list[float]:
    d = h.shape[1]
    k = d - int(np.round(d * p / 100.0))
    out = []
    for x in h.tolist():
        order = sorted(range(d), key=lambda j: -x[j])[:k]
        s1 = sum(x)
        s2 = sum(x[j] for j in order)
        a = [0.0] * d
        for j in order:
            a[j] = {"P": x[j], "B": s1 / k, "S": x[j] * math.exp(s1 / s2)}[variant]
        out.append(
            lse(
                [sum(float(w[c, j]) * a[j] for j in range(d)) + float(b[c]) for c in range(len(b))]
            )
        )
    return out


@pytest.mark.parametrize(
    ("d", "p", "k"),
    [
        (2048, 90, 205),
        (2048, 65, 717),
        (512, 95, 26),
        (10, 25, 8),
        (10, 35, 6),
        (128, 100, 1),
        (128, 0, 128),
    ],
)
def test_kept_units(d: int, p: float, k: int) -> None:
    # round half to even: 10·25% = 2.5 -> 2 (k = 8), 10·35% = 3.5 -> 4 (k = 6); never fewer than 1
    assert ash_kept(d, p) == k
    h = np.random.default_rng(d).uniform(0.01, 1.0, size=(3, d))
    assert (np.count_nonzero(ash_shape(h, p, "P"), axis=1) == k).all()


@pytest.mark.parametrize("variant", ["P", "B", "S"])
@pytest.mark.parametrize("p", [50.0, 65.0, 90.0])
def test_matches_loop(variant: str, p: float) -> None:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 20)) * 0.3, rng.normal(size=4)
    split = make_split(rng.uniform(0, 1, size=(7, 20)), w, b)
    got = ASH(percentile=p, variant=variant).score(split)  # type: ignore[arg-type]
    want = ash_loop(split.features, split.weight, split.bias, p, variant)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_variants_differ() -> None:
    rng = np.random.default_rng(1)
    split = make_split(rng.uniform(0, 1, (5, 16)), rng.normal(size=(3, 16)), rng.normal(size=3))
    p_, b_, s_ = (ASH(percentile=75.0, variant=v).score(split) for v in ("P", "B", "S"))
    assert not np.allclose(p_, b_) and not np.allclose(p_, s_) and not np.allclose(b_, s_)


def test_ash_p_at_zero_is_energy() -> None:
    rng = np.random.default_rng(2)
    split = make_split(rng.uniform(0, 3, (11, 9)), rng.normal(size=(5, 9)), rng.normal(size=5))
    scorer = ASH(percentile=0.0, variant="P").fit(Stats(fit=split, id_val=split))
    assert np.array_equal(scorer.score(split), Energy().score(split))
    assert not np.allclose(ASH(percentile=50.0, variant="P").score(split), Energy().score(split))


def test_zero_row_is_finite() -> None:
    b = np.array([0.5, -1.0, 2.0])
    split = make_split(np.zeros((2, 6)), np.ones((3, 6)), b)
    for variant in ("P", "B", "S"):
        got = ASH(percentile=90.0, variant=variant).score(split)
        np.testing.assert_allclose(got, [lse(b.tolist())] * 2, rtol=1e-6)


def test_ties_go_to_the_lower_index() -> None:
    h = np.array([[1.0, 3.0, 1.0, 1.0, 0.5, 1.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    # D = 6, p = 50: k = 3; row 0 keeps 3.0 and the first two 1.0s, row 1 its first three units
    kept = ash_shape(h, 50.0, "P")
    assert np.array_equal(kept, [[1.0, 3.0, 1.0, 0, 0, 0], [2.0, 2.0, 2.0, 0, 0, 0]])
    np.testing.assert_allclose(
        ash_shape(h, 50.0, "B"), [[7.5 / 3] * 3 + [0] * 3, [4.0] * 3 + [0] * 3]
    )


def test_places_give_the_partition_mask_and_prepared_scores_are_equal() -> None:
    """The prepared path (ranked once: ``descending_places``) keeps the units the partition keeps,
    ties included, and scores bit for bit as the unprepared one."""
    rng = np.random.default_rng(5)
    h = np.round(rng.exponential(size=(40, 30)), 1).astype(np.float32)  # many ties
    places = descending_places(h)
    for k in (1, 7, 15, 29, 30):
        assert np.array_equal(places < k, ash_mask(h, k))
    split = make_split(h, rng.normal(size=(6, 30)), rng.normal(size=6))
    for variant in ("P", "B", "S"):
        for p in (50.0, 80.0, 97.0):
            scorer = ASH(percentile=p, variant=variant)  # type: ignore[arg-type]
            assert np.array_equal(scorer.score(prepare(split)), scorer.score(split))


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="variant"):
        ash_shape(np.ones((1, 4)), 50.0, "Q")


def test_official_and_space() -> None:
    digits = CacheInfo("digits_resnet", "digits", 5, 128, ("avgpool",), 488)
    imagenet = CacheInfo("resnet50", "imagenet", 1000, 2048, ("avgpool",), 1000)
    cifar = CacheInfo("densenet100", "cifar10", 10, 342, ("avgpool",), 1000)
    assert ASH.official(digits) == ASH() == ASH(percentile=90.0, variant="B")
    assert ASH.official(imagenet) == ASH(percentile=90.0, variant="S")
    assert ASH.official(cifar) == ASH(percentile=95.0, variant="S")
    for info in (digits, imagenet, cifar):
        official = ASH.official(info)
        trial = FixedTrial(ASH.to_trial(official.params()))
        assert ASH(**ASH.space(trial, info)) == official
    grid = ASH.grid(digits)
    assert grid == {"percentile": [65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0], "variant": ["B"]}
    for p in grid["percentile"]:  # inside the space (FixedTrial warns, an error here, if not)
        ASH.space(FixedTrial({"percentile": p, "variant": "B"}), digits)
